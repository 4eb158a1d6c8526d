"""`raftkv grpc-proxy start` reads etcd's grpc-proxy flags."""

from __future__ import annotations

import socket

import pytest
from raftkv.cli.grpc_proxy import UsageError, main, parse_proxy_args
from raftkv.client import TLSConfig
from raftkv.proxy import ProxyConfig, ServingTLS


def test_defaults_are_etcds() -> None:
    config = parse_proxy_args(["start"])
    assert config == ProxyConfig(endpoints=("http://127.0.0.1:2379",))
    assert (config.listen_addr, config.advertise_client_url) == ("127.0.0.1:23790",) * 2
    assert (config.resolver_prefix, config.resolver_ttl, config.metrics_addr) == ("", 0, "")


def test_every_flag_is_wired() -> None:
    config = parse_proxy_args(
        [
            "start",
            "--endpoints=http://10.0.0.1:2379,10.0.0.2:2379",
            "--listen-addr",
            "127.0.0.1:9000",
            "--advertise-client-url=10.0.0.9:9000",
            "--resolver-prefix=/proxies/",
            "--resolver-ttl=7",
            "--metrics-addr=http://127.0.0.1:9001",
            "--cert=c.pem",
            "--key=k.pem",
            "--cacert=ca.pem",
            "--cert-file=sc.pem",
            "--key-file=sk.pem",
            "--trusted-ca-file=sca.pem",
            "--range-cache-ttl=0",
        ]
    )
    assert config.endpoints == ("http://10.0.0.1:2379", "https://10.0.0.2:2379")
    assert config.listen_addr == "127.0.0.1:9000"
    assert config.advertise_client_url == "10.0.0.9:9000"
    assert (config.resolver_prefix, config.resolver_ttl) == ("/proxies", 7)
    assert config.metrics_addr == "http://127.0.0.1:9001"
    assert config.upstream_tls == TLSConfig(ca_file="ca.pem", cert_file="c.pem", key_file="k.pem")
    assert config.serving_tls == ServingTLS("sc.pem", "sk.pem", "sca.pem")
    assert config.cache_ttl == 0


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["stop"],
        ["start", "--cert=c.pem"],
        ["start", "--key-file=k.pem"],
        ["start", "--trusted-ca-file=ca.pem"],
        ["start", "--resolver-ttl=-1"],
        ["start", "--range-cache-ttl=-1"],
        ["start", "--endpoints=ftp://x:1"],
        ["start", "--no-such-flag"],
    ],
)
def test_mistakes_are_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError):
        parse_proxy_args(args)
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("raftkv grpc-proxy: error: ")


def test_the_raftkv_command_hands_grpc_proxy_to_the_proxy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from raftkv.cli.server import main as raftkv_main

    assert raftkv_main(["grpc-proxy", "start", "--resolver-ttl=-1"]) == 2
    assert capsys.readouterr().err.startswith("raftkv grpc-proxy: error: ")


def test_a_taken_listen_address_ends_the_proxy_with_status_1() -> None:
    from raftkv.proxy import run

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        host, port = taken.getsockname()
        assert run(ProxyConfig(listen_addr=f"{host}:{port}", endpoints=("127.0.0.1:9",))) == 1
