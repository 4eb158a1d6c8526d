"""etcd's flags, environment variables, defaults and error messages, as `raftkv` takes them."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from raftkv.cli import server
from raftkv.cli.flags import FLAGS, parse_server_args
from raftkv.node.config import (
    URL,
    ConfigError,
    ServerConfig,
    format_initial_cluster,
    parse_duration_seconds,
    parse_initial_cluster,
)

THREE = "infra1=http://127.0.0.1:2380,infra2=http://127.0.0.1:22380,infra3=http://127.0.0.1:32380"


def parse(*argv: str, **environ: str) -> ServerConfig:
    return parse_server_args(list(argv), environ)


def error_of(*argv: str, **environ: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_server_args(list(argv), environ)
    return str(caught.value)


def urls(*texts: str) -> tuple[URL, ...]:
    return tuple(URL.parse(text) for text in texts)


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_are_etcds_documented_defaults() -> None:
    config = parse()
    assert config.name == "default"
    assert config.data_dir == "default.raftkv"
    assert config.listen_client_urls == urls("http://localhost:2379")
    assert config.advertise_client_urls == urls("http://localhost:2379")
    assert config.listen_peer_urls == urls("http://localhost:2380")
    assert config.initial_advertise_peer_urls == urls("http://localhost:2380")
    assert config.initial_cluster == {"default": urls("http://localhost:2380")}
    assert config.initial_cluster_state == "new"
    assert config.initial_cluster_token == "etcd-cluster"
    assert config.heartbeat_interval_ms == 100
    assert config.election_timeout_ms == 1000
    assert config.snapshot_count == 100_000
    assert config.quota_backend_bytes == 0
    assert config.effective_quota_backend_bytes == 2 * 1024**3
    assert config.max_request_bytes == 1_572_864
    assert config.max_txn_ops == 128
    assert config.max_concurrent_streams == 2**32 - 1
    assert config.auto_compaction_mode == "periodic"
    assert config.auto_compaction_retention == "0"
    assert config.listen_metrics_urls == ()
    assert config.log_level == "info"
    assert config.enable_v2 is False
    assert config.strict_reconfig_check is True
    assert config == ServerConfig()


def test_name_drives_the_data_dir_and_the_initial_cluster_defaults() -> None:
    config = parse("--name", "infra1", "--initial-advertise-peer-urls", "http://10.0.0.1:2380")
    assert config.data_dir == "infra1.raftkv"
    assert config.initial_cluster == {"infra1": urls("http://10.0.0.1:2380")}


def test_ticks_follow_the_heartbeat_interval() -> None:
    config = parse("--heartbeat-interval", "50", "--election-timeout", "525")
    assert config.tick_seconds == 0.05
    assert config.heartbeat_ticks == 1
    assert config.election_ticks == 10


def test_snapshot_count_zero_means_the_default_as_in_etcd() -> None:
    assert parse("--snapshot-count", "0").snapshot_count == 100_000


def test_a_full_member_command_line() -> None:
    config = parse(
        "--name=infra2",
        "--data-dir=/var/lib/raftkv",
        "--listen-client-urls=http://0.0.0.0:22379",
        "--advertise-client-urls=http://127.0.0.1:22379,https://node2:22379",
        "--listen-peer-urls=http://0.0.0.0:22380",
        "--initial-advertise-peer-urls=http://127.0.0.1:22380",
        f"--initial-cluster={THREE}",
        "--initial-cluster-state=existing",
        "--initial-cluster-token=tkn",
        "--snapshot-count=5000",
        "--quota-backend-bytes=8589934592",
        "--max-request-bytes=10485760",
        "--max-txn-ops=1024",
        "--auto-compaction-mode=revision",
        "--auto-compaction-retention=1000",
        "--listen-metrics-urls=http://127.0.0.1:9090",
        "--log-level=debug",
        "--enable-v2",
        "--strict-reconfig-check=false",
    )
    assert config.data_dir == "/var/lib/raftkv"
    assert config.advertise_client_urls == urls("http://127.0.0.1:22379", "https://node2:22379")
    assert list(config.initial_cluster) == ["infra1", "infra2", "infra3"]
    assert config.initial_cluster_state == "existing"
    assert config.effective_quota_backend_bytes == 8 * 1024**3
    assert config.revision_compaction_retain == 1000
    assert config.periodic_compaction_seconds == 0.0
    assert config.listen_metrics_urls == urls("http://127.0.0.1:9090")
    assert (config.log_level, config.enable_v2, config.strict_reconfig_check) == (
        "debug",
        True,
        False,
    )


# --- environment variables --------------------------------------------------------------------

ENV_CASES = [
    ("ETCD_NAME", "n1", "name", "n1"),
    ("ETCD_DATA_DIR", "/d", "data_dir", "/d"),
    ("ETCD_LISTEN_PEER_URLS", "http://127.0.0.1:7", "listen_peer_urls", urls("http://127.0.0.1:7")),
    (
        "ETCD_ADVERTISE_CLIENT_URLS",
        "http://a:1,http://b:2",
        "advertise_client_urls",
        urls("http://a:1", "http://b:2"),
    ),
    ("ETCD_INITIAL_CLUSTER_STATE", "existing", "initial_cluster_state", "existing"),
    ("ETCD_INITIAL_CLUSTER_TOKEN", "t", "initial_cluster_token", "t"),
    ("ETCD_SNAPSHOT_COUNT", "10", "snapshot_count", 10),
    ("ETCD_QUOTA_BACKEND_BYTES", "1024", "quota_backend_bytes", 1024),
    ("ETCD_MAX_REQUEST_BYTES", "4096", "max_request_bytes", 4096),
    ("ETCD_MAX_TXN_OPS", "3", "max_txn_ops", 3),
    ("ETCD_MAX_CONCURRENT_STREAMS", "100", "max_concurrent_streams", 100),
    ("ETCD_AUTO_COMPACTION_MODE", "revision", "auto_compaction_mode", "revision"),
    ("ETCD_AUTO_COMPACTION_RETENTION", "30m", "auto_compaction_retention", "30m"),
    (
        "ETCD_LISTEN_METRICS_URLS",
        "http://127.0.0.1:9",
        "listen_metrics_urls",
        urls("http://127.0.0.1:9"),
    ),
    ("ETCD_LOG_LEVEL", "warn", "log_level", "warn"),
    ("ETCD_ENABLE_V2", "true", "enable_v2", True),
    ("ETCD_STRICT_RECONFIG_CHECK", "0", "strict_reconfig_check", False),
    ("ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME", "1m30s", "corrupt_check_time_ms", 90_000),
    ("ETCD_HEARTBEAT_INTERVAL", "20", "heartbeat_interval_ms", 20),
    ("ETCD_ELECTION_TIMEOUT", "5000", "election_timeout_ms", 5000),
    ("ETCD_AUTH_TOKEN", "simple,x=y", "auth_token", "simple,x=y"),
    ("ETCD_AUTH_TOKEN_TTL", "30", "auth_token_ttl", 30),
    ("ETCD_BCRYPT_COST", "12", "bcrypt_cost", 12),
    ("ETCD_CERT_FILE", "s.crt", "cert_file", "s.crt"),
    ("ETCD_KEY_FILE", "s.key", "key_file", "s.key"),
    ("ETCD_TRUSTED_CA_FILE", "ca.crt", "trusted_ca_file", "ca.crt"),
    ("ETCD_CLIENT_CERT_AUTH", "true", "client_cert_auth", True),
    ("ETCD_AUTO_TLS", "true", "auto_tls", True),
    ("ETCD_PEER_CERT_FILE", "p.crt", "peer_cert_file", "p.crt"),
    ("ETCD_PEER_KEY_FILE", "p.key", "peer_key_file", "p.key"),
    ("ETCD_PEER_TRUSTED_CA_FILE", "ca.crt", "peer_trusted_ca_file", "ca.crt"),
    ("ETCD_PEER_CLIENT_CERT_AUTH", "1", "peer_client_cert_auth", True),
    ("ETCD_PEER_AUTO_TLS", "true", "peer_auto_tls", True),
    (
        "ETCD_CIPHER_SUITES",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "cipher_suites",
        ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
    ),
    ("ETCD_TLS_MIN_VERSION", "TLS1.3", "tls_min_version", "TLS1.3"),
]


@pytest.mark.parametrize(("variable", "value", "field", "expected"), ENV_CASES)
def test_every_flag_reads_its_etcd_environment_variable(
    variable: str, value: str, field: str, expected: object
) -> None:
    assert getattr(parse(**{variable: value}), field) == expected


def test_every_flag_has_an_env_case_above() -> None:
    covered = {case[0] for case in ENV_CASES} | {
        "ETCD_LISTEN_CLIENT_URLS",
        "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        "ETCD_INITIAL_CLUSTER",
    }
    assert {flag.env for flag in FLAGS} == covered


def test_cluster_wide_settings_from_the_environment() -> None:
    config = parse(
        ETCD_NAME="infra3",
        ETCD_LISTEN_CLIENT_URLS="http://127.0.0.1:32379",
        ETCD_ADVERTISE_CLIENT_URLS="http://127.0.0.1:32379",
        ETCD_INITIAL_ADVERTISE_PEER_URLS="http://127.0.0.1:32380",
        ETCD_INITIAL_CLUSTER=THREE,
    )
    assert config.name == "infra3"
    assert config.listen_client_urls == urls("http://127.0.0.1:32379")
    assert config.initial_cluster["infra3"] == urls("http://127.0.0.1:32380")


def test_a_variable_and_its_flag_together_are_refused_as_etcd_34_does() -> None:
    assert error_of("--name", "a", ETCD_NAME="b") == (
        'conflicting environment variable "ETCD_NAME" is shadowed by corresponding '
        "command-line flag (either unset environment variable or disable flag)"
    )


def test_flag_and_variable_for_different_settings_combine() -> None:
    config = parse("--name", "a", ETCD_SNAPSHOT_COUNT="7")
    assert (config.name, config.snapshot_count) == ("a", 7)


def test_unknown_etcd_variables_are_warned_about_not_fatal() -> None:
    warnings: list[str] = []
    config = parse_server_args(
        [], {"ETCD_FOO_BAR": "1", "ETCDCTL_API": "3", "HOME": "/root"}, on_warning=warnings.append
    )
    assert config == ServerConfig()
    assert warnings == ["unrecognized environment variable ETCD_FOO_BAR=1"]


def test_a_bad_variable_names_the_variable() -> None:
    assert error_of(ETCD_HEARTBEAT_INTERVAL="abc") == (
        'invalid value "abc" for ETCD_HEARTBEAT_INTERVAL: not an integer'
    )
    assert error_of(ETCD_ENABLE_V2="yes").startswith('invalid value "yes" for ETCD_ENABLE_V2')


# --- validation -------------------------------------------------------------------------------


def test_unknown_flags_are_refused() -> None:
    assert error_of("--bad-flag") == "unrecognized arguments: --bad-flag"
    # No prefix matching: etcd has none either.
    assert "unrecognized arguments: --na" in error_of("--na", "x")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("foo", "URL scheme must be http or https: foo"),
        ("ftp://a:1", "URL scheme must be http or https: ftp://a:1"),
        ("http://foo", 'URL address does not have the form "host:port": http://foo'),
        ("http://:2379", 'URL address does not have the form "host:port": http://:2379'),
        ("http://a:2379/v3", "URL must not contain a path: http://a:2379/v3"),
        ("http://a:2379?x=1", "URL must not contain a query or fragment: http://a:2379?x=1"),
        ("http://u:p@a:2379", "URL must not contain user information: http://u:p@a:2379"),
        ("http://a:99999", "invalid URL 'http://a:99999'"),
        ("http://a:port", "invalid URL 'http://a:port'"),
        ("unix://a:1", "unix socket URLs are not supported by raftkv: unix://a:1"),
        ("unixs://a:1", "unix socket URLs are not supported by raftkv: unixs://a:1"),
        ("http://a:1,", "empty URL in the list 'http://a:1,'"),
        ("", "the URL list is empty"),
    ],
)
def test_bad_urls_are_refused(value: str, message: str) -> None:
    error = error_of("--listen-peer-urls", value)
    assert error.startswith(f'invalid value "{value}" for flag --listen-peer-urls: {message}')


def test_urls_parse_and_print_back() -> None:
    config = parse(
        "--listen-client-urls=https://[::1]:2379,http://0.0.0.0:2379",
        "--advertise-client-urls=https://[::1]:2379",
        "--auto-tls",  # https needs a certificate
    )
    ipv6, wildcard = config.listen_client_urls
    assert (ipv6.scheme, ipv6.host, ipv6.port) == ("https", "::1", 2379)
    assert (str(ipv6), ipv6.address) == ("https://[::1]:2379", "[::1]:2379")
    assert (str(wildcard), wildcard.address) == ("http://0.0.0.0:2379", "0.0.0.0:2379")


def test_initial_cluster_state_must_be_new_or_existing() -> None:
    assert error_of("--initial-cluster-state", "foo") == (
        'invalid value "foo" for flag --initial-cluster-state: must be one of new, existing'
    )


def test_local_name_must_be_in_the_initial_cluster() -> None:
    assert error_of("--name", "x", "--initial-cluster", "y=http://localhost:2380") == (
        'couldn\'t find local name "x" in the initial cluster configuration'
    )


def test_initial_cluster_entry_must_match_the_advertised_peer_urls() -> None:
    assert error_of("--initial-cluster", "default=http://localhost:2381") == (
        "--initial-cluster has default=http://localhost:2381 but missing from "
        "--initial-advertise-peer-urls=http://localhost:2380 "
        '("http://localhost:2380" != "http://localhost:2381")'
    )


def test_a_name_given_twice_lists_several_peer_urls_of_one_member() -> None:
    config = parse(
        "--initial-cluster=default=http://a:2380,default=http://b:2380",
        "--initial-advertise-peer-urls=http://b:2380,http://a:2380",
    )
    assert config.initial_cluster == {"default": urls("http://a:2380", "http://b:2380")}
    # ...and all of them must be advertised.
    assert "but missing from --initial-advertise-peer-urls=http://a:2380" in error_of(
        "--initial-cluster=default=http://a:2380,default=http://b:2380",
        "--initial-advertise-peer-urls=http://a:2380",
    )


@pytest.mark.parametrize(
    "cluster",
    [
        "default=http://localhost:2380,b=http://localhost:2380",
        "default=http://localhost:2380,default=http://localhost:2380",
    ],
)
def test_duplicate_urls_in_the_initial_cluster_are_refused(cluster: str) -> None:
    assert error_of("--initial-cluster", cluster).endswith("has duplicate url")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("default", "'default' is not of the form name=url"),
        ("=http://a:1", "'=http://a:1' has an empty member name"),
        ("", "the member list is empty"),
        ("default=foo", "URL scheme must be http or https: foo"),
    ],
)
def test_malformed_initial_cluster_is_refused(value: str, message: str) -> None:
    assert error_of("--initial-cluster", value) == (
        f'invalid value "{value}" for flag --initial-cluster: {message}'
    )


def test_initial_cluster_round_trips_through_its_text_form() -> None:
    cluster = parse_initial_cluster(THREE)
    assert format_initial_cluster(cluster) == THREE


def test_election_timeout_must_be_at_least_five_heartbeats() -> None:
    assert error_of("--heartbeat-interval", "300") == (
        "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[300ms]"
    )
    assert parse("--heartbeat-interval", "200").election_ticks == 5
    assert "should be at least as 5 times" in error_of("--heartbeat-interval", "201")


def test_election_timeout_is_at_most_50_seconds() -> None:
    assert error_of("--election-timeout", "50001", "--heartbeat-interval", "10000") == (
        "--election-timeout[50001ms] is too long, and should be set less than 50000ms"
    )
    assert parse("--election-timeout", "50000", "--heartbeat-interval", "10000").election_ticks == 5


def test_timing_must_be_positive() -> None:
    assert error_of("--heartbeat-interval", "0") == ("--heartbeat-interval must be >0 (set to 0ms)")
    assert error_of("--election-timeout", "0") == "--election-timeout must be >0 (set to 0ms)"


@pytest.mark.parametrize("value", ["abc", "1e2", " 100", "1.5", "0x64", ""])
def test_numbers_must_be_integers(value: str) -> None:
    assert error_of("--snapshot-count", value) == (
        f'invalid value "{value}" for flag --snapshot-count: not an integer'
    )


def test_sizes_must_not_be_negative() -> None:
    assert error_of("--quota-backend-bytes", "-1") == (
        "--quota-backend-bytes must not be negative (set to -1)"
    )
    assert error_of("--max-txn-ops", "-1") == "--max-txn-ops must not be negative (set to -1)"
    assert error_of("--max-request-bytes", "0") == "--max-request-bytes must be >0 (set to 0)"


def test_auto_compaction_mode_must_be_known() -> None:
    assert error_of("--auto-compaction-mode", "foo") == (
        'invalid value "foo" for flag --auto-compaction-mode: must be one of periodic, revision'
    )


@pytest.mark.parametrize(
    ("retention", "seconds"),
    [
        ("0", 0.0),
        ("1", 3600.0),
        ("24", 86400.0),
        ("30m", 1800.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("90s", 90.0),
        ("500ms", 0.5),
    ],
)
def test_periodic_retention_is_hours_or_a_duration(retention: str, seconds: float) -> None:
    config = parse("--auto-compaction-retention", retention)
    assert config.periodic_compaction_seconds == pytest.approx(seconds)
    assert config.revision_compaction_retain == 0


@pytest.mark.parametrize("retention", ["foo", "-1", "1.5", "1d", "h", "1h-30m"])
def test_bad_periodic_retention_is_refused(retention: str) -> None:
    assert error_of("--auto-compaction-retention", retention) == (
        f'--auto-compaction-retention "{retention}" must be a number of hours or a duration '
        'such as "30m" or "1h30m"'
    )


def test_revision_retention_must_be_a_count() -> None:
    assert error_of("--auto-compaction-mode", "revision", "--auto-compaction-retention", "1h") == (
        '--auto-compaction-retention "1h" must be a non-negative number of revisions when '
        "--auto-compaction-mode is revision"
    )


def test_go_duration_grammar() -> None:
    assert parse_duration_seconds("2h45m0.5s") == pytest.approx(9900.5)
    assert parse_duration_seconds("1us") == pytest.approx(1e-6)
    with pytest.raises(ConfigError):
        parse_duration_seconds("")


def test_listen_client_urls_given_without_advertise_client_urls_is_refused() -> None:
    message = "--advertise-client-urls is required when --listen-client-urls is set explicitly"
    assert error_of("--listen-client-urls", "http://127.0.0.1:2379").startswith(message)
    assert error_of(ETCD_LISTEN_CLIENT_URLS="http://127.0.0.1:2379").startswith(message)
    parse(
        "--listen-client-urls=http://0.0.0.0:2379",
        "--advertise-client-urls=http://10.0.0.1:2379",
    )


def test_log_level_must_be_one_of_etcds() -> None:
    assert error_of("--log-level", "verbose") == (
        'invalid value "verbose" for flag --log-level: '
        "must be one of debug, info, warn, error, panic, fatal"
    )


def test_booleans_take_go_spellings() -> None:
    assert parse("--enable-v2").enable_v2 is True
    assert parse("--enable-v2=false").enable_v2 is False
    assert parse("--strict-reconfig-check=F").strict_reconfig_check is False
    assert error_of("--enable-v2=yes") == (
        'invalid value "yes" for flag --enable-v2: not a boolean (use true or false)'
    )


def test_empty_name_is_refused() -> None:
    assert error_of("--name", "") == "--name must not be empty"


def test_the_config_checks_itself_when_built_directly() -> None:
    config = ServerConfig(
        name="n1",
        initial_advertise_peer_urls=["http://127.0.0.1:2380"],
        initial_cluster={"n1": ["http://127.0.0.1:2380"], "n2": ["http://127.0.0.1:2381"]},
    )
    assert config.initial_cluster["n2"] == urls("http://127.0.0.1:2381")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "n2"  # type: ignore[misc]
    with pytest.raises(ConfigError, match="should be at least as 5 times"):
        ServerConfig(heartbeat_interval_ms=500)
    with pytest.raises(ConfigError, match='must be "new" or "existing"'):
        ServerConfig(initial_cluster_state="old")
    with pytest.raises(ConfigError, match='unknown auto-compaction-mode "daily"'):
        ServerConfig(auto_compaction_mode="daily")
    with pytest.raises(ConfigError, match='unknown --log-level "loud"'):
        ServerConfig(log_level="loud")
    with pytest.raises(ConfigError, match="--listen-peer-urls must list at least one URL"):
        ServerConfig(listen_peer_urls=())


# --- the command ------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse("--version")
    assert caught.value.code == 0
    assert capsys.readouterr().out == "raftkv Version: 0.1.0\netcd API compatibility: 3.4\n"


def test_help_lists_every_flag_with_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse("--help")
    assert caught.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in FLAGS:
        assert f"--{flag.name}" in text
        assert flag.env in text


def run_server(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    return subprocess.run(
        [sys.executable, "-m", "raftkv.cli.server", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bad_flag_exits_2_before_touching_the_data_dir(tmp_path: Path) -> None:
    result = run_server("--name", "infra1", "--bad-flag", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("raftkv: error: unrecognized arguments: --bad-flag\n")
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_an_inconsistent_config_exits_2_before_touching_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "member"
    result = run_server("--data-dir", str(data_dir), "--heartbeat-interval", "300", cwd=tmp_path)
    assert result.returncode == 2
    assert "raftkv: error: --election-timeout[1000ms] should be at least" in result.stderr
    assert not data_dir.exists()


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_root_logger")
def test_main_logs_and_hands_the_config_to_the_api_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    received: list[ServerConfig] = []

    def run(config: ServerConfig) -> int:
        received.append(config)
        return 7

    monkeypatch.setitem(sys.modules, "raftkv.api.server", types.SimpleNamespace(run=run))
    monkeypatch.setenv("ETCD_UNKNOWN_THING", "1")
    monkeypatch.delenv("ETCD_NAME", raising=False)
    assert server.main(["--name", "infra9", "--log-level", "debug"]) == 7
    assert [config.name for config in received] == ["infra9"]
    err = capsys.readouterr().err
    assert '"msg":"unrecognized environment variable ETCD_UNKNOWN_THING=1"' in err
    assert '"msg":"starting raftkv"' in err
    assert '"name":"infra9"' in err


def test_main_reports_config_errors_without_starting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "raftkv.api.server", None)  # importing it would fail
    assert server.main(["--initial-cluster-state", "old"]) == 2
    assert capsys.readouterr().err.startswith(
        'raftkv: error: invalid value "old" for flag --initial-cluster-state'
    )
