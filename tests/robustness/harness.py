"""A real raftkv cluster whose peer links run through a `FaultProxy`, and the faults to inject.

Built on `tests.support.raftkv` (processes, data dirs, cleanup) with the proxy advertised as
every member's peer URL. Blocking process and RPC work is done in threads (`asyncio.to_thread`)
so the workload on the event loop keeps running while a fault is injected; every fault notes
what it did on a timeline, printed with the report.

Faults run one at a time, each injected, held for a while and then repaired, so at any moment
the cluster has at most one thing wrong with it and should make progress again once it is
repaired. The same seed gives the same schedule of faults (their timing still depends on the
machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.support import slowdisk
from tests.support.etcd import free_port
from tests.support.faultproxy import FaultProxy
from tests.support.raftkv import RaftKVCluster, RaftKVMember, plan_raftkv_cluster, wait_serving

_DEADLINE_S = 60.0
_SLOW_DISK = Path(slowdisk.__file__)


def _slow_disk_file(member: RaftKVMember) -> Path:
    return member.data_dir.with_suffix(".slowdisk")


@dataclass
class Harness:
    cluster: RaftKVCluster
    proxy: FaultProxy
    rng: random.Random
    snapshot_count: int
    started: float = field(default_factory=time.monotonic)
    timeline: list[str] = field(default_factory=list)
    added: int = 0

    # ---- setup ---------------------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def running(
        cls, root: Path, *, size: int, seed: int, snapshot_count: int = 200, **flags: str | int
    ) -> Iterator[Harness]:
        holder: dict[str, RaftKVCluster] = {}

        def pids() -> dict[str, int]:
            cluster = holder.get("cluster")
            if cluster is None:
                return {}
            return {m.name: m.process.pid for m in cluster.members if m.process and m.alive}

        proxy = FaultProxy(pids, seed=seed)
        try:
            cluster = plan_raftkv_cluster(
                root,
                size,
                peer_proxy=proxy.add_member,
                snapshot_count=snapshot_count,
                **flags,
            )
            for member in cluster.members:
                member.launcher = (str(_SLOW_DISK),)
                member.args.append(f"--slow-disk-file={_slow_disk_file(member)}")
            holder["cluster"] = cluster
            with cluster:
                cluster.start()
                yield cls(cluster, proxy, random.Random(seed), snapshot_count)
        finally:
            proxy.stop()

    # ---- looking at the cluster ----------------------------------------------------------------

    def note(self, text: str) -> None:
        now = time.monotonic()
        # Relative for reading, absolute (monotonic) to find the moment in history.txt.
        self.timeline.append(f"{now - self.started:8.2f}s (t={now:.2f}) {text}")

    @property
    def voters(self) -> list[RaftKVMember]:
        """The founding members (the workload's endpoints); added members come and go."""
        return [m for m in self.cluster.members if not m.name.startswith("a")]

    def member(self, name: str) -> RaftKVMember:
        return next(m for m in self.cluster.members if m.name == name)

    async def leader(self) -> RaftKVMember:
        return await asyncio.to_thread(self.cluster.leader)

    async def follower(self) -> RaftKVMember:
        leader = await self.leader()
        return self.rng.choice([m for m in self.voters if m is not leader])

    async def member_id(self, member: RaftKVMember) -> int:
        status = await asyncio.to_thread(member.status, 5.0)
        return status.header.member_id

    # ---- repairs -------------------------------------------------------------------------------

    async def restart(self, member: RaftKVMember) -> None:
        if member.alive:
            member.kill(signal.SIGKILL)
        member.start()
        await asyncio.to_thread(wait_serving, member, _DEADLINE_S)

    async def repair_all(self) -> None:
        """Heal the network, resume paused members, restart dead ones, wait until all serve."""
        self.proxy.heal()
        for member in self.voters:
            _slow_disk_file(member).unlink(missing_ok=True)
            if member.alive:
                member.kill(signal.SIGCONT)
        for member in self.voters:
            if not member.alive:
                self.note(f"restart {member.name} (repair)")
                member.start()
        for member in self.voters:
            await asyncio.to_thread(wait_serving, member, _DEADLINE_S)

    # ---- faults --------------------------------------------------------------------------------

    async def hold(self, low: float = 1.0, high: float = 3.0) -> None:
        await asyncio.sleep(self.rng.uniform(low, high))

    async def kill_leader(self) -> None:
        await self._kill_and_restart(await self.leader(), "leader")

    async def kill_follower(self) -> None:
        await self._kill_and_restart(await self.follower(), "follower")

    async def _kill_and_restart(self, member: RaftKVMember, role: str) -> None:
        self.note(f"SIGKILL {role} {member.name}")
        member.kill(signal.SIGKILL)
        await self.hold(0.5, 2.0)
        self.note(f"restart {member.name}")
        await self.restart(member)

    async def kill_all(self) -> None:
        """Every member SIGKILLed at once (a power cut), then all restarted."""
        self.note("SIGKILL all members")
        for member in self.voters:
            member.kill(signal.SIGKILL)
        await self.hold(0.5, 1.5)
        for member in self.voters:
            member.start()
        for member in self.voters:
            await asyncio.to_thread(wait_serving, member, _DEADLINE_S)
        self.note("all members restarted")

    async def kill_during_recovery(self) -> None:
        """SIGKILL a member, then again while it restarts (replaying its WAL, catching up)."""
        member = self.rng.choice(self.voters)
        self.note(f"SIGKILL {member.name}")
        member.kill(signal.SIGKILL)
        await self.hold(0.3, 1.0)
        member.start()
        await asyncio.sleep(self.rng.uniform(0.1, 1.5))
        self.note(f"SIGKILL {member.name} while it restarts")
        member.kill(signal.SIGKILL)
        await self.hold(0.3, 1.0)
        self.note(f"restart {member.name}")
        await self.restart(member)

    async def pause_leader(self) -> None:
        await self._pause(await self.leader(), "leader")

    async def pause_follower(self) -> None:
        await self._pause(await self.follower(), "follower")

    async def _pause(self, member: RaftKVMember, role: str) -> None:
        self.note(f"SIGSTOP {role} {member.name}")
        member.kill(signal.SIGSTOP)
        await self.hold(1.0, 3.0)
        self.note(f"SIGCONT {member.name}")
        member.kill(signal.SIGCONT)

    async def isolate_leader(self) -> None:
        leader = await self.leader()
        self.note(f"partition: leader {leader.name} isolated")
        self.proxy.isolate(leader.name)
        await self.hold(2.0, 4.0)
        self.proxy.heal()
        self.note("heal")

    async def partition_minority(self) -> None:
        """Split the founding members into a minority and a majority, at random."""
        names = [m.name for m in self.voters]
        self.rng.shuffle(names)
        minority, majority = names[: (len(names) - 1) // 2], names[(len(names) - 1) // 2 :]
        self.note(f"partition: {minority} | {majority}")
        self.proxy.partition(minority, majority)
        await self.hold(2.0, 4.0)
        self.proxy.heal()
        self.note("heal")

    async def one_way_cut(self) -> None:
        """Messages lost in one direction only: the leader's to a follower, or a follower's
        to the leader, chosen at random."""
        leader, follower = await self.leader(), await self.follower()
        a, b = (leader, follower) if self.rng.random() < 0.5 else (follower, leader)
        self.note(f"one-way cut {a.name} -> {b.name}")
        self.proxy.cut(a.name, b.name)
        await self.hold(2.0, 4.0)
        self.proxy.heal()
        self.note("heal")

    async def lossy_links(self) -> None:
        """Every link of one member delayed and resetting connections now and then."""
        victim = self.rng.choice(self.voters).name
        delay, rate = self.rng.uniform(0.005, 0.05), self.rng.uniform(0.002, 0.02)
        self.note(f"lossy links of {victim}: delay {delay * 1000:.0f} ms, reset rate {rate:.3f}")
        for other in self.proxy.names:
            if other != victim:
                self.proxy.set_link(victim, other, delay=delay, reset_rate=rate)
                self.proxy.set_link(other, victim, delay=delay, reset_rate=rate)
        await self.hold(3.0, 5.0)
        self.proxy.heal()
        self.note("heal")

    async def slow_disk(self) -> None:
        """Slow one member's WAL fsyncs (the leader's or a follower's) for a few seconds."""
        member = await (self.leader() if self.rng.random() < 0.5 else self.follower())
        delay = self.rng.uniform(0.05, 0.3)
        self.note(f"slow disk on {member.name}: +{delay * 1000:.0f} ms per fsync")
        path = _slow_disk_file(member)
        path.write_text(f"{delay}\n")
        try:
            await self.hold(3.0, 5.0)
        finally:
            path.unlink(missing_ok=True)
        self.note("disk back to normal")

    async def move_leader(self) -> None:
        leader, target = await self.leader(), await self.follower()
        target_id = await self.member_id(target)
        self.note(f"MoveLeader {leader.name} -> {target.name}")

        def move() -> str:
            with grpc.insecure_channel(leader.target) as channel:
                stub = rpc_pb2_grpc.MaintenanceStub(channel)
                try:
                    stub.MoveLeader(rpc_pb2.MoveLeaderRequest(targetID=target_id), timeout=10)
                    return "done"
                except grpc.RpcError as error:
                    return f"refused: {error.details()}"  # e.g. leadership changed meanwhile

        self.note(f"MoveLeader {await asyncio.to_thread(move)}")

    async def kill_during_snapshot(self) -> None:
        """SIGKILL a member as soon as its snapshot directory changes (a snapshot being
        written, or just written), or after a few seconds if none comes."""
        member = self.rng.choice(self.voters)
        snap_dir = member.data_dir / "member" / "snap"

        def listing() -> frozenset[str]:
            with contextlib.suppress(OSError):
                return frozenset(p.name for p in snap_dir.iterdir())
            return frozenset()

        before = listing()
        deadline = time.monotonic() + 5.0
        while listing() == before and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        during = "during/after a snapshot" if listing() != before else "(no snapshot came)"
        self.note(f"SIGKILL {member.name} {during}")
        member.kill(signal.SIGKILL)
        await self.hold(0.5, 1.5)
        self.note(f"restart {member.name}")
        await self.restart(member)

    async def kill_during_compaction(self, compact: Callable[[], Coroutine[Any, Any, int]]) -> None:
        """Ask for a compaction and SIGKILL a member right away, while it applies it."""
        member = self.rng.choice(self.voters)
        task = asyncio.create_task(compact())
        await asyncio.sleep(self.rng.uniform(0.0, 0.05))
        self.note(f"SIGKILL {member.name} during compaction")
        member.kill(signal.SIGKILL)
        with contextlib.suppress(Exception):
            revision = await task
            self.note(f"compaction at {revision}")
        await self.hold(0.5, 1.5)
        self.note(f"restart {member.name}")
        await self.restart(member)

    async def membership_change(self) -> None:
        """Add a learner, start it, promote it once it caught up, then remove it again."""
        self.added += 1
        name = f"a{self.added}"
        listen = free_port()
        advertised = f"http://127.0.0.1:{self.proxy.add_member(name, listen)}"
        client_url = f"http://127.0.0.1:{free_port()}"
        self.note(f"MemberAdd learner {name}")
        await asyncio.to_thread(
            self._admin,
            lambda c: c.MemberAdd(
                rpc_pb2.MemberAddRequest(peerURLs=[advertised], isLearner=True), timeout=10
            ),
            "Peer URLs already exists",  # an earlier attempt did add it
        )
        listed = await asyncio.to_thread(
            self._admin, lambda c: c.MemberList(rpc_pb2.MemberListRequest(), timeout=10)
        )
        member_id = next(m.ID for m in listed.members if advertised in m.peerURLs)
        initial = ",".join(
            f"{m.name or name}={m.peerURLs[0]}" for m in listed.members if m.peerURLs
        )
        template = self.voters[0]
        args = [a for a in template.args if not a.startswith(_PER_MEMBER_FLAGS)]
        args += [
            f"--name={name}",
            f"--data-dir={self.cluster.root / f'{name}.raftkv'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls=http://127.0.0.1:{listen}",
            f"--initial-advertise-peer-urls={advertised}",
            f"--initial-cluster={initial}",
            "--initial-cluster-state=existing",
        ]
        member = RaftKVMember(
            name,
            client_url,
            advertised,
            self.cluster.root / f"{name}.raftkv",
            self.cluster.root / f"{name}.log",
            args,
            listen_peer_url=f"http://127.0.0.1:{listen}",
        )
        member.launcher = (str(_SLOW_DISK),)
        member.args.append(f"--slow-disk-file={_slow_disk_file(member)}")
        self.cluster.members.append(member)
        member.start()
        await asyncio.to_thread(
            self._admin,
            lambda c: c.MemberPromote(rpc_pb2.MemberPromoteRequest(ID=member_id), timeout=10),
            "can only promote a learner member",
        )
        self.note(f"MemberPromote {name}")
        await self.hold(1.0, 2.0)
        await asyncio.to_thread(
            self._admin,
            lambda c: c.MemberRemove(rpc_pb2.MemberRemoveRequest(ID=member_id), timeout=10),
            "member not found",
        )
        self.note(f"MemberRemove {name}")
        deadline = time.monotonic() + 30
        while member.alive and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        member.kill(signal.SIGKILL)

    def _admin(
        self, call: Callable[[rpc_pb2_grpc.ClusterStub], Any], already_done: str = "\0"
    ) -> Any:
        """Run a Cluster call against the founding members until one accepts it (changes are
        refused while peers reconnect or a learner catches up, as etcd refuses them). An error
        ending with `already_done` means an earlier attempt whose answer was lost succeeded."""
        deadline = time.monotonic() + _DEADLINE_S
        last = ""
        while time.monotonic() < deadline:
            for member in self.voters:
                if not member.alive:
                    continue
                with grpc.insecure_channel(member.target) as channel:
                    try:
                        return call(rpc_pb2_grpc.ClusterStub(channel))
                    except grpc.RpcError as error:
                        if (error.details() or "").endswith(already_done):
                            return None
                        last = f"{member.name}: {error.code().name} {error.details()}"
            time.sleep(0.3)
        raise TimeoutError(f"membership change not accepted: {last}")


_PER_MEMBER_FLAGS = (
    "--name=",
    "--data-dir=",
    "--listen-client-urls=",
    "--advertise-client-urls=",
    "--listen-peer-urls=",
    "--initial-advertise-peer-urls=",
    "--initial-cluster=",
    "--initial-cluster-state=",
    "--initial-cluster-token=",
    "--slow-disk-file=",
)
