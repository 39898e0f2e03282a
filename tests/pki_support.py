"""Test certificate authorities, generated at test time (nothing secret is committed).

:func:`make_pki` writes a CA, a server certificate for 127.0.0.1/localhost and a client
certificate signed by that CA, plus a second, unrelated CA and a client certificate it signed (a
stranger's). It uses the ``cryptography`` package when it is importable and the ``openssl``
command otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from support import missing


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    # Signed by another CA: a control plane trusting ``ca`` must refuse it.
    stranger_cert: Path
    stranger_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def _with_openssl(folder: Path) -> Pki:
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", f"/CN=tdn test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    leaves = (("server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
               "extendedKeyUsage=serverAuth\n"),
              ("client", "ca", "extendedKeyUsage=clientAuth\n"),
              ("stranger", "other-ca", "extendedKeyUsage=clientAuth\n"))
    for name, ca, extensions in leaves:
        (folder / f"{name}.ext").write_text("basicConstraints=CA:FALSE\n" + extensions)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=tdn test {name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
                 f"{ca}.key", "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                 "-out", f"{name}.pem", cwd=folder)
    return _pki(folder)


def _with_cryptography(folder: Path) -> Pki:  # pragma: no cover - used where installed
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def write(name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        (folder / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(name: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
              extensions: list[x509.ExtensionType]) -> tuple[x509.Name, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"tdn test {name}")])
        issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=2)))
        for ext in extensions:
            builder = builder.add_extension(ext, critical=isinstance(ext, x509.BasicConstraints))
        write(name, key, builder.sign(issuer_key, hashes.SHA256()))
        return subject, key

    ca = issue("ca", None, [x509.BasicConstraints(ca=True, path_length=None)])
    other = issue("other-ca", None, [x509.BasicConstraints(ca=True, path_length=None)])
    leaf = [x509.BasicConstraints(ca=False, path_length=None)]
    issue("server", ca, [*leaf, x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])])
    client_usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    issue("client", ca, [*leaf, client_usage])
    issue("stranger", other, [*leaf, client_usage])
    return _pki(folder)


def _pki(folder: Path) -> Pki:
    return Pki(ca=folder / "ca.pem", server_cert=folder / "server.pem",
               server_key=folder / "server.key", client_cert=folder / "client.pem",
               client_key=folder / "client.key", stranger_cert=folder / "stranger.pem",
               stranger_key=folder / "stranger.key")


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        if shutil.which("openssl") is None:
            message = "neither the cryptography package nor the openssl command is available"
            missing(message)
        return _with_openssl(folder)
    return _with_cryptography(folder)
