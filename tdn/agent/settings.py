"""How an agent runs: where its engine and control planes are, how often and how patiently.

Frozen and validated once at start, so a running agent never meets a setting it cannot use.
The factory's own description (:class:`tdn.domain.FactorySpec`) is separate: it is what the
agent reports, these are how it reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tdn.tls import ClientTls


class SettingsError(ValueError):
    """Settings an agent cannot run with."""


@dataclass(frozen=True, slots=True)
class MtlsFiles:
    """PEM files for mutual TLS to the control plane: the CA that signed its certificate, and
    this agent's own certificate chain and key (see :mod:`tdn.tls`)."""

    ca_cert: Path
    cert_chain: Path
    private_key: Path

    def client_tls(self) -> ClientTls:
        return ClientTls(ca=self.ca_cert, cert=self.cert_chain, key=self.private_key)


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Everything about *how* an agent attaches its engine, as opposed to *what* it reports."""

    # The engine's base URL, e.g. "http://127.0.0.1:8101" (a trailing "/v1" is tolerated).
    engine_url: str
    # Control-plane gRPC addresses ("host:port"); the agent rotates through them on failure.
    controlplanes: tuple[str, ...]
    # Seconds between reports until a control plane's ack says otherwise.
    interval_s: float = 1.0
    # Per-request deadline for /metrics and /v1/models: short, because a slow engine is news.
    scrape_timeout_s: float = 2.0
    # Reconnect backoff: first delay and cap; each failure doubles it, jittered (see Backoff).
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    # The fastest report interval an ack may ask for, so a confused control plane cannot make
    # the agent hammer its engine.
    min_interval_s: float = 0.02
    # An open stream with no ack for this long (or three report intervals, if longer) is
    # treated as dead: the control plane may be wedged while its TCP connection lives on.
    ack_timeout_s: float = 5.0
    # gRPC keepalive: detects a control plane that vanished without closing the connection.
    # Reports flow far more often than this, so the server never sees data-less pings.
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    # Mutual TLS to the control plane; None is plain text. See MtlsFiles.
    tls: MtlsFiles | None = None

    @property
    def engine_base(self) -> str:
        """The engine's base URL without a trailing slash or ``/v1``."""
        return engine_base(self.engine_url)

    def validate(self) -> None:
        """Raise :class:`SettingsError` naming the first setting that cannot work."""
        engine_base(self.engine_url)
        if not self.controlplanes:
            raise SettingsError("no control-plane address given")
        for address in self.controlplanes:
            if not address or address != address.strip() or ":" not in address:
                raise SettingsError(f"control-plane address {address!r} is not host:port")
        for name in ("interval_s", "scrape_timeout_s", "backoff_initial_s", "backoff_max_s",
                     "min_interval_s", "ack_timeout_s", "keepalive_time_s",
                     "keepalive_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise SettingsError(f"{name} must be a positive number, not {value!r}")
        if self.backoff_max_s < self.backoff_initial_s:
            raise SettingsError("backoff_max_s is below backoff_initial_s")
        if self.tls is not None:
            for name in ("ca_cert", "cert_chain", "private_key"):
                path = getattr(self.tls, name)
                if not Path(path).is_file():
                    raise SettingsError(f"TLS {name.replace('_', ' ')} {path} is not a file")


def engine_base(url: str) -> str:
    """Normalise an engine URL given with or without ``/v1``; raise SettingsError if unusable."""
    parts = urlsplit(url.strip())
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise SettingsError(f"engine URL {url!r} is not an http(s) URL with a host")
    if parts.query or parts.fragment:
        raise SettingsError(f"engine URL {url!r} must not carry a query or fragment")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return f"{parts.scheme}://{parts.netloc}{path}"


def split_addresses(text: str) -> tuple[str, ...]:
    """``"a:1, b:2"`` -> ``("a:1", "b:2")``; empty items are dropped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())
