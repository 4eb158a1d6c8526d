"""etcd's errors arrive as typed exceptions carrying etcd's code and exact message.

The first tests provoke each error on a real etcd (started here with `--max-txn-ops=4` and a small
`--max-request-bytes`, so the limits are cheap to hit); the last ones check the mapping itself,
which raftkv's server must satisfy with the same texts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from raftkv.client import AsyncClient, Compare, errors, ops

from tests.support.etcd import EtcdCluster, free_port, start_etcd_cluster
from tests.support.fixtures import require_etcd

pytestmark = pytest.mark.integration

Key = Callable[[str], bytes]


@pytest.fixture(scope="module")
def limited_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    require_etcd()
    with start_etcd_cluster(
        tmp_path_factory.mktemp("etcd-limits"), max_txn_ops=4, max_request_bytes=4096
    ) as cluster:
        yield cluster


@pytest.fixture
def client(limited_cluster: EtcdCluster) -> AsyncClient:
    return AsyncClient(limited_cluster.grpc_targets)


async def test_reading_a_compacted_revision_raises_compacted_error(
    client: AsyncClient, key: Key
) -> None:
    async with client:
        old = await client.put(key("k"), "v1")
        new = await client.put(key("k"), "v2")
        await client.compact(new.header.revision, physical=True)
        with pytest.raises(errors.CompactedError) as info:
            await client.get(key("k"), revision=old.header.revision)
        # Compacting to the same revision again is itself "compacted".
        with pytest.raises(errors.CompactedError):
            await client.compact(new.header.revision)
    assert info.value.code is grpc.StatusCode.OUT_OF_RANGE
    assert info.value.message == "etcdserver: mvcc: required revision has been compacted"
    assert isinstance(info.value, errors.RevisionError)


async def test_reading_a_future_revision_raises_future_revision_error(
    client: AsyncClient, key: Key
) -> None:
    async with client:
        now = await client.put(key("k"), "v")
        with pytest.raises(errors.FutureRevisionError) as info:
            await client.get(key("k"), revision=now.header.revision + 1000)
    assert info.value.message == "etcdserver: mvcc: required revision is a future revision"


async def test_ignore_value_on_a_missing_key_raises_key_not_found(
    client: AsyncClient, key: Key
) -> None:
    async with client:
        with pytest.raises(errors.KeyNotFoundError) as info:
            await client.put(key("missing"), ignore_value=True)
        with pytest.raises(errors.ValueProvidedError):
            await client.put(key("missing"), "value", ignore_value=True)
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert str(info.value) == "etcdserver: key not found"


async def test_lease_errors(client: AsyncClient, key: Key) -> None:
    async with client:
        with pytest.raises(errors.LeaseNotFoundError):
            await client.put(key("k"), "v", lease=0x5EED)
        with pytest.raises(errors.LeaseNotFoundError):
            await client.lease_revoke(0x5EED)
        granted = await client.lease_grant(30, lease_id=0x5EED)
        with pytest.raises(errors.LeaseExistsError):
            await client.lease_grant(30, lease_id=0x5EED)
        await client.lease_revoke(granted.id)
    assert granted.id == 0x5EED


async def test_txn_limits(client: AsyncClient, key: Key) -> None:
    async with client:
        five_puts = [ops.put(key(str(i)), "v") for i in range(5)]
        with pytest.raises(errors.TooManyOpsError) as too_many:
            await client.txn().then(*five_puts).commit()
        with pytest.raises(errors.DuplicateKeyError):
            await client.txn().then(ops.put(key("d"), "1"), ops.put(key("d"), "2")).commit()
        with pytest.raises(errors.RequestTooLargeError):
            await client.put(key("big"), b"x" * 8192)
        with pytest.raises(errors.EmptyKeyError):
            await client.put(b"", "v")
        # Four ops and a comparison are within the limit.
        ok = await client.txn().if_(Compare.version(key("0")) == 0).then(*five_puts[:4]).commit()
    assert too_many.value.message == "etcdserver: too many operations in txn request"
    assert ok.succeeded


async def test_an_unreachable_cluster_raises_unavailable_within_the_deadline() -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    async with AsyncClient(dead, timeout=0.5, dial_timeout=0.2) as client:
        with pytest.raises(errors.UnavailableError):
            await client.get("k")
        with pytest.raises(errors.UnavailableError):
            await client.put("k", "v")


def test_messages_map_to_their_classes() -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    cases: list[tuple[grpc.StatusCode, str, type[errors.EtcdError]]] = [
        (unavailable, "etcdserver: no leader", errors.NoLeaderError),
        (unavailable, "etcdserver: request timed out", errors.RequestTimeoutError),
        (
            unavailable,
            "etcdserver: request timed out, possibly due to previous leader failure",
            errors.RequestTimeoutError,
        ),
        (unavailable, "Socket closed", errors.UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", errors.TimeoutError),
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "etcdserver: mvcc: database space exceeded",
            errors.NoSpaceError,
        ),
        (grpc.StatusCode.NOT_FOUND, "etcdserver: member not found", errors.MemberNotFoundError),
        (
            grpc.StatusCode.PERMISSION_DENIED,
            "etcdserver: permission denied",
            errors.PermissionDeniedError,
        ),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "etcdserver: authentication failed, invalid user ID or password",
            errors.AuthFailedError,
        ),
        (
            grpc.StatusCode.UNAUTHENTICATED,
            "etcdserver: invalid auth token",
            errors.InvalidAuthTokenError,
        ),
        (grpc.StatusCode.INVALID_ARGUMENT, "something new", errors.EtcdError),
    ]
    for code, message, cls in cases:
        err = errors.from_status(code, message)
        assert type(err) is cls, (message, type(err))
        assert (err.code, err.message) == (code, message)
    assert isinstance(errors.TimeoutError(), TimeoutError)  # the built-in one


def test_watch_cancel_reasons_are_parsed() -> None:
    denied = errors.from_reason(
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    )
    assert type(denied) is errors.PermissionDeniedError
    assert denied.code is grpc.StatusCode.PERMISSION_DENIED
    assert type(errors.from_reason("etcdserver: no leader")) is errors.NoLeaderError


def test_every_class_defaults_to_etcds_message() -> None:
    err = errors.CompactedError(compact_revision=7)
    assert err.compact_revision == 7
    assert err.message == "etcdserver: mvcc: required revision has been compacted"
    expected = "NoLeaderError('etcdserver: no leader', code=UNAVAILABLE)"
    assert repr(errors.NoLeaderError()) == expected


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_a_stream_torn_down_by_the_transport_counts_as_unavailable() -> None:
    # grpc-core's words when the member dies mid-call; recipes and streams fail over on it.
    torn = errors.from_rpc_error(
        _FakeRpcError(grpc.StatusCode.UNKNOWN, "Stream removed (sendmsg: Broken pipe (32))")
    )
    assert isinstance(torn, errors.UnavailableError)
    assert torn.code is grpc.StatusCode.UNAVAILABLE
    other = errors.from_rpc_error(_FakeRpcError(grpc.StatusCode.UNKNOWN, "election: no leader"))
    assert not isinstance(other, errors.UnavailableError)
