"""`make run`: a local cluster of raftkv members on 127.0.0.1, in the style of etcd's Procfile.

Members are separate `raftkv` processes started with the same etcd flags an operator would
write, so what runs here is what runs in production: names infra1..N, client ports 2379, 22379,
32379... and peer ports one above, data under `.run/<name>`. Restarting with the data dirs in
place restarts the same members (a member with data ignores the bootstrap flags).

The launcher owns its members: each runs in its own process group, so Ctrl-C in the terminal
reaches only the launcher, which then stops the members one by one with SIGTERM (SIGKILL after
a grace period). A member that exits on its own takes the cluster down with a non-zero exit
code, so a crash never hides behind the other members' logs. Each member's output is prefixed
with its name, one thread per member copying lines.

`--member-command` swaps the member program while keeping the flags: `--member-command etcd`
runs a real etcd cluster the same way (handy for side-by-side comparisons), and tests use it to
run a small fake member.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from raftkv.node.config import format_initial_cluster

FIRST_CLIENT_PORT = 2379
PORT_STRIDE = 10_000
CLUSTER_TOKEN = "raftkv-local-cluster"
STOP_GRACE_SECONDS = 10.0
POLL_SECONDS = 0.1
LAUNCHER = "localcluster"


@dataclass(frozen=True)
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


def plan_members(size: int, base_dir: Path, port_offset: int = 0) -> list[Member]:
    """infra1 gets 2379/2380, infraN (N > 1) gets (N*10000 + 2379)/(N*10000 + 2380)."""
    if size < 1:
        raise ValueError(f"--size must be at least 1 (got {size})")
    members = []
    for index in range(size):
        client_port = FIRST_CLIENT_PORT + port_offset + (PORT_STRIDE * (index + 1) if index else 0)
        if client_port < 1 or client_port + 1 > 65535:
            raise ValueError(
                f"member {index + 1} would need port {client_port + 1}: use a smaller --size "
                "or --port-offset"
            )
        name = f"infra{index + 1}"
        members.append(Member(name, client_port, client_port + 1, base_dir / name))
    return members


def member_flags(member: Member, members: Sequence[Member]) -> list[str]:
    """The etcd flags that start `member` as part of `members`."""
    cluster = format_initial_cluster({m.name: [m.peer_url] for m in members})
    return [
        f"--name={member.name}",
        f"--data-dir={member.data_dir}",
        f"--listen-client-urls={member.client_url}",
        f"--advertise-client-urls={member.client_url}",
        f"--listen-peer-urls={member.peer_url}",
        f"--initial-advertise-peer-urls={member.peer_url}",
        f"--initial-cluster={cluster}",
        f"--initial-cluster-token={CLUSTER_TOKEN}",
        "--initial-cluster-state=new",
    ]


def banner(members: Sequence[Member]) -> str:
    endpoints = ",".join(f"127.0.0.1:{m.client_port}" for m in members)
    names = " ".join(m.name for m in members)
    data = members[0].data_dir.parent
    return "\n".join(
        [
            "",
            f"{len(members)} members ({names}), data under {data}/",
            f"client endpoints: {','.join(m.client_url for m in members)}",
            "",
            "try:",
            f"  ETCDCTL_API=3 etcdctl --endpoints={endpoints} put foo bar",
            f"  ETCDCTL_API=3 etcdctl --endpoints={endpoints} get foo",
            f"  ETCDCTL_API=3 etcdctl --endpoints={endpoints} member list -w table",
            f"  ETCDCTL_API=3 etcdctl --endpoints={endpoints} endpoint status -w table",
            f"  raftkvctl --endpoints={endpoints} get foo",
            "",
            "Ctrl-C stops the cluster.",
            "",
        ]
    )


class LocalCluster:
    """Starts, watches and stops the member processes; all output goes to `out`."""

    def __init__(
        self, members: Sequence[Member], member_command: Sequence[str], out: TextIO
    ) -> None:
        self.members = list(members)
        self._command = list(member_command)
        self._out = out
        self._lock = threading.Lock()
        self._width = max(len(LAUNCHER), *(len(m.name) for m in members))
        self._processes: dict[str, subprocess.Popen[str]] = {}
        self._copiers: list[threading.Thread] = []

    def say(self, text: str, source: str = LAUNCHER) -> None:
        with self._lock:
            for line in text.splitlines() or [""]:
                self._out.write(f"{source:<{self._width}} | {line}\n")
            self._out.flush()

    def show(self, text: str) -> None:
        """Print a block as is, so its commands can be copied without a prefix."""
        with self._lock:
            self._out.write(text + "\n")
            self._out.flush()

    def start(self) -> None:
        # ETCD_* variables would clash with the flags (etcd 3.4 refuses both at once).
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        env["PYTHONUNBUFFERED"] = "1"
        for member in self.members:
            member.data_dir.parent.mkdir(parents=True, exist_ok=True)
            process = subprocess.Popen(
                [*self._command, *member_flags(member, self.members)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                env=env,
                process_group=0,
            )
            self._processes[member.name] = process
            copier = threading.Thread(
                target=self._copy_output, args=(member.name, process), daemon=True
            )
            copier.start()
            self._copiers.append(copier)
            self.say(f"started {member.name} (pid {process.pid})")

    def _copy_output(self, name: str, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.say(line.rstrip("\n"), source=name)

    def exited(self) -> tuple[str, int] | None:
        """The first member found to have exited, with its exit code."""
        for name, process in self._processes.items():
            code = process.poll()
            if code is not None:
                return name, code
        return None

    def all_accept_connections(self) -> bool:
        for member in self.members:
            try:
                with socket.create_connection(("127.0.0.1", member.client_port), timeout=0.2):
                    pass
            except OSError:
                return False
        return True

    def stop(self) -> None:
        """Stop the members one at a time: SIGTERM, then SIGKILL after the grace period.

        One at a time, because a leader that is asked to stop hands its leadership over first;
        with every member stopping at once it would wait for a successor that is gone.
        """
        for name, process in self._processes.items():
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.say(f"{name} did not stop within {STOP_GRACE_SECONDS:.0f}s; killing it")
                process.kill()
                process.wait()
        for copier in self._copiers:
            copier.join()


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m raftkv.cli.localcluster",
        description="Run a local raftkv cluster on 127.0.0.1 (what `make run` does).",
        allow_abbrev=False,
    )
    parser.add_argument("--size", type=int, default=3, help="number of members (default 3)")
    parser.add_argument(
        "--base-dir", type=Path, default=Path(".run"), help="data directory root (default .run)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="wipe the members' data before starting"
    )
    parser.add_argument(
        "--port-offset",
        type=int,
        default=0,
        help="add this to every port, to run a second cluster beside the first",
    )
    parser.add_argument(
        "--member-command",
        default=shlex.join([sys.executable, "-m", "raftkv.cli.server"]),
        help="program each member runs, given etcd flags (default: raftkv; try 'etcd')",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    try:
        members = plan_members(args.size, args.base_dir, args.port_offset)
    except ValueError as error:
        print(f"localcluster: error: {error}", file=sys.stderr)
        return 2
    if args.fresh:
        for member in members:
            shutil.rmtree(member.data_dir, ignore_errors=True)

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    cluster = LocalCluster(members, shlex.split(args.member_command), sys.stdout)
    try:
        cluster.start()
    except OSError as error:
        cluster.say(f"cannot start {args.member_command!r}: {error}")
        cluster.stop()
        return 2
    cluster.show(banner(members))
    status = _watch(cluster, stop)
    cluster.stop()
    cluster.say("stopped")
    return status


def _watch(cluster: LocalCluster, stop: threading.Event) -> int:
    """Wait for a stop request (0) or a member's death (1); say when all members are up."""
    announced_ready = False
    while not stop.wait(POLL_SECONDS):
        dead = cluster.exited()
        if dead is not None:
            cluster.say(f"{dead[0]} exited with code {dead[1]}; stopping the cluster")
            return 1
        if not announced_ready and cluster.all_accept_connections():
            cluster.say(f"all {len(cluster.members)} members accept client connections")
            announced_ready = True
    cluster.say("stopping the cluster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
