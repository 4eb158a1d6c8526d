"""etcd's TLS flags as `raftkv` reads them: values, and etcd's refusals of bad combinations."""

from __future__ import annotations

import pytest
from raftkv.cli.flags import parse_server_args
from raftkv.node.config import ConfigError, ServerConfig

HTTPS_CLIENT = (
    "--listen-client-urls=https://127.0.0.1:2379",
    "--advertise-client-urls=https://127.0.0.1:2379",
)
HTTPS_PEER = (
    "--listen-peer-urls=https://127.0.0.1:2380",
    "--initial-advertise-peer-urls=https://127.0.0.1:2380",
)


def parse(*argv: str) -> ServerConfig:
    return parse_server_args(list(argv), {})


def error_of(*argv: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(*argv)
    return str(caught.value)


def test_https_urls_need_certificates_in_etcds_words() -> None:
    assert error_of(*HTTPS_CLIENT) == (
        "TLS key/cert (--cert-file, --key-file) must be provided for client url "
        "https://127.0.0.1:2379 with HTTPS scheme"
    )
    assert error_of(*HTTPS_PEER) == (
        "cannot listen on TLS for 127.0.0.1:2380: KeyFile and CertFile are not presented"
    )
    assert error_of(*HTTPS_CLIENT, "--cert-file=s.crt") == (
        "--cert-file and --key-file must be given together"
    )


def test_certificates_or_auto_tls_make_https_urls_valid() -> None:
    config = parse(*HTTPS_CLIENT, *HTTPS_PEER, "--cert-file=s.crt", "--key-file=s.key",
                   "--peer-auto-tls")  # fmt: skip
    assert config.client_tls.enabled and not config.client_tls.self_signed
    assert config.peer_tls.self_signed


def test_certificates_for_http_urls_are_ignored_like_etcd() -> None:
    config = parse("--cert-file=only-the-cert.crt", "--client-cert-auth")
    assert config.cert_file == "only-the-cert.crt"


def test_who_must_show_a_client_certificate() -> None:
    files = ("--cert-file=s.crt", "--key-file=s.key")
    plain = parse(*HTTPS_CLIENT, *files).client_tls
    assert not plain.require_client_cert and not plain.cert_auth
    ca_only = parse(*HTTPS_CLIENT, *files, "--trusted-ca-file=ca.crt").client_tls
    assert ca_only.require_client_cert and not ca_only.cert_auth  # etcd 3.4 does the same
    mutual = parse(*HTTPS_CLIENT, *files, "--trusted-ca-file=ca.crt", "--client-cert-auth")
    assert mutual.client_tls.require_client_cert and mutual.client_tls.cert_auth
    auto = parse(*HTTPS_CLIENT, "--auto-tls", "--client-cert-auth").client_tls
    assert not auto.require_client_cert and not auto.cert_auth  # nobody could be verified


def test_cipher_suites_and_min_version() -> None:
    config = parse(
        "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_RSA_WITH_AES_256_GCM_SHA384"
    )
    assert config.openssl_cipher_suites == ("ECDHE-RSA-AES128-GCM-SHA256", "AES256-GCM-SHA384")
    assert config.tls_min_version == "TLS1.2"
    assert error_of("--cipher-suites=TLS_FOO") == 'unexpected TLS cipher suite "TLS_FOO"'
    assert error_of("--tls-min-version=TLS1.0") == (
        'unexpected TLS version "TLS1.0" (must be one of: TLS1.2, TLS1.3)'
    )
    assert (
        error_of("--tls-min-version=TLS1.3", "--cipher-suites=TLS_RSA_WITH_AES_128_GCM_SHA256")
        == "cipher suites cannot be configured when only TLS1.3 is enabled"
    )
