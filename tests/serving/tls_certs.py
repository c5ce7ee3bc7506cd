"""Certificates and servers for the TLS tests. Certificates are made with cryptography: a CA, server and client
certificates it signs, an expired server certificate, and a second CA nobody trusts. `SecretDir` lays files out
as the kubelet mounts a Secret (`..data` symlinking to a timestamped folder) and rotates them the way it does;
`TlsServer` serves from one."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.serving.serving_helpers import HOST, ServerProcess, free_port

DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes
    serial: int

    def write(self, folder: Path, stem: str) -> tuple[Path, Path]:
        cert, key = folder / f"{stem}.crt", folder / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        return cert, key


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Authority:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, name: str) -> None:
        self.key = _key()
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, server: bool, expired: bool = False) -> Issued:
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = (now - 10 * DAY, now - DAY) if expired else (now - DAY, now + 30 * DAY)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), cert.serial_number)


@dataclass(frozen=True)
class Pki:
    """Everything the TLS tests trust or refuse, written under `folder`."""

    folder: Path
    ca: Authority
    server: Issued
    client: Issued
    expired_server: Issued
    stranger_ca: Authority  # signs the "wrong CA" client certificate; no server trusts it
    stranger_client: Issued

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def stranger_ca_file(self) -> Path:
        return self.folder / "stranger-ca.pem"

    def client_files(self, stranger: bool = False) -> tuple[Path, Path]:
        """(certificate, key) of the trusted client, or of the one the stranger CA signed."""
        return (self.folder / "stranger-client.crt", self.folder / "stranger-client.key") if stranger else (
            self.folder / "client.crt", self.folder / "client.key")


def make_pki(folder: Path) -> Pki:
    ca, stranger = Authority("slimserve test CA"), Authority("someone else's CA")
    pki = Pki(folder, ca, ca.issue("localhost", server=True), ca.issue("client", server=False),
              ca.issue("localhost", server=True, expired=True), stranger, stranger.issue("client", server=False))
    pki.ca_file.write_bytes(ca.pem)
    pki.stranger_ca_file.write_bytes(stranger.pem)
    pki.client.write(folder, "client")
    pki.stranger_client.write(folder, "stranger-client")
    return pki


class SecretDir:
    """A mounted kubernetes.io/tls Secret: `tls.crt` -> `..data/tls.crt`, `..data` -> `..<n>` (the files)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.mkdir(parents=True)
        self._version = 0

    def write(self, issued: Issued, ca_pem: bytes | None = None, key_pem: bytes | None = None) -> None:
        """Publish a new version atomically, as the kubelet does: new folder, then swap `..data`."""
        self._version += 1
        version = self.path / f"..{self._version}"
        version.mkdir()
        (version / "tls.crt").write_bytes(issued.cert_pem)
        (version / "tls.key").write_bytes(key_pem if key_pem is not None else issued.key_pem)
        if ca_pem is not None:
            (version / "ca.crt").write_bytes(ca_pem)
        staging = self.path / "..data_tmp"
        staging.symlink_to(version.name)
        os.replace(staging, self.path / "..data")
        for name in ("tls.crt", "tls.key", "ca.crt"):
            link = self.path / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")


class TlsServer(ServerProcess):
    """A server with `--tls-dir` and a plain probe port, which `start()` waits on."""

    def __init__(self, log_dir, secret: SecretDir, client_auth: str, *args: str) -> None:
        self.probe_port = free_port()
        super().__init__("builtin://digits-mlp", log_dir, "--tls-dir", str(secret.path), "--tls-client-auth",
                         client_auth, "--probe-port", str(self.probe_port), "--max-latency-ms", "1", *args)
        self.secret = secret

    @property
    def ready_url(self) -> str:
        return f"http://{HOST}:{self.probe_port}/v2/health/ready"

    @property
    def probe_url(self) -> str:
        return f"{HOST}:{self.probe_port}"
