"""Watch fan-out in process: CPU per delivered event from the write to the bytes gRPC would send.

The `watch` workload's shape (100 watchers on one prefix in 10 streams) over a real KVStore and
WatchableStore, without the network: each Put's events are fanned out to the streams, and a
drain per stream turns every queued response into the bytes the Watch handler writes (the
member's full header included). What remains per response in a member is one grpc.aio write.

    .venv/bin/python -m bench.watch_bench [--puts 2000] [--streams 10] [--watchers 10]

Prints JSON: events delivered, CPU seconds, microseconds of CPU per delivered event, responses
written (fewer than events when lagging watchers get several revisions in one response).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from raftkv.api.watch import HeaderEncoder
from raftkv.mvcc import KVStore
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.storage.backend import Backend
from raftkv.watch import WatchableStore, WatchStream


async def run(puts: int, streams: int, watchers: int, drain_every: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        backend = Backend(Path(tmp) / "db")
        store = KVStore(backend)
        hub = WatchableStore(store)
        hub.start()

        def fill(header: rpc_pb2.ResponseHeader, revision: int) -> None:
            header.cluster_id, header.member_id, header.raft_term = 0x1234, 0x5678, 2
            header.revision = revision

        headers = HeaderEncoder(fill)
        opened: list[WatchStream] = []
        for _ in range(streams):
            stream = hub.open_stream()
            for _ in range(watchers):
                stream.create(rpc_pb2.WatchCreateRequest(key=b"w/", range_end=b"w0"))
            opened.append(stream)
        for stream in opened:  # the created responses
            while stream.queued[0]:
                await stream.next()
        value = b"v" * 256
        events = responses = wire_bytes = 0
        cpu = time.process_time()
        for i in range(puts):
            with store.write() as txn:
                txn.put(b"w/%08d" % i, value)
            backend.commit()
            if (i + 1) % drain_every == 0 or i == puts - 1:
                for stream in opened:
                    while stream.queued[0]:
                        item = await stream.next()
                        data = item.wire(headers.header(item.revision, 2))
                        responses += 1
                        events += item.event_count
                        wire_bytes += len(data)
        cpu = time.process_time() - cpu
        await hub.stop()
        backend.close()
    return {
        "benchmark": "watch_fanout",
        "puts": puts,
        "watchers": streams * watchers,
        "drain_every_puts": drain_every,
        "events_delivered": events,
        "responses": responses,
        "bytes": wire_bytes,
        "cpu_seconds": round(cpu, 3),
        "cpu_us_per_event": round(cpu / max(events, 1) * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--puts", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--watchers", type=int, default=10)
    parser.add_argument(
        "--drain-every", default="1,8", help="puts between drains (1: readers keep up)"
    )
    args = parser.parse_args()
    for drain in (int(d) for d in args.drain_every.split(",")):
        print(json.dumps(asyncio.run(run(args.puts, args.streams, args.watchers, drain))))


if __name__ == "__main__":
    main()
