"""TLS settings as etcd's flags state them: which files, which checks, which ciphers and versions.

This module only knows names and rules, never sockets or gRPC: `ServerConfig` validates with
it while the command line is read, before gRPC is loaded. That order matters because gRPC's
TLS library reads its cipher list from the `GRPC_SSL_CIPHER_SUITES` environment variable once,
when the `grpc` module is imported: `grpc_cipher_env` computes that value, and `raftkv.cli.server`
sets it before the server (and gRPC) is imported. The certificates themselves are loaded,
watched and turned into credentials by `raftkv.transport.tls`.

etcd names cipher suites as Go's crypto/tls does (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`);
OpenSSL and gRPC's BoringSSL know them by OpenSSL names (`ECDHE-RSA-AES128-GCM-SHA256`), so
`CIPHER_SUITES` maps one to the other. As in Go, only TLS 1.2 suites are configurable; TLS 1.3
always uses its own (all AEAD) suites. RC4 suites, which etcd 3.4 still accepts, are gone from
both libraries and are refused here with a message that says so.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass

TLS12 = "TLS1.2"
TLS13 = "TLS1.3"
TLS_VERSIONS = (TLS12, TLS13)
DEFAULT_TLS_MIN_VERSION = TLS12

# Go's name -> OpenSSL's name (None: Go knows it, TLS libraries of today no longer do).
CIPHER_SUITES: dict[str, str | None] = {
    "TLS_RSA_WITH_RC4_128_SHA": None,
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA": None,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA": None,
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}

# With --tls-min-version=TLS1.3, gRPC (which has no minimum-version setting in Python) is given
# only this TLS 1.2 suite: it needs a pre-shared key nobody configures, so no TLS 1.2 handshake
# can succeed while TLS 1.3, whose suites are not affected by the list, works as before.
_NO_TLS12_FOR_GRPC = "PSK-AES128-CBC-SHA"


class TLSConfigError(ValueError):
    """A TLS setting is invalid; the message follows etcd's wording where etcd has one."""


def openssl_cipher_suites(names: Sequence[str]) -> tuple[str, ...]:
    """OpenSSL names for etcd's (Go's) cipher suite names, in the order given."""
    converted = []
    for name in names:
        if name not in CIPHER_SUITES:
            raise TLSConfigError(f'unexpected TLS cipher suite "{name}"')
        openssl_name = CIPHER_SUITES[name]
        if openssl_name is None:
            raise TLSConfigError(f'TLS cipher suite "{name}" (RC4) is not supported by raftkv')
        converted.append(openssl_name)
    if converted:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(":".join(converted))
        except ssl.SSLError:
            raise TLSConfigError(
                f"none of the TLS cipher suites {', '.join(names)} is available"
            ) from None
    return tuple(dict.fromkeys(converted))


def check_min_version(version: str, cipher_suites: Sequence[str]) -> None:
    """etcd 3.5's rules for --tls-min-version (etcd 3.4 has no such flag)."""
    if version not in TLS_VERSIONS:
        raise TLSConfigError(
            f'unexpected TLS version "{version}" (must be one of: {", ".join(TLS_VERSIONS)})'
        )
    if version == TLS13 and cipher_suites:
        raise TLSConfigError("cipher suites cannot be configured when only TLS1.3 is enabled")


def grpc_cipher_env(cipher_suites: Sequence[str], min_version: str) -> str | None:
    """The `GRPC_SSL_CIPHER_SUITES` value the member's gRPC needs (None: gRPC's default)."""
    if min_version == TLS13:
        return _NO_TLS12_FOR_GRPC
    if cipher_suites:
        return ":".join(openssl_cipher_suites(cipher_suites))
    return None


@dataclass(frozen=True)
class TLSSide:
    """One side's TLS flags (client URLs or peer URLs), as etcd's TLSInfo holds them."""

    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    auto_tls: bool = False

    @property
    def empty(self) -> bool:
        """No certificate configured (etcd's TLSInfo.Empty)."""
        return not self.cert_file and not self.key_file

    @property
    def self_signed(self) -> bool:
        """Auto TLS with no files: a generated certificate serves this side."""
        return self.auto_tls and self.empty

    @property
    def require_client_cert(self) -> bool:
        """Handshakes need a verified client certificate: with --client-cert-auth, and, as in
        etcd 3.4, with a trusted CA file alone; never with a generated certificate."""
        return not self.self_signed and (self.client_cert_auth or bool(self.trusted_ca_file))

    @property
    def cert_auth(self) -> bool:
        """A client certificate's common name names the auth user (--client-cert-auth)."""
        return self.client_cert_auth and not self.self_signed

    @property
    def enabled(self) -> bool:
        """TLS can be served: files given, or generated by auto TLS."""
        return not self.empty or self.auto_tls

    def check(self, flag_prefix: str) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise TLSConfigError(
                f"--{flag_prefix}cert-file and --{flag_prefix}key-file must be given together"
            )
