"""Watch coalescing in the proxy, driven without a cluster: upstream watches are simulated by
calling what a broadcast's upstream task calls (`created`, `fan_out`, `end_all`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from raftkv.client.types import Header
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.mvccpb import kv_pb2
from raftkv.proxy.metrics import ProxyMetrics
from raftkv.proxy.watch import Broadcast, ClientStream, WatchHub


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[WatchHub]:
    # No upstream tasks: the tests play the upstream watch themselves.
    monkeypatch.setattr(Broadcast, "start", lambda self: None)
    yield WatchHub(None, ProxyMetrics(CollectorRegistry()))  # type: ignore[arg-type]


def header(revision: int) -> Header:
    return Header(cluster_id=1, member_id=2, revision=revision, raft_term=3)


def put(key: bytes, revision: int) -> kv_pb2.Event:
    return kv_pb2.Event(type=kv_pb2.Event.PUT, kv=kv_pb2.KeyValue(key=key, mod_revision=revision))


def create(key: bytes, start: int = 0, **options: object) -> pb.WatchRequest:
    return pb.WatchRequest(
        create_request=pb.WatchCreateRequest(key=key, start_revision=start, **options)  # type: ignore[arg-type]
    )


def drain(stream: ClientStream) -> list[pb.WatchResponse]:
    out = []
    while not stream._queue.empty():
        out.append(stream._queue.get_nowait())
    return out


def revisions(responses: list[pb.WatchResponse], watch_id: int) -> list[int]:
    return [e.kv.mod_revision for r in responses if r.watch_id == watch_id for e in r.events]


def only(hub: WatchHub) -> Broadcast:
    (broadcast,) = hub.broadcasts()
    return broadcast


def test_watchers_of_one_range_share_one_upstream_watch(hub: WatchHub) -> None:
    streams = [ClientStream(hub) for _ in range(3)]
    for stream in streams:
        stream.handle(create(b"k"))
        stream.handle(create(b"k"))
    broadcast = only(hub)
    assert drain(streams[0]) == []  # created only once the cluster created the upstream watch
    broadcast.created(header(10), 11)
    for stream in streams:
        assert [(r.watch_id, r.created, r.header.revision) for r in drain(stream)] == [
            (0, True, 10),
            (1, True, 10),
        ]
    broadcast.fan_out(header(11), [put(b"k", 11)], 12)
    for stream in streams:
        got = drain(stream)
        assert (revisions(got, 0), revisions(got, 1)) == ([11], [11])
    assert hub.upstream_count() == 1 and hub.coalescing_count() == 5
    assert hub.metrics.events_coalescing._value.get() == 5


def test_other_filters_prev_kv_or_range_get_their_own_upstream_watch(hub: WatchHub) -> None:
    stream = ClientStream(hub)
    stream.handle(create(b"k"))
    stream.handle(create(b"k", prev_kv=True))
    stream.handle(create(b"k", filters=[pb.WatchCreateRequest.NOPUT]))
    stream.handle(create(b"k", range_end=b"l"))
    assert hub.upstream_count() == 4


def test_a_new_watcher_joins_an_established_watch_at_its_position(hub: WatchHub) -> None:
    first = ClientStream(hub)
    first.handle(create(b"k"))
    broadcast = only(hub)
    broadcast.created(header(10), 11)
    broadcast.fan_out(header(12), [put(b"k", 12)], 13)
    late = ClientStream(hub)
    late.handle(create(b"k"))  # "now": created at once, by the proxy, at revision 12
    late.handle(create(b"k", start=20))  # from a future revision: joins, skips 13..19
    assert [(r.watch_id, r.created, r.header.revision) for r in drain(late)] == [
        (0, True, 12),
        (1, True, 12),
    ]
    broadcast.fan_out(header(13), [put(b"k", 13)], 14)
    broadcast.fan_out(header(20), [put(b"k", 20)], 21)
    got = drain(late)
    assert (revisions(got, 0), revisions(got, 1)) == ([13, 20], [20])
    assert hub.upstream_count() == 1


def test_an_older_watcher_catches_up_alone_then_merges_without_repeats(hub: WatchHub) -> None:
    shared_stream = ClientStream(hub)
    shared_stream.handle(create(b"k"))
    shared = only(hub)
    shared.created(header(10), 11)

    old = ClientStream(hub)
    old.handle(create(b"k", start=3))  # history the shared watch has passed: its own watch
    assert hub.upstream_count() == 2
    catching_up = next(b for b in hub.broadcasts() if b is not shared)
    catching_up.created(header(10), 3)
    catching_up.fan_out(header(10), [put(b"k", 5), put(b"k", 9)], 10)
    assert hub.upstream_count() == 2  # still behind the shared watch (at 11)
    # A new write reaches the shared watch first, then the catching-up one: merged after it.
    shared.fan_out(header(11), [put(b"k", 11)], 12)
    catching_up.fan_out(header(11), [put(b"k", 11)], 12)
    assert hub.broadcasts() == [shared]
    shared.fan_out(header(14), [put(b"k", 14)], 15)
    assert revisions(drain(old), 0) == [5, 9, 11, 14]
    assert revisions(drain(shared_stream), 0) == [11, 14]


def test_merged_while_ahead_a_watcher_drops_what_it_already_has(hub: WatchHub) -> None:
    shared_stream = ClientStream(hub)
    shared_stream.handle(create(b"k"))
    shared = only(hub)
    shared.created(header(10), 11)
    old = ClientStream(hub)
    old.handle(create(b"k", start=3))
    catching_up = next(b for b in hub.broadcasts() if b is not shared)
    catching_up.created(header(10), 3)
    # The catching-up watch sees revision 11 before the shared one does: no merge yet (the
    # shared one is behind), then the shared one sees it too and they are one.
    catching_up.fan_out(header(11), [put(b"k", 9), put(b"k", 11)], 12)
    assert hub.upstream_count() == 2
    shared.fan_out(header(11), [put(b"k", 11)], 12)
    assert hub.broadcasts() == [shared]
    shared.fan_out(header(12), [put(b"k", 12)], 13)
    assert revisions(drain(old), 0) == [9, 11, 12]
    assert revisions(drain(shared_stream), 0) == [11, 12]


def test_created_answers_keep_the_order_of_the_creates(hub: WatchHub) -> None:
    established = ClientStream(hub)
    established.handle(create(b"b"))
    only(hub).created(header(10), 11)
    stream = ClientStream(hub)
    stream.handle(create(b"a"))  # needs a new upstream watch
    stream.handle(create(b"b"))  # could be answered at once, but comes second
    stream.handle(create(b"z", range_end=b"y"))  # refused, third
    assert drain(stream) == []
    upstream_a = next(b for b in hub.broadcasts() if b.key[0] == b"a")
    upstream_b = next(b for b in hub.broadcasts() if b.key[0] == b"b")
    upstream_b.fan_out(header(11), [put(b"b", 11)], 12)
    upstream_a.created(header(11), 12)
    got = drain(stream)
    assert [(r.watch_id, r.created, r.canceled, len(r.events)) for r in got] == [
        (0, True, False, 0),
        (1, True, False, 0),
        (1, False, False, 1),
        (-1, True, True, 0),
    ]


def test_ids_refusals_cancel_and_the_last_watcher_closing_the_upstream(hub: WatchHub) -> None:
    stream = ClientStream(hub)
    stream.handle(create(b"k", watch_id=5))
    stream.handle(create(b"k", watch_id=5))  # taken
    stream.handle(create(b"b", range_end=b"a"))  # empty range
    stream.handle(create(b"k"))
    only(hub).created(header(10), 11)
    responses = drain(stream)
    refusals = [r for r in responses if r.canceled]
    assert [(r.watch_id, r.created, r.cancel_reason) for r in refusals] == [
        (-1, True, "mvcc: duplicate watch ID provided on the WatchStream"),
        (-1, True, "mvcc: watcher range is empty"),
    ]
    assert sorted(r.watch_id for r in responses if r.created and not r.canceled) == [0, 5]
    stream.handle(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=5)))
    stream.handle(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=99)))
    assert [(r.watch_id, r.canceled) for r in drain(stream)] == [(5, True)]
    assert hub.upstream_count() == 1
    stream.close()
    assert hub.upstream_count() == 0


def test_a_compacted_start_cancels_every_watcher_of_the_upstream_watch(hub: WatchHub) -> None:
    streams = [ClientStream(hub) for _ in range(2)]
    for stream in streams:
        stream.handle(create(b"k", start=2))
    broadcast = only(hub)
    broadcast.created(header(10), 2)
    broadcast.end_all(pb.ResponseHeader(), canceled=True, compact_revision=7)
    for stream in streams:
        last = drain(stream)[-1]
        assert (last.watch_id, last.canceled, last.compact_revision) == (0, True, 7)
        assert stream.watchers == {}
    assert hub.upstream_count() == 0


def test_progress_reaches_only_watchers_that_asked(hub: WatchHub) -> None:
    stream = ClientStream(hub)
    stream.handle(create(b"k"))
    stream.handle(create(b"k", progress_notify=True))
    broadcast = only(hub)
    broadcast.created(header(10), 11)
    drain(stream)
    broadcast.fan_out(header(30), [], 31)
    assert [(r.watch_id, r.header.revision) for r in drain(stream)] == [(1, 30)]
    stream.handle(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
    assert [(r.watch_id, r.header.revision) for r in drain(stream)] == [(-1, 30)]


def test_watchers_share_only_with_watchers_of_the_same_auth_token(hub: WatchHub) -> None:
    for token in ("token-a", "token-a", "token-b", ""):
        ClientStream(hub, token).handle(create(b"k"))
    assert sorted(b.key[4] for b in hub.broadcasts()) == ["", "token-a", "token-b"]


def test_a_watcher_from_now_never_joins_a_watch_replaying_history(hub: WatchHub) -> None:
    old = ClientStream(hub)
    old.handle(create(b"k", start=2))
    replaying = only(hub)
    replaying.created(header(50), 2)
    replaying.fan_out(header(50), [put(b"k", 3)], 4)
    now = ClientStream(hub)
    now.handle(create(b"k"))
    assert hub.upstream_count() == 2
    live = next(b for b in hub.broadcasts() if b is not replaying)
    live.created(header(50), 51)
    assert [(r.created, r.header.revision) for r in drain(now)] == [(True, 50)]
    # Once they meet, the merged watch is live: the next "now" watcher joins it.
    replaying.fan_out(header(51), [put(b"k", 51)], 52)
    live.fan_out(header(51), [put(b"k", 51)], 52)
    assert hub.upstream_count() == 1
    later = ClientStream(hub)
    later.handle(create(b"k"))
    assert hub.upstream_count() == 1
    assert [(r.created, r.header.revision) for r in drain(later)] == [(True, 51)]
    assert revisions(drain(now), 0) == [51]
    assert revisions(drain(old), 0) == [3, 51]


def test_a_watcher_joins_the_watch_furthest_on_among_those_it_can_join(hub: WatchHub) -> None:
    ClientStream(hub).handle(create(b"k", start=2))
    behind = only(hub)
    behind.created(header(50), 2)
    ClientStream(hub).handle(create(b"k"))
    live = next(b for b in hub.broadcasts() if b is not behind)
    live.created(header(50), 51)
    stream = ClientStream(hub)
    stream.handle(create(b"k", start=60))  # both are at or before 60: the live one is nearer
    assert hub.upstream_count() == 2 and len(live.receivers) == 2
