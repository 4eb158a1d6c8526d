"""One robustness run: load and faults on a proxied cluster, then every check, then a report.

The run has three phases. Under load: KV clients, full watchers (from revision 1), short-lived
watchers opened at old revisions, lock workers, a durable writer and a compactor run while the
faults follow each other. Settling: faults are repaired, the load stops, one last marker write
gives the final revision, and the run waits until every full watcher has received it (so their
logs are complete) and every member has applied it. Checking: watch guarantees, lock fencing,
durability on every member, equal HashKV on every member, then linearizability of the KV
history with writes of unknown outcome settled from the (verified) watch log.

Everything goes into `report.txt` in the given directory, with the history in `history.txt` and
every watch response in `watches.txt`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from raftkv.pb.etcdserverpb import rpc_pb2

from tests.robustness.harness import Harness
from tests.robustness.history import Call, resolve_unknown_writes
from tests.robustness.linearizability import Report, check_history
from tests.robustness.watchcheck import WatchLog, WatchReport, check_watches
from tests.robustness.workload import (
    DURABLE_PREFIX,
    KEY_PREFIX,
    Compactor,
    DurableWriter,
    Endpoint,
    KVClient,
    LockWorker,
    Watcher,
    check_lock_fencing,
)

_SETTLE_S = 90.0


@dataclass
class Settings:
    seed: int
    duration: float
    members: int = 3
    clients: int = 4
    lock_workers: int = 3
    snapshot_count: int = 150
    check_timeout: float = 60.0


@dataclass
class Outcome:
    settings: Settings
    problems: list[str] = field(default_factory=list)
    report_path: Path | None = None
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


async def _wait(what: str, probe: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(grpc.aio.AioRpcError):
            if await probe():
                return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


class _LateWatchers:
    """Opens short watches at old revisions (often compacted ones) now and then."""

    def __init__(self, endpoints: list[Endpoint], rng: random.Random) -> None:
        self.endpoints = endpoints
        self.rng = rng
        self.logs: list[WatchLog] = []
        self.current = 1
        self.stuck: list[str] = []  # watchers that did not stop when told

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            await asyncio.sleep(self.rng.uniform(2.0, 5.0))
            n += 1
            start = self.rng.randint(1, max(1, self.current))
            watcher = Watcher(
                f"late{n}", self.endpoints, self.rng, prev_kv=self.rng.random() < 0.5, start=start
            )
            self.logs.append(watcher.log)
            task = asyncio.create_task(watcher.run(), name=watcher.log.name)
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            self.stuck += await _end([watcher], [task])


async def _end(watchers: list[Watcher], tasks: list[asyncio.Task[None]]) -> list[str]:
    """Stop watchers for good: close them, cancel their tasks, wait a bounded time. Returns
    the names of those that did not stop."""
    for watcher in watchers:
        watcher.close()
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=30)
    return sorted(t.get_name() for t in pending)


async def _final_put(endpoints: list[Endpoint]) -> int:
    """One acknowledged write after the load: the revision every log must reach."""
    deadline = time.monotonic() + _SETTLE_S
    while True:
        for ep in endpoints:
            with contextlib.suppress(grpc.aio.AioRpcError):
                resp = await ep.kv.Put(rpc_pb2.PutRequest(key=b"end", value=b"end"), timeout=5)
                return resp.header.revision
        if time.monotonic() > deadline:
            raise TimeoutError("no member accepts the final write")
        await asyncio.sleep(0.5)


async def _check_members(
    endpoints: list[Endpoint], final: int, durable: DurableWriter
) -> list[str]:
    """Every member applied everything, lost no acknowledged durable key, and has the same
    HashKV at the final revision."""
    problems = []
    hashes: dict[str, tuple[int, int]] = {}
    for ep in endpoints:

        async def applied(ep: Endpoint = ep) -> bool:
            resp = await ep.kv.Range(rpc_pb2.RangeRequest(key=b"end", serializable=True), timeout=5)
            return resp.header.revision >= final

        await _wait(f"{ep.name} to apply revision {final}", applied, _SETTLE_S)
        prefix = DURABLE_PREFIX.encode()
        resp = await ep.kv.Range(
            rpc_pb2.RangeRequest(
                key=prefix, range_end=prefix[:-1] + b"0", serializable=True, keys_only=True
            ),
            timeout=30,
        )
        present = {kv.key.decode() for kv in resp.kvs}
        lost = sorted(set(durable.acknowledged) - present)
        if lost:
            problems.append(
                f"{ep.name} lost {len(lost)} acknowledged writes, e.g. "
                + ", ".join(f"{k}@{durable.acknowledged[k]}" for k in lost[:5])
            )
        h = await ep.maintenance.HashKV(rpc_pb2.HashKVRequest(revision=final), timeout=30)
        hashes[ep.name] = (h.hash, h.compact_revision)
    if len(set(hashes.values())) > 1:
        problems.append(f"members disagree on HashKV at revision {final}: {hashes}")
    return problems


async def run(root: Path, settings: Settings) -> Outcome:
    outcome = Outcome(settings)
    report_dir = root / "robustness-report"
    report_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(settings.seed)
    history: list[Call] = []
    with Harness.running(
        root, size=settings.members, seed=settings.seed, snapshot_count=settings.snapshot_count
    ) as h:
        endpoints = [Endpoint(m.name, m.target) for m in h.voters]
        try:
            stop = asyncio.Event()
            clients = [
                KVClient(i, endpoints, random.Random(rng.random()), history)
                for i in range(settings.clients)
            ]
            watchers = [
                Watcher(f"full{i}", endpoints, random.Random(rng.random()), prev_kv=i == 0)
                for i in range(2)
            ]
            lockers = [
                LockWorker(i, endpoints, random.Random(rng.random()))
                for i in range(settings.lock_workers)
            ]
            durable = DurableWriter(endpoints, random.Random(rng.random()))
            compactor = Compactor(endpoints, watchers, random.Random(rng.random()))
            late = _LateWatchers(endpoints, random.Random(rng.random()))
            load = [
                *(asyncio.create_task(c.run(stop), name=f"kv{c.client_id}") for c in clients),
                *(asyncio.create_task(w.run(stop), name=f"lock{w.worker_id}") for w in lockers),
                asyncio.create_task(durable.run(stop), name="durable"),
                asyncio.create_task(compactor.run(stop), name="compactor"),
                asyncio.create_task(late.run(stop), name="late watchers"),
            ]
            watching = [asyncio.create_task(w.run(), name=w.log.name) for w in watchers]

            async def track_revision() -> None:
                while not stop.is_set():
                    late.current = max((w.seen_through for w in watchers), default=1)
                    await asyncio.sleep(0.5)

            load.append(asyncio.create_task(track_revision()))
            outcome.problems += await _inject_faults(h, compactor, settings)
            final = await _settle(h, stop, load, watchers, watching, durable, outcome.problems)
        finally:
            for ep in endpoints:
                await ep.close()
    # The cluster is gone; the rest is computation.
    logs = [w.log for w in watchers] + late.logs
    compacted = max([compactor.last, *(s.compacted for log in logs for s in log.sessions)])
    watch_report = check_watches(logs, history, KEY_PREFIX, compacted=compacted)
    outcome.problems += [f"watch: {v}" for v in watch_report.violations]
    outcome.problems += [f"lock: {v}" for v in check_lock_fencing(watch_report.merged, lockers)]
    if late.stuck:
        outcome.problems.append(f"watchers did not stop: {late.stuck}")
    complete = final is not None and watch_report.covered[:1] == [(2, final)]
    checked = resolve_unknown_writes(history, watch_report.put_revisions) if complete else history
    if not complete:
        outcome.problems.append(
            f"watch log incomplete ({watch_report.covered}), unknown writes left unresolved"
        )
    lin = check_history(checked, timeout=settings.check_timeout)
    if not lin.ok:
        outcome.problems.append(f"linearizability: {lin.verdict.value}\n{lin.explain()}")
    outcome.summary = _summary(
        settings, h, history, checked, watch_report, lin, lockers, durable, compactor, logs
    )
    (report_dir / "history.txt").write_text("\n".join(map(str, history)) + "\n")
    (report_dir / "watches.txt").write_text(_watch_dump(logs))
    text = outcome.summary + "\n\n" + ("\n\n".join(outcome.problems) or "no problems found")
    (report_dir / "report.txt").write_text(text + "\n")
    outcome.report_path = report_dir / "report.txt"
    return outcome


async def _settle(
    h: Harness,
    stop: asyncio.Event,
    load: list[asyncio.Task[None]],
    watchers: list[Watcher],
    watching: list[asyncio.Task[None]],
    durable: DurableWriter,
    problems: list[str],
) -> int | None:
    """Repair everything, stop the load, make the final write and wait until both full
    watchers received it; then check the members. Returns the final revision, None (and a
    problem) if the cluster did not settle."""
    endpoints = durable.endpoints
    try:
        h.note("faults over: repairing")
        await h.repair_all()
        stop.set()
        _, pending = await asyncio.wait(load, timeout=_SETTLE_S)
        if pending:
            problems.append(
                "load tasks still running after the stop: "
                + ", ".join(sorted(t.get_name() for t in pending))
            )
        final = await _final_put(endpoints)
        h.note(f"load stopped; final revision {final}")
        for w in watchers:
            w.finish_at(final)
        try:
            await asyncio.wait_for(asyncio.gather(*(w.reached.wait() for w in watchers)), _SETTLE_S)
        except TimeoutError:
            problems.append(
                "watchers did not receive the final revision: "
                + ", ".join(f"{w.log.name} at {w.seen_through}" for w in watchers)
            )
        problems += await _check_members(endpoints, final, durable)
        h.note("members checked")
        return final
    except (TimeoutError, RuntimeError, grpc.aio.AioRpcError) as error:
        h.note(f"settling failed: {error!r}")
        problems.append(f"the cluster did not settle after the faults: {error}")
        return None
    finally:
        stop.set()
        stuck = await _end(watchers, watching)
        if stuck:
            problems.append(f"watchers did not stop: {stuck}")


async def _inject_faults(h: Harness, compactor: Compactor, settings: Settings) -> list[str]:
    """Run the faults, each kind once in a shuffled round, rounds until the duration is up."""
    faults: dict[str, Callable[[], Awaitable[None]]] = {
        "kill leader": h.kill_leader,
        "kill follower": h.kill_follower,
        "kill all": h.kill_all,
        "kill during recovery": h.kill_during_recovery,
        "pause leader": h.pause_leader,
        "pause follower": h.pause_follower,
        "isolate leader": h.isolate_leader,
        "minority partition": h.partition_minority,
        "one-way cut": h.one_way_cut,
        "lossy links": h.lossy_links,
        "move leader": h.move_leader,
        "slow disk": h.slow_disk,
        "kill during snapshot": h.kill_during_snapshot,
        "kill during compaction": lambda: h.kill_during_compaction(compactor.compact_once),
        "membership change": h.membership_change,
    }
    problems = []
    end = time.monotonic() + settings.duration
    while time.monotonic() < end:
        names = sorted(faults)
        h.rng.shuffle(names)
        for name in names:
            if time.monotonic() >= end:
                break
            try:
                await faults[name]()
            except (TimeoutError, RuntimeError, grpc.RpcError) as error:
                # A member that does not come back, or a change never accepted: a finding.
                h.note(f"{name} failed: {error}")
                problems.append(f"fault {name!r} could not be repaired: {error}")
                return problems  # settling repairs what it can and reports the rest
            await asyncio.sleep(h.rng.uniform(0.5, 1.5))
    return problems


def _watch_dump(logs: list[WatchLog]) -> str:
    lines = []
    for log in logs:
        lines.append(f"== {log.name} prev_kv={log.prev_kv}")
        for n, session in enumerate(log.sessions):
            lines.append(f"  session {n}: start {session.start} on {session.member}")
            for r in session.responses:
                extra = f" compact_revision={r.compact_revision}" if r.compact_revision else ""
                lines.append(f"    {r.time:.4f} {r.kind} rev={r.revision}{extra}")
                lines += [f"      {e}" for e in r.events]
    return "\n".join(lines) + "\n"


def _summary(
    settings: Settings,
    h: Harness,
    history: list[Call],
    checked: list[Call],
    watch: WatchReport,
    lin: Report,
    lockers: list[LockWorker],
    durable: DurableWriter,
    compactor: Compactor,
    logs: list[WatchLog],
) -> str:
    kinds = Counter(f"{c.op.kind.value}:{'unknown' if c.unknown else 'ok'}" for c in history)
    sessions = sum(len(log.sessions) for log in logs)
    compacted = sum(1 for log in logs for s in log.sessions if s.compacted)
    lines = [
        f"seed={settings.seed} duration={settings.duration:.0f}s members={settings.members} "
        f"(rerun: ROBUSTNESS_SEED={settings.seed} ROBUSTNESS_DURATION={settings.duration:.0f} "
        f"ROBUSTNESS_MEMBERS={settings.members})",
        "timeline:",
        *(f"  {line}" for line in h.timeline),
        f"operations: {len(history)} {dict(sorted(kinds.items()))}",
        f"unknown writes: {sum(c.unknown for c in history)} recorded, "
        f"{sum(c.unknown for c in checked)} left after resolving from the watch log, "
        f"{len(history) - len(checked)} dropped as never applied",
        f"linearizability: {lin.verdict.value} over {len(lin.partitions)} keys",
        f"watch: {len(logs)} watchers, {sessions} sessions, {compacted} compacted starts, "
        f"covered {watch.covered}, {watch.unchecked_writes} acknowledged writes not covered",
        f"compactions: {compactor.done}",
        f"locks: {sum(w.sessions for w in lockers)} sessions, "
        f"{sum(w.stalled for w in lockers)} stalled holders, "
        f"{sum(len(w.refused) for w in lockers)} fenced writes refused",
        f"durable writes acknowledged: {len(durable.acknowledged)}",
        f"proxy: {h.proxy.unidentified} peer connections refused (sender not identified)",
    ]
    return "\n".join(lines)
