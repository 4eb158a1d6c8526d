"""Run the same etcdctl command against a real etcd 3.4 cluster and a raftkv cluster, and compare.

The comparison is of what a user of `/usr/bin/etcdctl` sees: stdout, stderr and the exit code,
after `tests.compat.normalize` has replaced what legitimately differs between two clusters.
Revisions are *not* normalised: both clusters start fresh and receive the same writes in the
same order, so every revision must match. To keep that true across tests that share a pair of
clusters:

- `Pair.case()` first aligns the two clusters' revisions (after a failed test left them apart,
  by putting a padding key `/000-align` on the one behind), then hands out a fresh key prefix
  `/NNN-<test name>/`. Prefixes grow with each case, so `--from-key` reads in a case see only
  that case's keys.
- Commands run on etcd first, then on raftkv, one at a time, against all three members unless a
  test names one (`member="m1"`).

Other comparison suites (watch, lease) reuse this module: `start_pair`, `Pair.case`,
`Case.check`/`Case.run`, the `proto=` decoder for `-w protobuf`, and `rules=` for
command-specific normalisation.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.compat.normalize import ClusterIdentity, Normalizer, Rule
from tests.support.etcd import ETCDCTL_BIN, EtcdCluster, start_etcd_cluster
from tests.support.raftkv import RaftKVCluster, start_raftkv_cluster

ALIGN_KEY = b"/000-align"
_T = TypeVar("_T")
# Generous deadlines: the clusters share the machine with other suites. etcdctl's own
# timeouts (dial 2 s, command 5 s) are raised likewise; they change no output.
_WAIT_S = 30.0
_RPC_TIMEOUT_S = 30.0
_CTL_TIMEOUTS = ("--dial-timeout=10s", "--command-timeout=30s")


@dataclass(frozen=True)
class Outcome:
    """One etcdctl run as the comparison sees it: normalised output and the exit code."""

    stdout: str
    stderr: str
    code: int


@dataclass(frozen=True)
class CtlResult:
    """One etcdctl run, raw."""

    stdout: bytes
    stderr: bytes
    code: int


def run_etcdctl(
    endpoints: str, args: Sequence[str], input: bytes | None = None, timeout: float = 60.0
) -> CtlResult:
    """`etcdctl --endpoints=<endpoints> <args>` with API v3 and no ETCDCTL_* from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    done = subprocess.run(
        [str(ETCDCTL_BIN), f"--endpoints={endpoints}", *_CTL_TIMEOUTS, *args],
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    return CtlResult(done.stdout, done.stderr, done.returncode)


@dataclass
class System:
    """One cluster under comparison, by the name tests print (`etcd`, `raftkv`)."""

    label: str
    cluster: EtcdCluster | RaftKVCluster
    identity: ClusterIdentity = field(init=False)
    normalizer: Normalizer = field(init=False)

    def __post_init__(self) -> None:
        self.identity = self._wait_identity()
        self.normalizer = Normalizer(self.identity)

    @property
    def member_names(self) -> list[str]:
        return [m.name for m in self.cluster.members]

    def endpoints(self, member: str | None = None) -> str:
        if member is None:
            return self.cluster.endpoints
        return next(m.client_url for m in self.cluster.members if m.name == member)

    def etcdctl(
        self, *args: str, input: str | bytes | None = None, member: str | None = None
    ) -> CtlResult:
        data = input.encode() if isinstance(input, str) else input
        return run_etcdctl(self.endpoints(member), args, data)

    def normalize(
        self, result: CtlResult, rules: Sequence[Rule] = (), proto: type[Message] | None = None
    ) -> Outcome:
        if proto is not None and result.code == 0:
            message = proto.FromString(result.stdout)
            stdout = text_format.MessageToString(message, print_unknown_fields=True)
        else:
            stdout = result.stdout.decode(errors="backslashreplace")
        stderr = result.stderr.decode(errors="backslashreplace")
        return Outcome(
            self.normalizer.text(stdout, rules), self.normalizer.text(stderr, rules), result.code
        )

    def _wait_identity(self) -> ClusterIdentity:
        # raftkv members publish their names and client URLs through Raft after they serve.
        deadline = time.monotonic() + _WAIT_S
        while True:
            result = run_etcdctl(self.cluster.endpoints, ["member", "list", "-w", "json"])
            if result.code == 0:
                identity = ClusterIdentity.from_member_list_json(result.stdout.decode())
                if sorted(m.name for m in identity.members) == sorted(self.member_names) and all(
                    m.client_urls for m in identity.members
                ):
                    return identity
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.label}: member list incomplete: {result}")
            time.sleep(0.05)

    # ---- revisions, read through gRPC so they cost no etcdctl process ----------------------

    def _target(self, member: str) -> str:
        return self.endpoints(member).removeprefix("http://")

    def _rpc(self, member: str, call: Callable[[grpc.Channel], _T]) -> _T:
        """One gRPC call to `member`; a failure carries the member's log (a crash shows)."""
        with grpc.insecure_channel(self._target(member)) as channel:
            try:
                return call(channel)
            except grpc.RpcError as error:
                log = next(m for m in self.cluster.members if m.name == member).log_tail()
                message = f"{self.label} {member}: {error}\n--- its log:\n{log}"
                raise RuntimeError(message) from error

    def revision(self, member: str = "m0") -> int:
        """The store revision `member` reports to a linearizable read."""
        request = rpc_pb2.RangeRequest(key=ALIGN_KEY)
        return self._rpc(
            member,
            lambda ch: rpc_pb2_grpc.KVStub(ch).Range(request, timeout=_RPC_TIMEOUT_S),
        ).header.revision

    def put(self, key: bytes, value: bytes, member: str = "m0") -> int:
        request = rpc_pb2.PutRequest(key=key, value=value)
        return self._rpc(
            member, lambda ch: rpc_pb2_grpc.KVStub(ch).Put(request, timeout=_RPC_TIMEOUT_S)
        ).header.revision

    def status(self, member: str) -> rpc_pb2.StatusResponse:
        request = rpc_pb2.StatusRequest()
        return self._rpc(
            member,
            lambda ch: rpc_pb2_grpc.MaintenanceStub(ch).Status(request, timeout=_RPC_TIMEOUT_S),
        )

    def wait_applied(self) -> None:
        """Wait until every member has applied every entry committed so far (writes and
        compactions alike), so serializable reads on any member see the latest state."""
        target = max(self.status(name).raftIndex for name in self.member_names)
        deadline = time.monotonic() + _WAIT_S
        for name in self.member_names:
            while self.status(name).raftAppliedIndex < target:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.label} {name} did not apply index {target}")
                time.sleep(0.01)


