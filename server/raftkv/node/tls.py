"""The member's TLS objects, built from its `ServerConfig` with etcd's rules.

- A side (client URLs or peer URLs) serves TLS with its certificate files, or, with
  `--auto-tls` / `--peer-auto-tls` and no files, with a self-signed certificate generated
  into `<data-dir>/fixtures/client` or `<data-dir>/fixtures/peer` (etcd's places).
- Client certificates are required with `--client-cert-auth`, and also whenever a trusted CA
  file is given (etcd 3.4 requires and verifies them as soon as `--trusted-ca-file` is set).
  Auto TLS drops both, as etcd's generated configuration does: nobody holds a certificate the
  generated one could verify.
- Members dial each other with the peer certificate; with peer auto TLS they trust the
  certificate each peer presents (etcd skips verification there).
- Calls between members over client URLs (lease and promotion forwarding, the corruption
  check) present the client-side certificate and trust `--trusted-ca-file`, as etcd's own
  in-process clients use its client TLS configuration.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import grpc

from raftkv.node.config import ServerConfig
from raftkv.node.tlsconfig import TLS13, TLSSide
from raftkv.transport.tls import (
    AUTO_TLS_DIR,
    CertificateSource,
    ChannelTLS,
    ServerTLS,
    self_signed,
)

log = logging.getLogger(__name__)


def _source(config: ServerConfig, side: TLSSide, kind: str, hosts: list[str]) -> CertificateSource:
    if side.self_signed:
        cert, key = self_signed(Path(config.data_dir) / AUTO_TLS_DIR / kind, hosts)
        return CertificateSource(cert, key)
    if side.auto_tls:
        log.warning("ignoring %s auto TLS since certs given", kind)
    return CertificateSource(side.cert_file, side.key_file, side.trusted_ca_file or None)


def _server_tls(config: ServerConfig, side: TLSSide, source: CertificateSource) -> ServerTLS:
    return ServerTLS(
        source,
        require_client_cert=side.require_client_cert,
        min_version=(
            ssl.TLSVersion.TLSv1_3 if config.tls_min_version == TLS13 else ssl.TLSVersion.TLSv1_2
        ),
        ciphers=config.openssl_cipher_suites,
        # The front terminates TLS only for HTTP/1 clients (gRPC's own TLS serves h2 ones).
        alpn=("http/1.1",),
    )


class MemberTLS:
    """Client and peer TLS of one member; None where the side is not configured."""

    def __init__(self, config: ServerConfig) -> None:
        client, peer = config.client_tls, config.peer_tls
        self.client: ServerTLS | None = None
        self.peer: ServerTLS | None = None
        self.peer_channels: ChannelTLS | None = None
        self.member_channels: ChannelTLS | None = None
        # Files given for http:// client URLs are ignored, as etcd ignores them (with a warning).
        if client.enabled and any(url.scheme == "https" for url in config.listen_client_urls):
            hosts = [url.host for url in config.listen_client_urls]
            source = _source(config, client, "client", hosts)
            self.client = _server_tls(config, client, source)
            self.member_channels = ChannelTLS(
                None if client.self_signed else source,
                client.trusted_ca_file or None,
                pin_peer_certificate=client.self_signed,
            )
        if peer.enabled:
            hosts = [url.host for url in config.listen_peer_urls]
            source = _source(config, peer, "peer", hosts)
            self.peer = _server_tls(config, peer, source)
            self.peer_channels = ChannelTLS(
                source, peer.trusted_ca_file or None, pin_peer_certificate=peer.self_signed
            )

    async def client_channel(self, url: str) -> grpc.aio.Channel:
        """A new channel to another member's client URL (https with this member's client TLS
        settings, else plaintext); the caller closes it."""
        parts = urlsplit(url)
        if parts.scheme != "https":
            return grpc.aio.insecure_channel(parts.netloc)
        tls = self.member_channels or ChannelTLS(None)
        _, credentials = await tls.credentials(url)
        return grpc.aio.secure_channel(parts.netloc, credentials)
