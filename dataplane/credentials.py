"""Upstream keys, resolved locally by the name a policy gives them (``credential_ref``).

The control plane never ships a key: a policy says "use credential ``eu-pool``" and the sidecar
looks it up in its own file (``--credentials``) or environment (``TDN_CREDENTIAL_EU_POOL``). Keys
are held in an object whose ``repr`` hides them, so a stray log line or traceback cannot print one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

ENV_PREFIX = "TDN_CREDENTIAL_"


class CredentialsError(ValueError):
    """A credentials file TDN refuses (the message never contains a key)."""


def env_name(ref: str) -> str:
    """The environment variable that holds ``ref``'s key: upper case, other characters as ``_``."""
    return ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", ref.upper())


class Credentials:
    """Keys by credential_ref; the file's entries win over the environment's."""

    def __init__(self, keys: Mapping[str, str] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self._keys = dict(keys or {})
        self._environ = os.environ if environ is None else environ

    def __repr__(self) -> str:
        return f"Credentials(refs={sorted(self._keys)!r})"

    @classmethod
    def from_file(cls, path: str | Path, environ: Mapping[str, str] | None = None) -> Credentials:
        """Load a YAML mapping ``credential_ref: key``; raise :class:`CredentialsError`."""
        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text())
        except OSError as exc:
            raise CredentialsError(f"{p}: cannot read credentials file: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            # yaml's message quotes the offending text, which may be a key: say only where.
            raise CredentialsError(f"{p}{where}: credentials file is not valid YAML") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise CredentialsError(f"{p}: expected a mapping of credential_ref to key")
        keys: dict[str, str] = {}
        for ref, key in raw.items():
            if not isinstance(ref, str) or not ref:
                raise CredentialsError(f"{p}: credential names must be non-empty strings")
            if not isinstance(key, str) or not key:
                raise CredentialsError(f"{p}: credential {ref!r} must be a non-empty string")
            keys[ref] = key
        return cls(keys, environ)

    def key_for(self, ref: str) -> str | None:
        if ref in self._keys:
            return self._keys[ref]
        value = self._environ.get(env_name(ref))
        return value or None

    def authorization(self, ref: str) -> str | None:
        """The upstream ``Authorization`` value for ``ref``, or None when none is configured."""
        key = self.key_for(ref)
        return f"Bearer {key}" if key is not None else None