class ComparisonError(AssertionError):
    pass


@dataclass
class Pair:
    """A real etcd cluster and a raftkv cluster of the same size and flags, started together."""

    etcd: System
    raftkv: System
    cases: int = 0

    @property
    def systems(self) -> tuple[System, System]:
        return self.etcd, self.raftkv

    def stop(self) -> None:
        for system in self.systems:
            system.cluster.stop()

    def align(self) -> int:
        """Bring both clusters to the same revision; returns it."""
        while True:
            revisions = [s.revision() for s in self.systems]
            if revisions[0] == revisions[1]:
                return revisions[0]
            behind = self.systems[revisions.index(min(revisions))]
            behind.put(ALIGN_KEY, b"")

    def wait_applied(self) -> None:
        for system in self.systems:
            system.wait_applied()

    def case(self, name: str) -> Case:
        """Start a test case: aligned revisions and a fresh key prefix."""
        self.cases += 1
        base = self.align()
        slug = re.sub(r"[^A-Za-z0-9_]+", "-", name).strip("-")
        return Case(self, f"/{self.cases:03d}-{slug}/", base)


@dataclass
class Case:
    """One test's view of a pair: its key prefix and the revision both clusters started at."""

    pair: Pair
    prefix: str
    base: int

    def key(self, name: str = "") -> str:
        return self.prefix + name

    def rev(self, offset: int) -> int:
        """The revision `offset` writes after this case started (same on both clusters)."""
        return self.base + offset

    def run(
        self,
        *args: str,
        input: str | bytes | None = None,
        member: str | None = None,
        rules: Sequence[Rule] = (),
        proto: type[Message] | None = None,
    ) -> tuple[Outcome, Outcome]:
        """Run one etcdctl command on etcd, then on raftkv; both normalised outcomes."""
        etcd, raftkv = (
            s.normalize(s.etcdctl(*args, input=input, member=member), rules, proto)
            for s in self.pair.systems
        )
        return etcd, raftkv

    def check(
        self,
        *args: str,
        input: str | bytes | None = None,
        member: str | None = None,
        rules: Sequence[Rule] = (),
        proto: type[Message] | None = None,
    ) -> Outcome:
        """Run on both and require the same normalised outcome; returns it."""
        etcd, raftkv = self.run(*args, input=input, member=member, rules=rules, proto=proto)
        if etcd != raftkv:
            raise ComparisonError(_describe(args, input, etcd, raftkv))
        return etcd


def _describe(
    args: Sequence[str], input: str | bytes | None, etcd: Outcome, raftkv: Outcome
) -> str:
    lines = [f"etcdctl {' '.join(args)} differs" + (f" (stdin {input!r:.200})" if input else "")]
    for label, outcome in (("etcd", etcd), ("raftkv", raftkv)):
        lines.append(f"--- {label}: exit {outcome.code}")
        lines.append(f"stdout: {outcome.stdout!r}")
        lines.append(f"stderr: {outcome.stderr!r}")
    return "\n".join(lines)


def start_pair(root: Path, size: int = 3, **flags: str | int) -> Pair:
    """Start etcd and raftkv clusters of `size` members with the same flags, concurrently."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        etcd_future = pool.submit(start_etcd_cluster, root, size, **flags)
        raftkv_future = pool.submit(start_raftkv_cluster, root, size, **flags)
        clusters: list[EtcdCluster | RaftKVCluster] = []
        error: BaseException | None = None
        for future in (etcd_future, raftkv_future):
            try:
                clusters.append(future.result())
            except BaseException as exc:
                error = exc
    try:
        if error is not None:
            raise error
        return Pair(System("etcd", clusters[0]), System("raftkv", clusters[1]))
    except BaseException:
        for cluster in clusters:
            cluster.stop()
        raise
