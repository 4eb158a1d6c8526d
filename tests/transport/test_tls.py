"""TLS material: loading and reloading certificate files, auto-TLS certificates, etcd's cipher
suite names and version rules, and reading a ClientHello without consuming it."""

from __future__ import annotations

import functools
import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st
from raftkv.api.http.hello import TLS12, TLS13, ClientHello, parse_client_hello, record_length
from raftkv.node.tlsconfig import (
    TLSConfigError,
    check_min_version,
    grpc_cipher_env,
    openssl_cipher_suites,
)
from raftkv.transport.tls import CertificateSource, ServerTLS, TLSMaterialError, self_signed


def _serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


def _replace(src: Path, dst: Path) -> None:
    """Rotate a file the way operators and kubelet do: a new file renamed over the old one."""
    tmp = dst.with_suffix(".tmp")
    tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)


@pytest.fixture
def pair_dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two different self-signed certificates, and the directory a server reads from."""
    first = tmp_path / "first"
    second = tmp_path / "second"
    self_signed(first, ["127.0.0.1"])
    self_signed(second, ["127.0.0.1"])
    live = tmp_path / "live"
    live.mkdir()
    for name in ("cert.pem", "key.pem"):
        _replace(first / name, live / name)
    return first, second, live


def test_a_source_reloads_when_the_files_change(pair_dirs: tuple[Path, Path, Path]) -> None:
    first, second, live = pair_dirs
    source = CertificateSource(live / "cert.pem", live / "key.pem")
    loaded = source.current()
    assert _serial(loaded.cert_chain) == _serial((first / "cert.pem").read_bytes())
    assert source.current() is loaded  # nothing changed: nothing read again
    for name in ("key.pem", "cert.pem"):
        _replace(second / name, live / name)
    reloaded = source.current()
    assert reloaded.generation == loaded.generation + 1
    assert _serial(reloaded.cert_chain) == _serial((second / "cert.pem").read_bytes())


def test_a_half_done_rotation_keeps_serving_the_old_certificate(
    pair_dirs: tuple[Path, Path, Path],
) -> None:
    _, second, live = pair_dirs
    source = CertificateSource(live / "cert.pem", live / "key.pem")
    before = source.current()
    _replace(second / "cert.pem", live / "cert.pem")  # the key is not there yet
    assert source.current() == before
    _replace(second / "key.pem", live / "key.pem")
    assert _serial(source.current().cert_chain) == _serial((second / "cert.pem").read_bytes())


def test_missing_or_mismatched_files_fail_at_start(pair_dirs: tuple[Path, Path, Path]) -> None:
    first, second, live = pair_dirs
    with pytest.raises(TLSMaterialError, match="No such file"):
        CertificateSource(live / "nope.pem", live / "key.pem")
    with pytest.raises(TLSMaterialError, match="does not match"):
        CertificateSource(first / "cert.pem", second / "key.pem")


def test_the_python_context_follows_the_files(pair_dirs: tuple[Path, Path, Path]) -> None:
    _, second, live = pair_dirs
    tls = ServerTLS(
        CertificateSource(live / "cert.pem", live / "key.pem"), require_client_cert=False
    )
    context = tls.ssl_context()
    assert tls.ssl_context() is context
    for name in ("key.pem", "cert.pem"):
        _replace(second / name, live / name)
    assert tls.ssl_context() is not context


def test_auto_tls_certificates_name_the_hosts_and_are_reused(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "fixtures" / "client", ["127.0.0.1", "member.local"])
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["member.local"]
    assert certificate.issuer == certificate.subject
    assert key.stat().st_mode & 0o077 == 0
    again, _ = self_signed(tmp_path / "fixtures" / "client", ["127.0.0.1"])
    assert again.read_bytes() == cert.read_bytes()


# ---- etcd's names and rules --------------------------------------------------------------------


def test_go_cipher_suite_names_map_to_openssl_names() -> None:
    assert openssl_cipher_suites(
        ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"]
    ) == ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305")
    # every mapped name is one the TLS library knows
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for name in ("TLS_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"):
        context.set_ciphers(openssl_cipher_suites([name])[0])


def test_unknown_and_withdrawn_cipher_suites_are_refused() -> None:
    with pytest.raises(TLSConfigError, match=r'^unexpected TLS cipher suite "FOO"$'):
        openssl_cipher_suites(["FOO"])
    with pytest.raises(TLSConfigError, match="RC4"):
        openssl_cipher_suites(["TLS_RSA_WITH_RC4_128_SHA"])


def test_tls_min_version_rules() -> None:
    check_min_version("TLS1.2", ["TLS_RSA_WITH_AES_128_GCM_SHA256"])
    check_min_version("TLS1.3", [])
    with pytest.raises(TLSConfigError, match=r'unexpected TLS version "TLS1.1" \(must be one of'):
        check_min_version("TLS1.1", [])
    with pytest.raises(TLSConfigError, match=r"only TLS1\.3"):
        check_min_version("TLS1.3", ["TLS_RSA_WITH_AES_128_GCM_SHA256"])


def test_what_grpc_is_told() -> None:
    assert grpc_cipher_env([], "TLS1.2") is None
    assert grpc_cipher_env(["TLS_RSA_WITH_AES_128_GCM_SHA256"], "TLS1.2") == "AES128-GCM-SHA256"
    # TLS 1.3 only: a TLS 1.2 suite no handshake can use (a pre-shared key nobody has)
    assert grpc_cipher_env([], "TLS1.3") == "PSK-AES128-CBC-SHA"


# ---- ClientHello -------------------------------------------------------------------------------


def _client_hello(alpn: list[str] | None, maximum: ssl.TLSVersion | None = None) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    if maximum is not None:
        context.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_grpc_clients_offer_only_h2() -> None:
    hello = parse_client_hello(_client_hello(["h2"]))
    assert hello is not None and hello.alpn == ("h2",) and hello.grpc_only
    assert hello.offers(TLS13)


def test_http_clients_are_not_taken_for_grpc() -> None:
    for alpn in (["h2", "http/1.1"], ["http/1.1"], None):
        hello = parse_client_hello(_client_hello(alpn))
        assert hello is not None and not hello.grpc_only


def test_a_tls12_only_client_does_not_offer_tls13() -> None:
    hello = parse_client_hello(_client_hello(["h2"], ssl.TLSVersion.TLSv1_2))
    assert hello is not None and hello.offers(TLS12) and not hello.offers(TLS13)


def test_partial_or_foreign_bytes_are_not_a_hello() -> None:
    record = _client_hello(["h2"])
    assert record_length(record[:4]) is None
    assert record_length(record) == len(record)
    assert parse_client_hello(record[:-1]) is None
    assert record_length(b"GET / HTTP/1.1\r\n") is None
    assert parse_client_hello(b"\x16\x03\x01\x00\x04\x01\x00\x00\x00") is None


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=0, max_value=2000))
def test_any_bytes_yield_a_hello_or_none(noise: bytes, cut: int) -> None:
    """The front peeks at whatever a client sends first: nothing may raise."""
    for data in (noise, b"\x16\x03\x01" + len(noise).to_bytes(2, "big") + noise):
        assert parse_client_hello(data) is None or isinstance(parse_client_hello(data), ClientHello)
    real = _browser_hello()
    parse_client_hello(real[:cut] + noise[:8] + real[cut + 8 :])


@functools.cache
def _browser_hello() -> bytes:
    return _client_hello(["h2", "http/1.1"])
