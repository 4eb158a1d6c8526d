"""Connections to the members, failover, safe retries and auth tokens: the client's plumbing.

One gRPC channel per endpoint, created lazily. Every call picks an endpoint round-robin among the
healthy ones (which spreads load) and makes sure its channel is connected before sending; an
endpoint that refused or dropped a call sits out a short cooldown while the others serve.

Retries follow etcd's client rules, because a blind retry of a write can apply it twice:

- `Retry.IMMUTABLE` calls (reads, read-only txns, MemberList, Status, LeaseTimeToLive, ...) are
  retried on another endpoint for any UNAVAILABLE status until their deadline.
- `Retry.MUTABLE` calls are retried only when the request provably never left the client: the
  connection could not be established before sending, or gRPC itself reports it could not
  connect. A mutation cut off after sending raises `UnavailableError`; it may or may not have
  been applied, and only the caller can tell which is acceptable.
- Any call refused for a stale or missing auth token ("invalid auth token", "revision of auth
  store is old", "user name is empty") is retried once with a fresh token: the server rejected it
  before applying it.

Deadlines are per call and cover every attempt; `math.inf` means no deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import math
import socket
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from cryptography import x509

from raftkv.client import errors
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.pb.v3electionpb import v3election_pb2_grpc
from raftkv.pb.v3lockpb import v3lock_pb2_grpc

__all__ = ["Endpoint", "Retry", "Stubs", "TLSConfig", "Transport", "parse_endpoints"]

Resp = TypeVar("Resp")
Metadata = tuple[tuple[str, str], ...]

_CONNECT_FAILED = "failed to connect to all addresses"
_REFRESH_TOKEN_ERRORS = (
    errors.InvalidAuthTokenError,
    errors.AuthOldRevisionError,
    errors.UserEmptyError,
)


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """PEM files for TLS. `ca_file` verifies the server (system roots when None); `cert_file` and
    `key_file` are the client certificate for mutual TLS; `server_name` overrides the host name
    checked against the server certificate.

    `insecure_skip_verify` (etcdctl's `--insecure-skip-tls-verify`) accepts the certificate the
    server presents. gRPC's Python API always verifies, so the client fetches that certificate
    once per endpoint (a short blocking TLS handshake when the channel is created) and trusts
    exactly it, under the first name it is issued for. That covers self-signed certificates
    (`--auto-tls`); a leaf issued by an unknown CA still fails, as the CA is not presented.
    """

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False

    def credentials(self, roots: bytes | None = None) -> grpc.ChannelCredentials:
        """Channel credentials; `roots` replaces `ca_file` (a pinned certificate)."""

        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        return grpc.ssl_channel_credentials(
            root_certificates=roots if roots is not None else read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )

    def channel(
        self, target: str, options: Sequence[tuple[str, Any]], timeout: float
    ) -> grpc.aio.Channel:
        """A secure channel to "host:port" with these settings."""
        options = list(options)
        roots = None
        name = self.server_name
        if self.insecure_skip_verify:
            roots, names = _presented_certificate(target, timeout)
            name = name or (names[0] if names else None)
        if name:
            options.append(("grpc.ssl_target_name_override", name))
        return grpc.aio.secure_channel(target, self.credentials(roots), options=options)


def _presented_certificate(target: str, timeout: float) -> tuple[bytes, list[str]]:
    """The PEM certificate the server at `target` presents, and the names it is issued for."""
    host, _, port = target.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock,
            context.wrap_socket(sock) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError):
        der = None
    if der is None:
        # Unreachable now: verify against nothing, so the channel fails like any dead endpoint.
        return b"", []
    certificate = x509.load_der_x509_certificate(der)
    names: list[str] = []
    with contextlib.suppress(x509.ExtensionNotFound):
        alt = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += alt.get_values_for_type(x509.DNSName)
        names += [str(ip) for ip in alt.get_values_for_type(x509.IPAddress)]
    common = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    names += [str(attribute.value) for attribute in common]
    return ssl.DER_cert_to_PEM_cert(der).encode(), names


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A member's client address: `target` is "host:port"; `secure` selects TLS."""

    target: str
    secure: bool

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.target}"

    def __str__(self) -> str:
        return self.url


def parse_endpoint(spec: str, *, tls: bool = False) -> Endpoint:
    """ "http://h:p" (plain), "https://h:p" (TLS) or "h:p" (TLS exactly when `tls` is set)."""
    spec = spec.strip().rstrip("/")
    scheme, sep, rest = spec.partition("://")
    if not sep:
        scheme, rest = ("https" if tls else "http"), spec
    if scheme not in ("http", "https"):
        raise ValueError(f"endpoint {spec!r}: unsupported scheme {scheme!r}")
    if not rest or "/" in rest:
        raise ValueError(f"endpoint {spec!r} is not host:port")
    return Endpoint(rest, scheme == "https")


