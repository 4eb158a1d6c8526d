"""A stream's watchers are bounded in number and key bytes; a create past a bound is refused with
a clear reason, the stream goes on, and a cancel makes room again."""

from __future__ import annotations

from raftkv.mvcc import KVStore
from raftkv.watch import WatchStream

from tests.watch.harness import async_test, create, put, recv, recv_created, watching


@async_test
async def test_a_create_past_the_watcher_limit_is_refused_until_one_is_canceled(
    store: KVStore,
) -> None:
    async with watching(store) as hub:
        stream = WatchStream(hub, max_watchers=3)
        for _ in range(3):
            create(stream, b"a")
            await recv_created(stream)
        create(stream, b"a")
        refused = await recv(stream)
        assert (refused.watch_id, refused.created, refused.canceled) == (-1, True, True)
        assert refused.cancel_reason == (
            "raftkv: too many watchers on this watch stream (at most 3)"
        )
        stream.cancel(1)
        assert (await recv(stream)).canceled
        create(stream, b"a")
        assert await recv_created(stream) == 3
        # The watchers that were let in still get their events.
        revision = put(store, (b"a", b"v"))
        seen = {
            (r.watch_id, r.events[0].kv.mod_revision)
            for r in [await recv(stream) for _ in range(3)]
        }
        assert seen == {(0, revision), (2, revision), (3, revision)}
        stream.close()


@async_test
async def test_watched_key_bytes_are_bounded_per_stream(store: KVStore) -> None:
    async with watching(store) as hub:
        stream = WatchStream(hub, max_key_bytes=10)
        create(stream, b"abcd", range_end=b"abce")
        assert await recv_created(stream) == 0
        create(stream, b"abc")
        refused = await recv(stream)
        assert refused.canceled and refused.watch_id == -1
        assert refused.cancel_reason == (
            "raftkv: the watchers of this watch stream watch too many key bytes (at most 10)"
        )
        create(stream, b"ab")
        assert await recv_created(stream) == 1
        stream.close()
