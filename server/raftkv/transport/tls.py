"""Certificates for client and peer TLS: loaded from PEM files, reloaded when the files change.

etcd reads its certificate files again for every TLS handshake, so an operator (or cert-manager)
rotates certificates by replacing the files, without a restart. raftkv does the same for every
kind of connection it makes or accepts:

- `CertificateSource` watches one certificate, key and CA file. Each `current()` call compares
  the files' (inode, size, mtime) with what it loaded last (a few stat calls) and reloads when
  one changed. A half-written rotation (a certificate that does not match its key yet) keeps
  the previous material and is retried on the next handshake, so a rotation never breaks serving.
- gRPC terminates TLS itself for gRPC clients and peers. `ServerTLS.grpc_credentials()` gives it
  dynamic credentials whose fetcher gRPC calls before each handshake; it returns new material
  only when the source has reloaded.
- The client port's HTTP/1 connections are terminated by Python's ssl module
  (`ServerTLS.ssl_context()`, rebuilt when the material changes).
- Outgoing peer connections (`ChannelTLS`) present the member's peer certificate; their
  credentials are rebuilt when the files change, and callers re-dial with them.

`--auto-tls` certificates come from `self_signed` (the `cryptography` package), kept under
`<data-dir>/fixtures/{client,peer}` as etcd keeps them and reused across restarts. A
self-signed peer certificate cannot be verified by another member, which is why etcd skips
verification for auto-TLS peers; gRPC's Python API cannot skip it, so `ChannelTLS` with
`pin_peer_certificate` fetches the certificate the peer presents and trusts exactly that one
for the connection (the same trust, stated explicitly).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import secrets
import socket
import ssl
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

AUTO_TLS_DIR = "fixtures"
AUTO_CERT_NAME = "cert.pem"
AUTO_KEY_NAME = "key.pem"
# etcd's self-signed certificates last a year.
AUTO_TLS_VALIDITY = datetime.timedelta(days=365)
PIN_FETCH_TIMEOUT = 3.0


class TLSMaterialError(ValueError):
    """Certificate files that cannot be used (missing, unreadable, not matching)."""


@dataclass(frozen=True)
class Material:
    """One consistent load of the files; `generation` grows with every successful reload."""

    cert_chain: bytes
    private_key: bytes
    ca: bytes | None
    generation: int
    cert_file: Path
    key_file: Path
    ca_file: Path | None


def _signature(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _check_pair(cert_chain: bytes, private_key: bytes) -> None:
    """The first certificate of the chain must belong to the key (raises TLSMaterialError)."""
    try:
        certificate = x509.load_pem_x509_certificate(cert_chain)
        key = serialization.load_pem_private_key(private_key, password=None)
    except (ValueError, TypeError) as error:
        raise TLSMaterialError(f"cannot parse certificate or key: {error}") from None
    cert_public = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if cert_public != key_public:
        raise TLSMaterialError("private key does not match public key")


class CertificateSource:
    """A certificate, its key and optionally CA certificates, reloaded when the files change.

    Thread-safe: gRPC calls `current()` from its own threads.
    """

    def __init__(
        self, cert_file: str | Path, key_file: str | Path, ca_file: str | Path | None = None
    ) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.ca_file = Path(ca_file) if ca_file else None
        self._lock = threading.Lock()
        self._signatures: tuple[tuple[int, int, int], ...] | None = None
        self._material: Material | None = None
        self.current()  # a source that exists has loaded once: bad files fail here, at start

    @property
    def _paths(self) -> tuple[Path, ...]:
        return (self.cert_file, self.key_file, *((self.ca_file,) if self.ca_file else ()))

    def current(self) -> Material:
        """The newest good material; reloads first when a file changed since the last load."""
        with self._lock:
            try:
                signatures = tuple(_signature(path) for path in self._paths)
            except OSError as error:
                return self._keep(f"cannot stat: {error}")
            if signatures == self._signatures and self._material is not None:
                return self._material
            try:
                cert_chain = self.cert_file.read_bytes()
                private_key = self.key_file.read_bytes()
                ca = self.ca_file.read_bytes() if self.ca_file else None
                _check_pair(cert_chain, private_key)
            except (OSError, TLSMaterialError) as error:
                return self._keep(str(error))
            generation = self._material.generation + 1 if self._material else 1
            self._material = Material(
                cert_chain,
                private_key,
                ca,
                generation,
                self.cert_file,
                self.key_file,
                self.ca_file,
            )
            self._signatures = signatures
            if generation > 1:
                log.info("reloaded TLS certificate %s", self.cert_file)
            return self._material

    def _keep(self, problem: str) -> Material:
        if self._material is None:
            raise TLSMaterialError(f"TLS files {self.cert_file}, {self.key_file}: {problem}")
        log.warning("keeping the previous TLS certificate %s: %s", self.cert_file, problem)
        return self._material


class ServerTLS:
    """What a TLS server end needs: current certificates, client verification, versions."""

    def __init__(
        self,
        source: CertificateSource,
        *,
        require_client_cert: bool,
        min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
        ciphers: Sequence[str] = (),
        alpn: Sequence[str] = (),
    ) -> None:
        self.source = source
        self.require_client_cert = require_client_cert
        self.min_version = min_version
        self.ciphers = tuple(ciphers)
        self.alpn = tuple(alpn)
        self._context: ssl.SSLContext | None = None
        self._context_generation = 0

    def ssl_context(self) -> ssl.SSLContext:
        """A server-side context with the current certificates (rebuilt when they change)."""
        material = self.source.current()
        if self._context is None or material.generation != self._context_generation:
            self._context = self._build_context(material)
            self._context_generation = material.generation
        return self._context

    def _build_context(self, material: Material) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = self.min_version
        if self.ciphers:
            context.set_ciphers(":".join(self.ciphers))
        context.load_cert_chain(material.cert_file, material.key_file)
        if self.require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            if material.ca is not None:
                context.load_verify_locations(cadata=material.ca.decode())
            else:
                context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        if self.alpn:
            context.set_alpn_protocols(list(self.alpn))
        return context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Credentials gRPC asks for new certificates before every handshake."""
        material = self.source.current()
        served = [material.generation]

        def configuration(m: Material) -> grpc.ServerCertificateConfiguration:
            return grpc.ssl_server_certificate_configuration(
                [(m.private_key, m.cert_chain)], root_certificates=m.ca
            )

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            m = self.source.current()
            if m.generation == served[0]:
                return None
            served[0] = m.generation
            return configuration(m)

        return grpc.dynamic_ssl_server_credentials(
            configuration(material),
            fetch,
            require_client_authentication=self.require_client_cert,
        )