def parse_endpoints(spec: str | Sequence[str], *, tls: bool = False) -> tuple[Endpoint, ...]:
    """Endpoints from a list or a comma-separated string, duplicates dropped, order kept."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    endpoints = tuple(dict.fromkeys(parse_endpoint(p, tls=tls) for p in parts if p.strip()))
    if not endpoints:
        raise ValueError("at least one endpoint is needed")
    return endpoints


class Stubs:
    """The gRPC stubs of every etcd service on one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.kv = rpc_pb2_grpc.KVStub(channel)
        self.watch = rpc_pb2_grpc.WatchStub(channel)
        self.lease = rpc_pb2_grpc.LeaseStub(channel)
        self.cluster = rpc_pb2_grpc.ClusterStub(channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
        self.auth = rpc_pb2_grpc.AuthStub(channel)
        self.lock = v3lock_pb2_grpc.LockStub(channel)
        self.election = v3election_pb2_grpc.ElectionStub(channel)


class Background(Protocol):
    """A live object with a background task on this transport (a watch, a kept-alive lease)."""

    async def shutdown(self) -> None:
        """Stop the background task because the client is closing."""


class Retry(enum.Enum):
    """Whether a call may be repeated after an UNAVAILABLE failure (see the module docstring)."""

    IMMUTABLE = "immutable"
    MUTABLE = "mutable"


# A unary method of one of the stubs, chosen once the endpoint is known: `lambda s: s.kv.Range`.
UnaryMethod = Callable[[Stubs], Callable[..., Awaitable[Any]]]


def never_sent(error: grpc.aio.AioRpcError) -> bool:
    """True when gRPC failed the call because it could not connect, i.e. sent nothing."""
    return error.code() == grpc.StatusCode.UNAVAILABLE and (error.details() or "").startswith(
        _CONNECT_FAILED
    )


class Transport:
    """Channels, endpoint choice, retries and the auth token, shared by every client feature."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = 5.0,
        dial_timeout: float = 2.0,
        username: str | None = None,
        password: str | None = None,
        tls: TLSConfig | None = None,
        keepalive_time: float = 30.0,
        keepalive_timeout: float = 10.0,
        failure_cooldown: float = 1.0,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.endpoints = parse_endpoints(endpoints, tls=tls is not None)
        self.timeout = timeout
        self.dial_timeout = dial_timeout
        self._credentials = (
            (username, password) if username is not None and password is not None else None
        )
        self._tls = tls or TLSConfig()
        self._options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", -1),
            # The server enforces its own request limit and answers "request is too large".
            ("grpc.max_send_message_length", -1),
            ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        self._cooldown = failure_cooldown
        self._channels: dict[Endpoint, grpc.aio.Channel] = {}
        self._stubs: dict[Endpoint, Stubs] = {}
        self._down_until: dict[Endpoint, float] = {}
        self._next = itertools.count()
        self._token: str | None = None
        self._auth_lock: asyncio.Lock | None = None
        self._closed = False
        self._background: weakref.WeakSet[Background] = weakref.WeakSet()

    # -- channels and endpoint choice ------------------------------------------------------------

    def _channel(self, endpoint: Endpoint) -> grpc.aio.Channel:
        if self._closed:
            raise errors.EtcdError("client is closed", code=grpc.StatusCode.CANCELLED)
        channel = self._channels.get(endpoint)
        if channel is None:
            if endpoint.secure:
                channel = self._tls.channel(endpoint.target, self._options, self.dial_timeout)
            else:
                channel = grpc.aio.insecure_channel(endpoint.target, options=self._options)
            self._channels[endpoint] = channel
            self._stubs[endpoint] = Stubs(channel)
        return channel

    def stubs(self, endpoint: Endpoint) -> Stubs:
        self._channel(endpoint)
        return self._stubs[endpoint]

    def pick(self) -> Endpoint:
        """The next endpoint round-robin that is neither cooling down nor known unreachable.

        When every endpoint looks unhealthy, the one whose cooldown ends first is tried anyway.
        """
        now = time.monotonic()
        n = len(self.endpoints)
        start = next(self._next)
        for i in range(n):
            ep = self.endpoints[(start + i) % n]
            if self._down_until.get(ep, 0.0) > now:
                continue
            state = self._channel(ep).get_state(try_to_connect=True)
            if state is not grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                return ep
        return min(self.endpoints, key=lambda ep: self._down_until.get(ep, 0.0))

    def mark_failed(self, endpoint: Endpoint) -> None:
        self._down_until[endpoint] = time.monotonic() + self._cooldown

    def mark_ok(self, endpoint: Endpoint) -> None:
        self._down_until.pop(endpoint, None)

    async def connect(self, endpoint: Endpoint, budget: float) -> bool:
        """Wait up to `budget` seconds for `endpoint`'s channel to be ready.

        False as soon as the connection attempt fails (TRANSIENT_FAILURE), so the caller can
        move on instead of waiting out gRPC's reconnect backoff.
        """
        channel = self._channel(endpoint)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        state = channel.get_state(try_to_connect=True)
        while state is not grpc.ChannelConnectivity.READY:
            remaining = deadline - loop.time()
            if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE or remaining <= 0:
                return False
            try:
                await asyncio.wait_for(channel.wait_for_state_change(state), remaining)
            except TimeoutError:
                return False
            state = channel.get_state(try_to_connect=True)
        return True

    async def backoff(self, attempt: int, deadline: float) -> None:
        """Pause after each full round over the endpoints, growing up to one second."""
        rounds, rest = divmod(attempt, len(self.endpoints))
        if rest or not rounds:
            return
        pause = min(0.05 * 2 ** (rounds - 1), 1.0)
        await asyncio.sleep(max(min(pause, deadline - asyncio.get_running_loop().time()), 0.0))

    # -- auth ------------------------------------------------------------------------------------

    def metadata(self, *, require_leader: bool = False, token: str | None = None) -> Metadata:
        md: list[tuple[str, str]] = []
        token = token or self._token
        if token:
            md.append(("token", token))
        if require_leader:
            md.append(("hasleader", "true"))
        return tuple(md)

    @property
    def token(self) -> str | None:
        return self._token

    @property
    def has_credentials(self) -> bool:
        return self._credentials is not None

    async def authenticate(self, username: str, password: str, timeout: float | None = None) -> str:
        """A fresh token for `username` (does not change the token this client sends)."""
        resp = await self.unary(
            lambda s: s.auth.Authenticate,
            rpc_pb2.AuthenticateRequest(name=username, password=password),
            retry=Retry.IMMUTABLE,
            timeout=timeout,
            authenticated=False,
        )
        return str(resp.token)

    async def ensure_token(self) -> None:
        if self._credentials is not None and self._token is None:
            await self.refresh_token(None)

    async def refresh_token(self, stale: str | None) -> None:
        """Authenticate again unless another task already replaced the `stale` token."""
        if self._credentials is None:
            return
        if self._auth_lock is None:
            self._auth_lock = asyncio.Lock()
        async with self._auth_lock:
            if self._token == stale:
                self._token = await self.authenticate(*self._credentials)

    def wants_new_token(self, error: errors.EtcdError) -> bool:
        return self._credentials is not None and isinstance(error, _REFRESH_TOKEN_ERRORS)

    # -- calls -----------------------------------------------------------------------------------

    def deadline(self, timeout: float | None) -> float:
        """The loop-clock deadline of a call: None takes the client's default timeout."""
        budget = self.timeout if timeout is None else timeout
        return asyncio.get_running_loop().time() + budget

    @staticmethod
    def remaining(deadline: float) -> float:
        """Seconds left until a loop-clock `deadline` (never negative)."""
        return max(deadline - asyncio.get_running_loop().time(), 0.0)

    async def unary(
        self,
        method: UnaryMethod,
        request: Any,
        *,
        retry: Retry,
        timeout: float | None = None,
        endpoint: Endpoint | None = None,
        authenticated: bool = True,
    ) -> Any:
        """Send one unary request with failover and etcd's retry rules; return the response.

        With `endpoint` the call goes to that member only and is never moved elsewhere.
        """
        loop = asyncio.get_running_loop()
        deadline = self.deadline(timeout)
        refreshed = False
        attempt = 0
        last: errors.EtcdError | None = None
        if authenticated:
            await self.ensure_token()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise last or errors.TimeoutError()
            ep = endpoint or self.pick()
            if not await self.connect(ep, min(remaining, self.dial_timeout)):
                self.mark_failed(ep)
                last = errors.UnavailableError(f"{ep}: could not connect")
                if endpoint is not None:
                    raise last
                attempt += 1
                await self.backoff(attempt, deadline)
                continue
            token = self._token if authenticated else None
            try:
                return await method(self.stubs(ep))(
                    request,
                    timeout=None if math.isinf(remaining) else remaining,
                    metadata=self.metadata(token=token) if token else None,
                )
            except grpc.aio.AioRpcError as e:
                err = errors.from_rpc_error(e)
                if authenticated and not refreshed and self.wants_new_token(err):
                    refreshed = True
                    await self.refresh_token(token)
                    continue
                if err.code is not grpc.StatusCode.UNAVAILABLE:
                    raise err from None
                self.mark_failed(ep)
                retryable = retry is Retry.IMMUTABLE or never_sent(e)
                if endpoint is not None or not retryable:
                    raise err from None
                last = err
                attempt += 1
                await self.backoff(attempt, deadline)

    async def stream_endpoint(self, deadline: float) -> Endpoint:
        """A connected endpoint for a new stream (failover as for immutable calls)."""
        loop = asyncio.get_running_loop()
        await self.ensure_token()
        attempt = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise errors.UnavailableError("no endpoint could be connected for a stream")
            ep = self.pick()
            if await self.connect(ep, min(remaining, self.dial_timeout)):
                return ep
            self.mark_failed(ep)
            attempt += 1
            await self.backoff(attempt, deadline)

    def track(self, obj: Background) -> None:
        """Shut `obj` down when the transport closes (held weakly)."""
        self._background.add(obj)

    async def close(self) -> None:
        """Stop watches and keep-alives, then close every channel."""
        for obj in list(self._background):
            await obj.shutdown()
        self._closed = True
        channels, self._channels = self._channels, {}
        self._stubs.clear()
        for channel in channels.values():
            await channel.close()
