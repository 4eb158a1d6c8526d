"""The member's validated configuration: what `raftkv` was started with, in etcd's terms.

`ServerConfig` is the one object every layer receives. It is frozen and checks itself when it is
built, so a config that exists is a config that is consistent: the local name is in the initial
cluster, its peer URLs match that entry, the election timeout fits the heartbeat, and so on. The
command line (`raftkv.cli.flags`) only turns text into values; every rule that can be stated about
the values themselves lives here, so tests and the operator that build a config directly get the
same checks and the same messages. Messages name etcd's flags and follow etcd 3.4's wording where
etcd has one, because that is what operators search for.

Two defaults depend on other fields, as in etcd: an empty `data_dir` becomes `"<name>.raftkv"`
(etcd: `<name>.etcd`) and an empty `initial_cluster` becomes `{name: initial_advertise_peer_urls}`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from raftkv.auth import (
    DEFAULT_COST,
    DEFAULT_SIMPLE_TTL,
    MAX_COST,
    MIN_COST,
    TokenConfigError,
    TokenProvider,
    TokenSpec,
)
from raftkv.node.tlsconfig import (
    DEFAULT_TLS_MIN_VERSION,
    TLSConfigError,
    TLSSide,
    check_min_version,
    grpc_cipher_env,
    openssl_cipher_suites,
)

DEFAULT_NAME = "default"
DEFAULT_CLIENT_URL = "http://localhost:2379"
DEFAULT_PEER_URL = "http://localhost:2380"
DEFAULT_CLUSTER_TOKEN = "etcd-cluster"
DEFAULT_HEARTBEAT_INTERVAL_MS = 100
DEFAULT_ELECTION_TIMEOUT_MS = 1000
MAX_ELECTION_TIMEOUT_MS = 50_000
DEFAULT_SNAPSHOT_COUNT = 100_000
DEFAULT_QUOTA_BACKEND_BYTES = 2 * 1024**3
DEFAULT_MAX_REQUEST_BYTES = 1_572_864
DEFAULT_MAX_TXN_OPS = 128
# etcd's default for --max-concurrent-streams (math.MaxUint32): no practical limit.
MAX_CONCURRENT_STREAMS = 2**32 - 1
DEFAULT_AUTH_TOKEN = "simple"
DEFAULT_AUTH_TOKEN_TTL = int(DEFAULT_SIMPLE_TTL)
DEFAULT_BCRYPT_COST = DEFAULT_COST

CLUSTER_STATES = ("new", "existing")
COMPACTION_MODES = ("periodic", "revision")
LOG_LEVELS = ("debug", "info", "warn", "error", "panic", "fatal")
URL_SCHEMES = ("http", "https")

_INTEGER = re.compile(r"[0-9]+")
# Go's time.ParseDuration grammar, unsigned: one or more <decimal><unit> terms.
_DURATION_TERM = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


class ConfigError(ValueError):
    """The configuration is invalid; the message is meant for the person who wrote it."""


@dataclass(frozen=True)
class URL:
    """A listen or advertise URL: scheme, host and port, nothing else (as etcd requires)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> URL:
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as error:
            raise ConfigError(f"invalid URL {text!r}: {error}") from None
        scheme = parts.scheme.lower()
        if scheme in ("unix", "unixs"):
            raise ConfigError(f"unix socket URLs are not supported by raftkv: {text}")
        if scheme not in URL_SCHEMES:
            raise ConfigError(f"URL scheme must be http or https: {text}")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"URL must not contain user information: {text}")
        if not parts.hostname or port is None:
            raise ConfigError(f'URL address does not have the form "host:port": {text}')
        if parts.path not in ("", "/"):
            raise ConfigError(f"URL must not contain a path: {text}")
        if parts.query or parts.fragment:
            raise ConfigError(f"URL must not contain a query or fragment: {text}")
        return cls(scheme=scheme, host=parts.hostname, port=port)

    @property
    def address(self) -> str:
        """`host:port` as a socket library or gRPC `add_insecure_port` wants it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}"


def parse_urls(text: str, *, allow_empty: bool = False) -> tuple[URL, ...]:
    """Parse etcd's comma-separated URL list (`http://a:2379,http://b:2379`)."""
    if not text.strip():
        if allow_empty:
            return ()
        raise ConfigError("the URL list is empty")
    items = [item.strip() for item in text.split(",")]
    if "" in items:
        raise ConfigError(f"empty URL in the list {text!r}")
    return tuple(URL.parse(item) for item in items)


