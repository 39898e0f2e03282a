"""Who a request is metered to: tenants by API key, from an operator's file (``--tenants``).

The file is a YAML mapping of API key to tenant name. A key may be written as itself or, so that
the file need not hold secrets, as ``sha256:<hex digest of the key>``. Only digests are kept in
memory; a request's key (``Authorization: Bearer <key>`` or ``api-key: <key>``) is hashed and
looked up. A request without a key, or with one the file does not list, is metered to
``anonymous``. A key never reaches a log line, a metric label or an error message: tenants are
named by their names, and file errors by entry number.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

ANONYMOUS = "anonymous"
_NAME_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
_DIGEST_OK = re.compile(r"^[0-9a-f]{64}$")


class TenantsError(ValueError):
    """A tenants file TDN refuses (the message never contains a key)."""


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Tenants:
    """Tenant names by key digest."""

    def __init__(self, by_digest: Mapping[str, str] | None = None) -> None:
        self._by_digest = dict(by_digest or {})

    def __repr__(self) -> str:
        return f"Tenants({len(self._by_digest)} keys, {len(self.names)} tenants)"

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._by_digest.values())

    @classmethod
    def from_file(cls, path: str | Path) -> Tenants:
        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text())
        except OSError as exc:
            raise TenantsError(f"{p}: cannot read tenants file: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            # yaml's message quotes the offending text, which may be a key: say only where.
            raise TenantsError(f"{p}{where}: tenants file is not valid YAML") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise TenantsError(f"{p}: expected a mapping of API key to tenant name")
        by_digest: dict[str, str] = {}
        for number, (key, name) in enumerate(raw.items(), start=1):
            if not isinstance(key, str) or not key:
                raise TenantsError(f"{p}: entry {number}: the key must be a non-empty string")
            if not isinstance(name, str) or not _NAME_OK.match(name):
                raise TenantsError(f"{p}: entry {number}: the tenant name must be 1-64 letters, "
                                   f"digits or ._:- characters")
            if key.startswith("sha256:"):
                digest = key.removeprefix("sha256:").lower()
                if not _DIGEST_OK.match(digest):
                    raise TenantsError(f"{p}: entry {number}: sha256: must be followed by 64 "
                                       f"hex digits")
            else:
                digest = key_digest(key)
            by_digest[digest] = name
        return cls(by_digest)

    def resolve(self, headers: Mapping[str, str]) -> str:
        """The tenant of a request with these headers."""
        if not self._by_digest:
            return ANONYMOUS
        return self.tenant_of(headers.get("Authorization"), headers.get("api-key"))

    def tenant_of(self, authorization: str | None, api_key: str | None) -> str:
        """The tenant of a request that sent these ``Authorization`` and ``api-key`` values."""
        if not self._by_digest:
            return ANONYMOUS
        key = authorization or ""
        key = key[7:].strip() if key[:7].lower() == "bearer " else (api_key or "").strip()
        if not key:
            return ANONYMOUS
        return self._by_digest.get(key_digest(key), ANONYMOUS)
