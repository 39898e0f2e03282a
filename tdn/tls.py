"""Mutual TLS for TDN's gRPC links: PEM files in, gRPC credentials out, errors that name the file.

Every gRPC link (agent → control plane, sidecar → control plane, operator CLI → control plane)
can run over mutual TLS. The control plane presents ``--tls-cert``/``--tls-key`` and, given
``--tls-client-ca``, refuses any client whose certificate that CA did not sign; clients verify the
server against ``--tls-ca`` and present their own ``--tls-cert``/``--tls-key``. Plain text stays
the default so that ``tdn up`` needs no certificates.

Only file names are ever put in messages and logs: key material is read here and handed to gRPC,
never printed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsError(ValueError):
    """TLS settings that cannot work; the message names the flag or file and why."""


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise TlsError(f"{what} {path} is not PEM (no -----BEGIN line)")
    return data


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The control plane's certificate and key, and the CA its clients' certificates must chain
    to (None: clients are not asked for a certificate, which is server-only TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        pair = (_read(self.key, "TLS key"), _read(self.cert, "TLS certificate"))
        if self.client_ca is None:
            return grpc.ssl_server_credentials([pair])
        return grpc.ssl_server_credentials(
            [pair], root_certificates=_read(self.client_ca, "TLS client CA"),
            require_client_auth=True)


@dataclass(frozen=True, slots=True)
class ClientTls:
    """What a client needs to talk to a control plane over (mutual) TLS: the CA that signed the
    server's certificate, and this client's own certificate and key (both or neither)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def validate(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise TlsError("--tls-cert and --tls-key go together")

    def credentials(self) -> grpc.ChannelCredentials:
        self.validate()
        root = _read(self.ca, "TLS CA") if self.ca is not None else None
        key = _read(self.key, "TLS key") if self.key is not None else None
        chain = _read(self.cert, "TLS certificate") if self.cert is not None else None
        return grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                            certificate_chain=chain)


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    """``--tls-ca``, ``--tls-cert`` and ``--tls-key``, as every client command spells them."""
    group = parser.add_argument_group("TLS to the control plane (default: plain text)")
    group.add_argument("--tls-ca", metavar="PEM",
                       help="CA certificate that signed the control plane's certificate; "
                            "turns TLS on")
    group.add_argument("--tls-cert", metavar="PEM",
                       help="this client's certificate, for mutual TLS (with --tls-key)")
    group.add_argument("--tls-key", metavar="PEM", help="this client's private key")


def client_tls_from_args(args: argparse.Namespace) -> ClientTls | None:
    """The :class:`ClientTls` the flags of :func:`add_client_flags` describe; None: plain text."""
    ca, cert, key = (getattr(args, name, None) for name in ("tls_ca", "tls_cert", "tls_key"))
    if not (ca or cert or key):
        return None
    tls = ClientTls(ca=Path(ca) if ca else None, cert=Path(cert) if cert else None,
                    key=Path(key) if key else None)
    tls.validate()
    return tls


def secure_or_insecure_channel(
        address: str, credentials: grpc.ChannelCredentials | None,
        options: list[tuple[str, int | str]] | tuple[tuple[str, int], ...] = ()) -> grpc.Channel:
    """A blocking channel: TLS when ``credentials`` is given, else plain text."""
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options=list(options))
    return grpc.insecure_channel(address, options=list(options))