def parse_initial_cluster(text: str) -> dict[str, tuple[URL, ...]]:
    """Parse `name=url,name=url`; a name given twice lists several peer URLs of one member."""
    cluster: dict[str, tuple[URL, ...]] = {}
    if not text.strip():
        return cluster
    for item in text.split(","):
        name, sep, url = item.strip().partition("=")
        if not sep:
            raise ConfigError(f"{item.strip()!r} is not of the form name=url")
        if not name:
            raise ConfigError(f"{item.strip()!r} has an empty member name")
        cluster[name] = (*cluster.get(name, ()), URL.parse(url))
    return cluster


def format_initial_cluster(cluster: Mapping[str, Iterable[URL | str]]) -> str:
    """The inverse of `parse_initial_cluster`: the flag value for a member list."""
    return ",".join(f"{name}={url}" for name, urls in cluster.items() for url in urls)


def parse_duration_seconds(text: str) -> float:
    """Go's `time.ParseDuration` for non-negative values ("1h30m", "5m", "300ms")."""
    position = 0
    total = 0.0
    while position < len(text):
        match = _DURATION_TERM.match(text, position)
        if match is None:
            break
        total += float(match.group(1)) * _DURATION_SECONDS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(text):
        raise ConfigError(f"invalid duration {text!r}")
    return total


def _parse_retention(mode: str, retention: str) -> float | int:
    """Seconds for periodic mode, a revision count for revision mode; 0 disables compaction."""
    if _INTEGER.fullmatch(retention):
        return int(retention) * 3600 if mode == "periodic" else int(retention)
    if mode == "revision":
        raise ConfigError(
            f'--auto-compaction-retention "{retention}" must be a non-negative number of '
            "revisions when --auto-compaction-mode is revision"
        )
    try:
        return parse_duration_seconds(retention)
    except ConfigError:
        raise ConfigError(
            f'--auto-compaction-retention "{retention}" must be a number of hours or a '
            'duration such as "30m" or "1h30m"'
        ) from None


def _urls(value: Iterable[URL | str]) -> tuple[URL, ...]:
    return tuple(url if isinstance(url, URL) else URL.parse(url) for url in value)


def _default_client_urls() -> tuple[URL, ...]:
    return (URL.parse(DEFAULT_CLIENT_URL),)


def _default_peer_urls() -> tuple[URL, ...]:
    return (URL.parse(DEFAULT_PEER_URL),)


def _joined(urls: Iterable[URL]) -> str:
    return ",".join(sorted(str(url) for url in urls))