class ChannelTLS:
    """Credentials for outgoing TLS connections (peer dials, calls between members).

    `source` is the certificate presented to the server (None: none); `ca_file` verifies the
    server (None: the system's roots). With `pin_peer_certificate` the server's own certificate
    is fetched and trusted instead (auto TLS: self-signed certificates everywhere).
    """

    def __init__(
        self,
        source: CertificateSource | None,
        ca_file: str | Path | None = None,
        *,
        pin_peer_certificate: bool = False,
    ) -> None:
        self.source = source
        self.ca_file = Path(ca_file) if ca_file else None
        self.pin_peer_certificate = pin_peer_certificate

    async def credentials(self, url: str) -> tuple[Hashable, grpc.ChannelCredentials]:
        """(a key that changes when the credentials must change, the credentials) for `url`."""
        material = self.source.current() if self.source is not None else None
        if self.pin_peer_certificate:
            roots: bytes | None = await asyncio.to_thread(fetch_certificate, url)
        else:
            roots = self.ca_file.read_bytes() if self.ca_file else None
        key = (material.generation if material else 0, roots)
        return key, grpc.ssl_channel_credentials(
            root_certificates=roots,
            private_key=material.private_key if material else None,
            certificate_chain=material.cert_chain if material else None,
        )


def fetch_certificate(url: str, timeout: float = PIN_FETCH_TIMEOUT) -> bytes:
    """The PEM certificate the TLS server at `url` presents, unverified (blocking)."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    if host is None or port is None:
        raise ValueError(f"URL {url!r} has no host:port")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError(f"{url} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode()


def self_signed(directory: str | Path, hosts: Sequence[str]) -> tuple[Path, Path]:
    """etcd's auto TLS: a self-signed certificate for `hosts` in `directory` (cert, key paths).

    Files left by an earlier start are reused, as etcd reuses them.
    """
    directory = Path(directory)
    cert_path, key_path = directory / AUTO_CERT_NAME, directory / AUTO_KEY_NAME
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "etcd")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + AUTO_TLS_VALIDITY)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    log.info("generated a self-signed TLS certificate in %s for %s", directory, ", ".join(hosts))
    return cert_path, key_path
