"""Raft core throughput: a 3-node in-process cluster committing proposals in batches.

Run: ``python -m bench.raft_bench [--seconds 3] [--batches 1,16,256] [--entry-bytes 128]``.
Prints one JSON document: for each batch size, proposals committed per second (wall clock and
CPU time, the latter being steadier on a busy machine), ``step()`` calls per second, Ready
batches per second and messages per proposal. No network, no disk, no
threads: the numbers are the cost of the consensus core itself (plus MemoryStorage), i.e. the
ceiling the Python server's Raft loop can reach on this machine.

Each node follows the Ready contract synchronously (append to MemoryStorage, send, apply,
advance); the cluster is compacted every ``COMPACT_EVERY`` entries so memory stays flat.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from collections import deque

from raftkv.pb.raftpb.raft_pb2 import Message
from raftkv.raft import Config, MemoryStorage, RawNode, StateType

COMPACT_EVERY = 20_000
KEEP = 1_000


class _Cluster:
    def __init__(self, size: int, seed: int) -> None:
        self.storage = {i: MemoryStorage() for i in range(1, size + 1)}
        self.nodes = {
            i: RawNode(Config(i, st, random.Random(seed + i))) for i, st in self.storage.items()
        }
        self.applied = dict.fromkeys(self.nodes, 0)
        self.queue: deque[Message] = deque()
        self.steps = 0
        self.readies = 0
        self.messages = 0
        peers = [(i, b"") for i in self.nodes]
        for node in self.nodes.values():
            node.bootstrap(peers)
        self.pump_all()
        self.nodes[1].campaign()
        self.pump_all()
        assert self.nodes[1].state is StateType.LEADER

    def _drain(self, i: int) -> None:
        node = self.nodes[i]
        st = self.storage[i]
        while node.has_ready():
            rd = node.ready()
            self.readies += 1
            if rd.entries:
                st.append(rd.entries)
            if rd.hard_state is not None:
                st.set_hard_state(rd.hard_state)
            self.queue.extend(rd.messages)
            self.messages += len(rd.messages)
            if rd.committed_entries:
                self.applied[i] = rd.committed_entries[-1].index
            node.advance(rd)
            if self.applied[i] - st.first_index() > COMPACT_EVERY:
                st.create_snapshot(self.applied[i], node.status().conf_state, b"")
                st.compact(self.applied[i] - KEEP)

    def pump_all(self) -> None:
        for i in self.nodes:
            self._drain(i)
        queue = self.queue
        nodes = self.nodes
        while queue:
            m = queue.popleft()
            nodes[m.to].step(m)
            self.steps += 1
            self._drain(m.to)


def _run(batch: int, seconds: float, entry_bytes: int, seed: int) -> dict[str, float | None]:
    c = _Cluster(3, seed)
    leader = c.nodes[1]
    payload = bytes(entry_bytes)
    base_applied = c.applied[1]
    base_steps, base_readies, base_messages = c.steps, c.readies, c.messages
    proposed = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(batch):
            leader.propose(payload)
        proposed += batch
        c.pump_all()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    committed = c.applied[1] - base_applied
    assert committed == proposed and c.applied[2] == c.applied[3] == c.applied[1]
    steps = c.steps - base_steps
    return {
        "batch": batch,
        "seconds": round(elapsed, 3),
        "proposals_committed": committed,
        "cpu_seconds": round(cpu, 3),
        "proposals_per_second": round(committed / elapsed, 1),
        "proposals_per_cpu_second": round(committed / cpu, 1) if cpu else None,
        "steps_per_second": round(steps / elapsed, 1),
        "readies_per_second": round((c.readies - base_readies) / elapsed, 1),
        "messages_per_proposal": round((c.messages - base_messages) / committed, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per batch size")
    parser.add_argument("--batches", default="1,16,256", help="proposals per round")
    parser.add_argument("--entry-bytes", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    results = [
        _run(int(b), args.seconds, args.entry_bytes, args.seed) for b in args.batches.split(",")
    ]
    report = {
        "benchmark": "raft_core",
        "nodes": 3,
        "entry_bytes": args.entry_bytes,
        "python": platform.python_version(),
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