@dataclass(frozen=True)
class ServerConfig:
    """How this member runs. Durations are milliseconds, sizes bytes, as in etcd's flags.

    URL fields accept strings or `URL`s and always hold a tuple of `URL`s once built.
    """

    name: str = DEFAULT_NAME
    # "" means "<name>.raftkv" in the current directory.
    data_dir: str = ""
    listen_client_urls: tuple[URL, ...] = field(default_factory=_default_client_urls)
    advertise_client_urls: tuple[URL, ...] = field(default_factory=_default_client_urls)
    listen_peer_urls: tuple[URL, ...] = field(default_factory=_default_peer_urls)
    initial_advertise_peer_urls: tuple[URL, ...] = field(default_factory=_default_peer_urls)
    # Member name -> its peer URLs; empty means {name: initial_advertise_peer_urls}.
    initial_cluster: Mapping[str, tuple[URL, ...]] = field(default_factory=dict)
    initial_cluster_state: str = "new"
    initial_cluster_token: str = DEFAULT_CLUSTER_TOKEN
    heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS
    election_timeout_ms: int = DEFAULT_ELECTION_TIMEOUT_MS
    # 0 means the default, as in etcd.
    snapshot_count: int = DEFAULT_SNAPSHOT_COUNT
    # 0 means DEFAULT_QUOTA_BACKEND_BYTES; see `effective_quota_backend_bytes`.
    quota_backend_bytes: int = 0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_txn_ops: int = DEFAULT_MAX_TXN_OPS
    # gRPC streams one client connection may have open at once.
    max_concurrent_streams: int = MAX_CONCURRENT_STREAMS
    auto_compaction_mode: str = "periodic"
    # etcd's text form: "0" is off; a bare number is hours (periodic) or revisions (revision).
    auto_compaction_retention: str = "0"
    listen_metrics_urls: tuple[URL, ...] = ()
    log_level: str = "info"
    enable_v2: bool = False
    strict_reconfig_check: bool = True
    # How often the leader compares the members' keyspace hashes; 0 turns the check off.
    corrupt_check_time_ms: int = 0
    # "simple", or "jwt,sign-method=...,priv-key=...,pub-key=...,ttl=..." (etcd's --auth-token).
    auth_token: str = DEFAULT_AUTH_TOKEN
    # Seconds a simple token lives after its last use.
    auth_token_ttl: int = DEFAULT_AUTH_TOKEN_TTL
    bcrypt_cost: int = DEFAULT_BCRYPT_COST
    # TLS on client URLs (https://); see `client_tls` and `raftkv.node.tlsconfig`.
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    auto_tls: bool = False
    # TLS between members (https:// peer URLs).
    peer_cert_file: str = ""
    peer_key_file: str = ""
    peer_trusted_ca_file: str = ""
    peer_client_cert_auth: bool = False
    peer_auto_tls: bool = False
    # Go's names (etcd's --cipher-suites); empty means the TLS library's defaults.
    cipher_suites: tuple[str, ...] = ()
    tls_min_version: str = DEFAULT_TLS_MIN_VERSION

    def __post_init__(self) -> None:
        def put(attribute: str, value: object) -> None:
            object.__setattr__(self, attribute, value)

        for attribute in (
            "listen_client_urls",
            "advertise_client_urls",
            "listen_peer_urls",
            "initial_advertise_peer_urls",
            "listen_metrics_urls",
        ):
            put(attribute, _urls(getattr(self, attribute)))
        if not self.data_dir:
            put("data_dir", f"{self.name}.raftkv")
        if self.initial_cluster:
            cluster = {name: _urls(urls) for name, urls in self.initial_cluster.items()}
        else:
            cluster = {self.name: self.initial_advertise_peer_urls}
        put("initial_cluster", cluster)
        if self.snapshot_count == 0:
            put("snapshot_count", DEFAULT_SNAPSHOT_COUNT)
        self._validate()

    def _validate(self) -> None:
        if not self.name:
            raise ConfigError("--name must not be empty")
        for flag, urls in (
            ("--listen-client-urls", self.listen_client_urls),
            ("--advertise-client-urls", self.advertise_client_urls),
            ("--listen-peer-urls", self.listen_peer_urls),
            ("--initial-advertise-peer-urls", self.initial_advertise_peer_urls),
        ):
            if not urls:
                raise ConfigError(f"{flag} must list at least one URL")
        self._validate_cluster()
        self._validate_timing()
        for flag, number in (
            ("--snapshot-count", self.snapshot_count),
            ("--quota-backend-bytes", self.quota_backend_bytes),
            ("--max-txn-ops", self.max_txn_ops),
            ("--experimental-corrupt-check-time", self.corrupt_check_time_ms),
        ):
            if number < 0:
                raise ConfigError(f"{flag} must not be negative (set to {number})")
        if not 0 <= self.max_concurrent_streams <= MAX_CONCURRENT_STREAMS:
            raise ConfigError(
                f"--max-concurrent-streams must be a uint32 (set to {self.max_concurrent_streams})"
            )
        if self.max_request_bytes <= 0:
            raise ConfigError(f"--max-request-bytes must be >0 (set to {self.max_request_bytes})")
        if self.auto_compaction_mode not in COMPACTION_MODES:
            raise ConfigError(f'unknown auto-compaction-mode "{self.auto_compaction_mode}"')
        _parse_retention(self.auto_compaction_mode, self.auto_compaction_retention)
        self._validate_auth()
        self._validate_tls()
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(
                f'unknown --log-level "{self.log_level}" (use one of {", ".join(LOG_LEVELS)})'
            )

    def _validate_auth(self) -> None:
        if not MIN_COST <= self.bcrypt_cost <= MAX_COST:
            raise ConfigError(
                f"invalid --bcrypt-cost {self.bcrypt_cost} (must be between {MIN_COST} and "
                f"{MAX_COST})"
            )
        if self.auth_token_ttl < 0:
            raise ConfigError(
                f"--auth-token-ttl must not be negative (set to {self.auth_token_ttl})"
            )
        self.token_provider()  # reads the jwt keys, so a bad one stops the start here

    def _validate_tls(self) -> None:
        try:
            openssl_cipher_suites(self.cipher_suites)
            check_min_version(self.tls_min_version, self.cipher_suites)
            # Certificates matter only where a URL is https (etcd ignores them elsewhere).
            for url in self.listen_client_urls:
                if url.scheme == "https" and not self.client_tls.enabled:
                    raise TLSConfigError(
                        "TLS key/cert (--cert-file, --key-file) must be provided for client url "
                        f"{url} with HTTPS scheme"
                    )
                if url.scheme == "https":
                    self.client_tls.check("")
            for url in self.listen_peer_urls:
                if url.scheme == "https" and not self.peer_tls.enabled:
                    raise TLSConfigError(
                        f"cannot listen on TLS for {url.address}: KeyFile and CertFile are not "
                        "presented"
                    )
                if url.scheme == "https":
                    self.peer_tls.check("peer-")
        except TLSConfigError as error:
            raise ConfigError(str(error)) from None

    @property
    def client_tls(self) -> TLSSide:
        """The client URLs' TLS flags."""
        return TLSSide(
            self.cert_file,
            self.key_file,
            self.trusted_ca_file,
            self.client_cert_auth,
            self.auto_tls,
        )

    @property
    def peer_tls(self) -> TLSSide:
        """The peer URLs' TLS flags."""
        return TLSSide(
            self.peer_cert_file,
            self.peer_key_file,
            self.peer_trusted_ca_file,
            self.peer_client_cert_auth,
            self.peer_auto_tls,
        )

    @property
    def openssl_cipher_suites(self) -> tuple[str, ...]:
        """--cipher-suites in OpenSSL's names (empty: the library's defaults)."""
        return openssl_cipher_suites(self.cipher_suites)

    @property
    def grpc_cipher_env(self) -> str | None:
        """What GRPC_SSL_CIPHER_SUITES must hold before gRPC loads (None: leave it alone)."""
        return grpc_cipher_env(self.cipher_suites, self.tls_min_version)

    def token_provider(self) -> TokenProvider:
        """A new token provider for `--auth-token`; raises ConfigError."""
        try:
            spec = TokenSpec.parse(self.auth_token, parse_duration_seconds)
            return spec.provider(simple_ttl=self.auth_token_ttl)
        except TokenConfigError as error:
            raise ConfigError(f'invalid --auth-token "{self.auth_token}": {error}') from None

    def _validate_cluster(self) -> None:
        if self.initial_cluster_state not in CLUSTER_STATES:
            raise ConfigError(
                f'--initial-cluster-state must be "new" or "existing" '
                f'(set to "{self.initial_cluster_state}")'
            )
        seen: set[URL] = set()
        for urls in self.initial_cluster.values():
            if seen.intersection(urls) or len(set(urls)) != len(urls):
                pairs = sorted(f"{n}={u}" for n, us in self.initial_cluster.items() for u in us)
                raise ConfigError(f"initial cluster {','.join(pairs)} has duplicate url")
            seen.update(urls)
        own = self.initial_cluster.get(self.name)
        if own is None:
            raise ConfigError(
                f'couldn\'t find local name "{self.name}" in the initial cluster configuration'
            )
        advertised, listed = _joined(self.initial_advertise_peer_urls), _joined(own)
        if advertised != listed:
            raise ConfigError(
                f"--initial-cluster has {format_initial_cluster({self.name: own})} but missing "
                f"from --initial-advertise-peer-urls={advertised} "
                f'("{advertised}" != "{listed}")'
            )

    def _validate_timing(self) -> None:
        heartbeat, election = self.heartbeat_interval_ms, self.election_timeout_ms
        if heartbeat <= 0:
            raise ConfigError(f"--heartbeat-interval must be >0 (set to {heartbeat}ms)")
        if election <= 0:
            raise ConfigError(f"--election-timeout must be >0 (set to {election}ms)")
        if 5 * heartbeat > election:
            raise ConfigError(
                f"--election-timeout[{election}ms] should be at least as 5 times as "
                f"--heartbeat-interval[{heartbeat}ms]"
            )
        if election > MAX_ELECTION_TIMEOUT_MS:
            raise ConfigError(
                f"--election-timeout[{election}ms] is too long, and should be set less than "
                f"{MAX_ELECTION_TIMEOUT_MS}ms"
            )

    @property
    def tick_seconds(self) -> float:
        """One Raft tick lasts one heartbeat interval, as in etcd."""
        return self.heartbeat_interval_ms / 1000

    @property
    def heartbeat_ticks(self) -> int:
        """Leaders send heartbeats every tick."""
        return 1

    @property
    def election_ticks(self) -> int:
        return self.election_timeout_ms // self.heartbeat_interval_ms

    @property
    def effective_quota_backend_bytes(self) -> int:
        return self.quota_backend_bytes or DEFAULT_QUOTA_BACKEND_BYTES

    @property
    def periodic_compaction_seconds(self) -> float:
        """Keep this much history in periodic mode; 0.0 when periodic compaction is off."""
        if self.auto_compaction_mode != "periodic":
            return 0.0
        return float(_parse_retention("periodic", self.auto_compaction_retention))

    @property
    def revision_compaction_retain(self) -> int:
        """Keep this many revisions in revision mode; 0 when revision compaction is off."""
        if self.auto_compaction_mode != "revision":
            return 0
        return int(_parse_retention("revision", self.auto_compaction_retention))
