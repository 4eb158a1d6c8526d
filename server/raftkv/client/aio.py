"""`AsyncClient`: the asyncio client for raftkv and any etcd v3 server.

The class is deliberately flat and thin: each method builds one request (with the shared builders
of `ops`), sends it through the `Transport` with the retry class etcd's own client gives that RPC,
and turns the response into a frozen dataclass of `types`. Everything subtle lives elsewhere —
failover and retries in `transport`, resumable watches in `watch`, lease keep-alive in `lease` —
so this file reads as the list of what the client can do. Method names follow the RPCs, prefixed
by their service where a bare name would be ambiguous (`lease_grant`, `member_add`,
`user_add`, ...).

Timeouts: every call takes `timeout=` (seconds) covering all its attempts; None means the
client's default, except for calls that wait by nature — `lock`, `campaign` and `snapshot` — where
None means no deadline.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Protocol, Unpack

import grpc

from raftkv.client import errors
from raftkv.client.lease import Lease, keep_alive_once
from raftkv.client.ops import (
    DeleteOptions,
    KeyLike,
    PutOptions,
    RangeOptions,
    Txn,
    WatchOptions,
    delete_request,
    key_range,
    put_request,
    range_request,
    to_bytes,
)
from raftkv.client.transport import Endpoint, Retry, TLSConfig, Transport, parse_endpoint
from raftkv.client.types import (
    Alarm,
    AlarmType,
    AuthStatus,
    DeleteResult,
    GetResult,
    HashKVResult,
    Header,
    KeyValue,
    LeaderKey,
    LeaseGrantResult,
    LeaseKeepAliveResult,
    LeasesResult,
    LeaseTimeToLiveResult,
    LockResult,
    MemberAddResult,
    MemberListResult,
    Permission,
    PermissionType,
    PutResult,
    SnapshotResult,
    StatusResult,
    TxnResult,
)
from raftkv.client.watch import Watch
from raftkv.pb.authpb import auth_pb2
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.pb.v3electionpb import v3election_pb2
from raftkv.pb.v3lockpb import v3lock_pb2

__all__ = ["AsyncClient", "SupportsWrite"]

_IMMUTABLE = Retry.IMMUTABLE
_MUTABLE = Retry.MUTABLE


class SupportsWrite(Protocol):
    def write(self, data: bytes, /) -> object: ...


def _no_deadline(timeout: float | None) -> float:
    return math.inf if timeout is None else timeout


def _lease_id(lease: int | Lease) -> int:
    return lease.id if isinstance(lease, Lease) else lease


class AsyncClient:
    """An etcd v3 client for asyncio. Use it as `async with AsyncClient(...) as client:`.

    `endpoints` is a list or a comma-separated string of "host:port", "http://host:port" or
    "https://host:port". `timeout` is the default deadline per call, `dial_timeout` the longest
    wait for one endpoint's connection. With `username`/`password` the client authenticates and
    renews its token when the server rejects it. `tls` configures certificates (bare "host:port"
    endpoints then use TLS too).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = "127.0.0.1:2379",
        *,
        timeout: float = 5.0,
        dial_timeout: float = 2.0,
        username: str | None = None,
        password: str | None = None,
        tls: TLSConfig | None = None,
        keepalive_time: float = 30.0,
        keepalive_timeout: float = 10.0,
    ) -> None:
        self._t = Transport(
            endpoints,
            timeout=timeout,
            dial_timeout=dial_timeout,
            username=username,
            password=password,
            tls=tls,
            keepalive_time=keepalive_time,
            keepalive_timeout=keepalive_timeout,
        )

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(ep.url for ep in self._t.endpoints)

    @property
    def transport(self) -> Transport:
        """The connection layer, for code that builds its own streams (recipes, raftkvctl)."""
        return self._t

    async def close(self) -> None:
        await self._t.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        method: Callable[[Any], Callable[..., Awaitable[Any]]],
        request: Any,
        retry: Retry,
        timeout: float | None,
        endpoint: Endpoint | None = None,
    ) -> Any:
        return await self._t.unary(method, request, retry=retry, timeout=timeout, endpoint=endpoint)

    # -- KV --------------------------------------------------------------------------------------

    async def get(
        self, key: KeyLike, *, timeout: float | None = None, **options: Unpack[RangeOptions]
    ) -> GetResult:
        """Read one key, or a range with `prefix=True`, `range_end=` or `from_key=True`.

        Options as `ops.range_request`: revision, limit, sort_order, sort_target, serializable,
        keys_only, count_only, min/max_mod_revision, min/max_create_revision.
        """
        req = range_request(key, **options)
        resp = await self._call(lambda s: s.kv.Range, req, _IMMUTABLE, timeout)
        return GetResult.from_pb(resp)

    async def put(
        self,
        key: KeyLike,
        value: KeyLike = b"",
        *,
        timeout: float | None = None,
        **options: Unpack[PutOptions],
    ) -> PutResult:
        """Write `value` at `key`. Options: lease, prev_kv, ignore_value, ignore_lease."""
        req = put_request(key, value, **options)
        resp = await self._call(lambda s: s.kv.Put, req, _MUTABLE, timeout)
        return PutResult.from_pb(resp)

    async def delete(
        self, key: KeyLike, *, timeout: float | None = None, **options: Unpack[DeleteOptions]
    ) -> DeleteResult:
        """Delete one key or a range (prefix, range_end, from_key); `prev_kv` returns them."""
        req = delete_request(key, **options)
        resp = await self._call(lambda s: s.kv.DeleteRange, req, _MUTABLE, timeout)
        return DeleteResult.from_pb(resp)

    async def compact(
        self, revision: int, *, physical: bool = False, timeout: float | None = None
    ) -> Header:
        """Discard history before `revision`; `physical` waits until the backend is compacted."""
        req = rpc_pb2.CompactionRequest(revision=revision, physical=physical)
        resp = await self._call(lambda s: s.kv.Compact, req, _MUTABLE, timeout)
        return Header.from_pb(resp.header)

    def txn(self) -> Txn[Awaitable[TxnResult]]:
        """A transaction builder: `await client.txn().if_(...).then(...).else_(...).commit()`."""
        return Txn(lambda txn, timeout: self.commit(txn, timeout=timeout))

    async def commit(self, txn: Txn[Any], *, timeout: float | None = None) -> TxnResult:
        """Send a transaction built with `txn()` or `ops.txn()`. Read-only ones may be retried."""
        retry = _IMMUTABLE if txn.read_only else _MUTABLE
        resp = await self._call(lambda s: s.kv.Txn, txn.to_request(), retry, timeout)
        return TxnResult.from_pb(resp)

    # -- watch -----------------------------------------------------------------------------------

    def watch(self, key: KeyLike, **options: Unpack[WatchOptions]) -> Watch:
        """Watch a key or range: `async with client.watch(b"k", prefix=True) as w:`.

        Options: prefix / range_end / from_key select a range; `start_revision` 0 starts after
        the current revision, an older one replays history (`CompactedError` if compacted);
        `prev_kv` adds the previous key-value to events; `filters` drops PUT or DELETE events;
        `progress_notify` asks for periodic empty batches; `require_leader` (default True) ends
        streams on members without a leader. The watch resumes on another member after
        failures without losing or repeating events (see `raftkv.client.watch`).
        """
        k, end = key_range(
            key,
            prefix=options.get("prefix", False),
            range_end=options.get("range_end"),
            from_key=options.get("from_key", False),
        )
        create = rpc_pb2.WatchCreateRequest(
            key=k,
            range_end=end,
            start_revision=options.get("start_revision", 0),
            progress_notify=options.get("progress_notify", False),
            filters=[f.name for f in options.get("filters", ())],
            prev_kv=options.get("prev_kv", False),
            fragment=options.get("fragment", False),
        )
        return Watch(self._t, create, require_leader=options.get("require_leader", True))

    # -- lease -----------------------------------------------------------------------------------

    async def lease_grant(
        self, ttl: int, *, lease_id: int = 0, timeout: float | None = None
    ) -> LeaseGrantResult:
        """Grant a lease of `ttl` seconds (the server may raise it to its minimum)."""
        req = rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=lease_id)
        resp = await self._call(lambda s: s.lease.LeaseGrant, req, _MUTABLE, timeout)
        if resp.error:
            raise errors.LeaseError(resp.error)
        return LeaseGrantResult.from_pb(resp)

    async def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> Header:
        """Revoke a lease now, deleting its keys."""
        req = rpc_pb2.LeaseRevokeRequest(ID=lease_id)
        resp = await self._call(lambda s: s.lease.LeaseRevoke, req, _MUTABLE, timeout)
        return Header.from_pb(resp.header)

    async def lease_time_to_live(
        self, lease_id: int, *, keys: bool = False, timeout: float | None = None
    ) -> LeaseTimeToLiveResult:
        """Remaining and granted TTL (ttl -1: expired or unknown); `keys` lists attached keys."""
        req = rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys)
        resp = await self._call(lambda s: s.lease.LeaseTimeToLive, req, _IMMUTABLE, timeout)
        return LeaseTimeToLiveResult.from_pb(resp)

    async def lease_leases(self, *, timeout: float | None = None) -> LeasesResult:
        req = rpc_pb2.LeaseLeasesRequest()
        resp = await self._call(lambda s: s.lease.LeaseLeases, req, _IMMUTABLE, timeout)
        return LeasesResult.from_pb(resp)

    async def lease_keep_alive_once(
        self, lease_id: int, *, timeout: float | None = None
    ) -> LeaseKeepAliveResult:
        """Renew once; raises `LeaseNotFoundError` when the lease is gone."""
        return await keep_alive_once(self._t, lease_id, timeout)

    def lease(self, ttl: int, *, lease_id: int = 0, revoke_on_close: bool = True) -> Lease:
        """A lease granted on entry and kept alive until exit: `async with client.lease(10)`."""
        return Lease(self._t, ttl, lease_id=lease_id, revoke_on_close=revoke_on_close)

    def keep_alive(self, lease_id: int, *, revoke_on_close: bool = False) -> Lease:
        """Keep an existing lease alive (entry fails with `LeaseNotFoundError` if it is gone)."""
        return Lease(self._t, 0, lease_id=lease_id, grant=False, revoke_on_close=revoke_on_close)

    # -- cluster ---------------------------------------------------------------------------------

    async def member_list(self, *, timeout: float | None = None) -> MemberListResult:
        req = rpc_pb2.MemberListRequest()
        resp = await self._call(lambda s: s.cluster.MemberList, req, _IMMUTABLE, timeout)
        return MemberListResult.from_pb(resp)

    async def member_add(
        self, peer_urls: Sequence[str], *, is_learner: bool = False, timeout: float | None = None
    ) -> MemberAddResult:
        req = rpc_pb2.MemberAddRequest(peerURLs=list(peer_urls), isLearner=is_learner)
        resp = await self._call(lambda s: s.cluster.MemberAdd, req, _MUTABLE, timeout)
        return MemberAddResult.from_pb(resp)

    async def member_remove(
        self, member_id: int, *, timeout: float | None = None
    ) -> MemberListResult:
        req = rpc_pb2.MemberRemoveRequest(ID=member_id)
        resp = await self._call(lambda s: s.cluster.MemberRemove, req, _MUTABLE, timeout)
        return MemberListResult.from_pb(resp)

    async def member_update(
        self, member_id: int, peer_urls: Sequence[str], *, timeout: float | None = None
    ) -> MemberListResult:
        req = rpc_pb2.MemberUpdateRequest(ID=member_id, peerURLs=list(peer_urls))
        resp = await self._call(lambda s: s.cluster.MemberUpdate, req, _MUTABLE, timeout)
        return MemberListResult.from_pb(resp)

    async def member_promote(
        self, member_id: int, *, timeout: float | None = None
    ) -> MemberListResult:
        req = rpc_pb2.MemberPromoteRequest(ID=member_id)
        resp = await self._call(lambda s: s.cluster.MemberPromote, req, _MUTABLE, timeout)
        return MemberListResult.from_pb(resp)

    # -- maintenance -----------------------------------------------------------------------------

    def _endpoint(self, endpoint: str | None) -> Endpoint | None:
        if endpoint is None:
            return None
        return parse_endpoint(endpoint, tls=any(ep.secure for ep in self._t.endpoints))

    async def status(
        self, endpoint: str | None = None, *, timeout: float | None = None
    ) -> StatusResult:
        """The status of `endpoint` (any endpoint when None)."""
        req = rpc_pb2.StatusRequest()
        resp = await self._call(
            lambda s: s.maintenance.Status, req, _IMMUTABLE, timeout, self._endpoint(endpoint)
        )
        return StatusResult.from_pb(resp)

    async def _alarm(
        self,
        action: rpc_pb2.AlarmRequest.AlarmAction,
        member_id: int,
        alarm: AlarmType,
        retry: Retry,
        timeout: float | None,
    ) -> tuple[Alarm, ...]:
        req = rpc_pb2.AlarmRequest(action=action, memberID=member_id, alarm=alarm.name)
        resp = await self._call(lambda s: s.maintenance.Alarm, req, retry, timeout)
        return tuple(Alarm.from_pb(a) for a in resp.alarms)

    async def alarm_list(self, *, timeout: float | None = None) -> tuple[Alarm, ...]:
        get = rpc_pb2.AlarmRequest.GET
        return await self._alarm(get, 0, AlarmType.NONE, _IMMUTABLE, timeout)

    async def alarm_disarm(
        self,
        member_id: int = 0,
        alarm: AlarmType = AlarmType.NONE,
        *,
        timeout: float | None = None,
    ) -> tuple[Alarm, ...]:
        """Clear one alarm, or every raised alarm when called without arguments."""
        deactivate = rpc_pb2.AlarmRequest.DEACTIVATE
        if member_id or alarm is not AlarmType.NONE:
            return await self._alarm(deactivate, member_id, alarm, _MUTABLE, timeout)
        cleared: list[Alarm] = []
        for raised in await self.alarm_list(timeout=timeout):
            cleared.extend(
                await self._alarm(deactivate, raised.member_id, raised.alarm, _MUTABLE, timeout)
            )
        return tuple(cleared)

    async def defragment(self, endpoint: str, *, timeout: float | None = None) -> Header:
        """Defragment one member's backend (it stalls that member while it runs)."""
        req = rpc_pb2.DefragmentRequest()
        resp = await self._call(
            lambda s: s.maintenance.Defragment, req, _MUTABLE, timeout, self._endpoint(endpoint)
        )
        return Header.from_pb(resp.header)

    async def hash_kv(
        self, endpoint: str, revision: int = 0, *, timeout: float | None = None
    ) -> HashKVResult:
        """One member's hash of the keyspace up to `revision` (0: newest), to compare members."""
        req = rpc_pb2.HashKVRequest(revision=revision)
        resp = await self._call(
            lambda s: s.maintenance.HashKV, req, _IMMUTABLE, timeout, self._endpoint(endpoint)
        )
        return HashKVResult.from_pb(resp)

    async def move_leader(self, target_id: int, *, timeout: float | None = None) -> Header:
        """Hand leadership to member `target_id`; the request is sent to the current leader."""
        for endpoint in self._t.endpoints:
            try:
                status = await self.status(endpoint.url, timeout=timeout)
            except errors.EtcdError:
                continue
            if status.leader and status.leader == status.header.member_id:
                req = rpc_pb2.MoveLeaderRequest(targetID=target_id)
                resp = await self._call(
                    lambda s: s.maintenance.MoveLeader, req, _MUTABLE, timeout, endpoint
                )
                return Header.from_pb(resp.header)
        raise errors.NoLeaderError("no endpoint of this client is the leader")

    async def snapshot(
        self,
        out: SupportsWrite,
        *,
        endpoint: str | None = None,
        progress: Callable[[int, int], object] | None = None,
        timeout: float | None = None,
    ) -> SnapshotResult:
        """Stream a backend snapshot of `endpoint` (any when None) into `out`.

        `progress(received_bytes, remaining_bytes)` is called after each chunk.
        """
        t = self._t
        deadline = t.deadline(_no_deadline(timeout))
        ep = self._endpoint(endpoint) or await t.stream_endpoint(t.deadline(None))
        await t.ensure_token()
        call = t.stubs(ep).maintenance.Snapshot(
            rpc_pb2.SnapshotRequest(),
            metadata=t.metadata() or None,
            timeout=None if math.isinf(deadline) else t.remaining(deadline),
        )
        size = 0
        header: Header | None = None
        try:
            async for chunk in call:
                if header is None:
                    header = Header.from_pb(chunk.header)
                out.write(chunk.blob)
                size += len(chunk.blob)
                if progress is not None:
                    progress(size, chunk.remaining_bytes)
        except grpc.aio.AioRpcError as e:
            raise errors.from_rpc_error(e) from None
        if header is None:
            raise errors.EtcdError("snapshot stream ended without data")
        return SnapshotResult(header, size)

    # -- lock and election -----------------------------------------------------------------------

    async def lock(
        self, name: KeyLike, lease: int | Lease, *, timeout: float | None = None
    ) -> LockResult:
        """Wait until the lock `name` is held under `lease` (no deadline unless `timeout`)."""
        req = v3lock_pb2.LockRequest(name=to_bytes(name), lease=_lease_id(lease))
        resp = await self._call(lambda s: s.lock.Lock, req, _MUTABLE, _no_deadline(timeout))
        return LockResult(Header.from_pb(resp.header), resp.key)

    async def unlock(self, key: bytes, *, timeout: float | None = None) -> Header:
        """Release the lock owned under `key` (the key `lock` returned)."""
        req = v3lock_pb2.UnlockRequest(key=key)
        resp = await self._call(lambda s: s.lock.Unlock, req, _MUTABLE, timeout)
        return Header.from_pb(resp.header)

    async def campaign(
        self,
        name: KeyLike,
        lease: int | Lease,
        value: KeyLike,
        *,
        timeout: float | None = None,
    ) -> LeaderKey:
        """Wait until elected leader of `name` (no deadline unless `timeout`)."""
        req = v3election_pb2.CampaignRequest(
            name=to_bytes(name), lease=_lease_id(lease), value=to_bytes(value)
        )
        resp = await self._call(lambda s: s.election.Campaign, req, _MUTABLE, _no_deadline(timeout))
        return LeaderKey.from_pb(resp.leader)

    async def proclaim(
        self, leader: LeaderKey, value: KeyLike, *, timeout: float | None = None
    ) -> Header:
        """Publish a new value as the current leader."""
        req = v3election_pb2.ProclaimRequest(leader=leader.to_pb(), value=to_bytes(value))
        resp = await self._call(lambda s: s.election.Proclaim, req, _MUTABLE, timeout)
        return Header.from_pb(resp.header)

    async def leader(self, name: KeyLike, *, timeout: float | None = None) -> KeyValue:
        """The current leader's key-value; raises `ElectionNoLeaderError` when there is none."""
        req = v3election_pb2.LeaderRequest(name=to_bytes(name))
        resp = await self._call(lambda s: s.election.Leader, req, _IMMUTABLE, timeout)
        return KeyValue.from_pb(resp.kv)

    async def observe(self, name: KeyLike) -> AsyncGenerator[KeyValue, None]:
        """The leader's key-value now and after every change of leader or value.

        A thin stream: it ends with the error that broke it and does not resume.
        """
        t = self._t
        ep = await t.stream_endpoint(t.deadline(None))
        call = t.stubs(ep).election.Observe(
            v3election_pb2.LeaderRequest(name=to_bytes(name)),
            metadata=t.metadata(require_leader=True),
        )
        try:
            async for resp in call:
                yield KeyValue.from_pb(resp.kv)
        except grpc.aio.AioRpcError as e:
            raise errors.from_rpc_error(e) from None
        finally:
            call.cancel()

    async def resign(self, leader: LeaderKey, *, timeout: float | None = None) -> Header:
        """Give up leadership held under `leader`."""
        req = v3election_pb2.ResignRequest(leader=leader.to_pb())
        resp = await self._call(lambda s: s.election.Resign, req, _MUTABLE, timeout)
        return Header.from_pb(resp.header)

    # -- auth ------------------------------------------------------------------------------------

    async def authenticate(
        self, username: str, password: str, *, timeout: float | None = None
    ) -> str:
        """A token for `username` (this client keeps using its own credentials)."""
        return await self._t.authenticate(username, password, timeout)

    async def auth_enable(self, *, timeout: float | None = None) -> Header:
        req = rpc_pb2.AuthEnableRequest()
        resp = await self._call(lambda s: s.auth.AuthEnable, req, _MUTABLE, timeout)
        return Header.from_pb(resp.header)

    async def auth_disable(self, *, timeout: float | None = None) -> Header:
        req = rpc_pb2.AuthDisableRequest()
        resp = await self._call(lambda s: s.auth.AuthDisable, req, _MUTABLE, timeout)
        return Header.from_pb(resp.header)

    async def auth_status(self, *, timeout: float | None = None) -> AuthStatus:
        req = rpc_pb2.AuthStatusRequest()
        resp = await self._call(lambda s: s.auth.AuthStatus, req, _IMMUTABLE, timeout)
        return AuthStatus.from_pb(resp)

    async def user_add(
        self,
        name: str,
        password: str = "",
        *,
        no_password: bool = False,
        timeout: float | None = None,
    ) -> Header:
        req = rpc_pb2.AuthUserAddRequest(
            name=name, password=password, options=auth_pb2.UserAddOptions(no_password=no_password)
        )
        resp = await self._call(lambda s: s.auth.UserAdd, req, _MUTABLE, timeout)
        return Header.from_pb(resp.header)

    async def user_get(self, name: str, *, timeout: float | None = None) -> tuple[str, ...]:
        """The roles granted to user `name`."""
        req = rpc_pb2.AuthUserGetRequest(name=name)
        resp = await self._call(lambda s: s.auth.UserGet, req, _IMMUTABLE, timeout)
        return tuple(resp.roles)

    async def user_list(self, *, timeout: float | None = None) -> tuple[str, ...]:
        req = rpc_pb2.AuthUserListRequest()
        resp = await self._call(lambda s: s.auth.UserList, req, _IMMUTABLE, timeout)
        return tuple(resp.users)

    async def user_delete(self, name: str, *, timeout: float | None = None) -> Header:
        req = rpc_pb2.AuthUserDeleteRequest(name=name)
        resp = await self._call(lambda s: s.auth.UserDelete, req, _MUTABLE, timeout)
        return Header.from_pb(resp.header)

    async def user_change_password(
        self, name: str, password: str, *, timeout: float | None = None
    ) -> Header:
        req = rpc_pb2.AuthUserChangePasswordRequest(name=name, password=password)
        resp = await self._call(lambda s: s.auth.UserChangePassword, req, _MUTABLE, timeout)
        return Header.from_pb(resp.header)

    async def user_grant_role(
        self, user: str, role: str, *, timeout: float | None = None
    ) -> Header:
        req = rpc_pb2.AuthUserGrantRoleRequest(user=user, role=role)
        resp = await self._call(lambda s: s.auth.UserGrantRole, req, _MUTABLE, timeout)
        return Header.from_pb(resp.header)

    async def user_revoke_role(
        self, user: str, role: str, *, timeout: float | None = None
    ) -> Header:
        req = rpc_pb2.AuthUserRevokeRoleRequest(name=user, role=role)
        resp = await self._call(lambda s: s.auth.UserRevokeRole, req, _MUTABLE, timeout)
        return Header.from_pb(resp.header)

    async def role_add(self, name: str, *, timeout: float | None = None) -> Header:
        req = rpc_pb2.AuthRoleAddRequest(name=name)
        resp = await self._call(lambda s: s.auth.RoleAdd, req, _MUTABLE, timeout)
        return Header.from_pb(resp.header)

    async def role_get(self, name: str, *, timeout: float | None = None) -> tuple[Permission, ...]:
        """The permissions granted to role `name`."""
        req = rpc_pb2.AuthRoleGetRequest(role=name)
        resp = await self._call(lambda s: s.auth.RoleGet, req, _IMMUTABLE, timeout)
        return tuple(Permission.from_pb(p) for p in resp.perm)

    async def role_list(self, *, timeout: float | None = None) -> tuple[str, ...]:
        req = rpc_pb2.AuthRoleListRequest()
        resp = await self._call(lambda s: s.auth.RoleList, req, _IMMUTABLE, timeout)
        return tuple(resp.roles)

    async def role_delete(self, name: str, *, timeout: float | None = None) -> Header:
        req = rpc_pb2.AuthRoleDeleteRequest(role=name)
        resp = await self._call(lambda s: s.auth.RoleDelete, req, _MUTABLE, timeout)
        return Header.from_pb(resp.header)

    async def role_grant_permission(
        self,
        role: str,
        key: KeyLike,
        perm_type: PermissionType = PermissionType.READWRITE,
        *,
        prefix: bool = False,
        range_end: KeyLike | None = None,
        from_key: bool = False,
        timeout: float | None = None,
    ) -> Header:
        """Grant `role` access to `key`, or to a range (prefix, range_end, from_key)."""
        k, end = key_range(key, prefix=prefix, range_end=range_end, from_key=from_key)
        perm = auth_pb2.Permission(permType=perm_type.name, key=k, range_end=end)
        req = rpc_pb2.AuthRoleGrantPermissionRequest(name=role, perm=perm)
        resp = await self._call(lambda s: s.auth.RoleGrantPermission, req, _MUTABLE, timeout)
        return Header.from_pb(resp.header)

    async def role_revoke_permission(
        self,
        role: str,
        key: KeyLike,
        *,
        prefix: bool = False,
        range_end: KeyLike | None = None,
        from_key: bool = False,
        timeout: float | None = None,
    ) -> Header:
        k, end = key_range(key, prefix=prefix, range_end=range_end, from_key=from_key)
        req = rpc_pb2.AuthRoleRevokePermissionRequest(role=role, key=k, range_end=end)
        resp = await self._call(lambda s: s.auth.RoleRevokePermission, req, _MUTABLE, timeout)
        return Header.from_pb(resp.header)
