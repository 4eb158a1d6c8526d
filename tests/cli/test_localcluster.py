"""`make run`'s launcher: member layout, output, clean shutdown, and a member's death."""

from __future__ import annotations

import contextlib
import os
import queue
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from raftkv.cli.flags import parse_server_args
from raftkv.cli.localcluster import banner, member_flags, plan_members

FAKE_MEMBER = Path(__file__).with_name("fake_member.py")


# --- layout -----------------------------------------------------------------------------------


def test_members_get_etcds_procfile_ports_and_their_own_data_dirs() -> None:
    members = plan_members(3, Path(".run"))
    assert [(m.name, m.client_port, m.peer_port) for m in members] == [
        ("infra1", 2379, 2380),
        ("infra2", 22379, 22380),
        ("infra3", 32379, 32380),
    ]
    assert [m.data_dir for m in members] == [Path(".run") / f"infra{i}" for i in (1, 2, 3)]
    shifted = plan_members(2, Path("x"), port_offset=5)
    assert [(m.client_port, m.peer_port) for m in shifted] == [(2384, 2385), (22384, 22385)]


def test_impossible_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan_members(0, Path(".run"))
    assert len(plan_members(6, Path(".run"))) == 6
    with pytest.raises(ValueError, match="would need port 72380"):
        plan_members(7, Path(".run"))


def test_each_members_flags_are_a_valid_raftkv_configuration() -> None:
    members = plan_members(3, Path(".run"))
    for member in members:
        config = parse_server_args(member_flags(member, members), {})
        assert config.name == member.name
        assert config.data_dir == str(member.data_dir)
        assert [str(u) for u in config.listen_client_urls] == [member.client_url]
        assert [str(u) for u in config.advertise_client_urls] == [member.client_url]
        assert [str(u) for u in config.initial_advertise_peer_urls] == [member.peer_url]
        assert {name: [str(u) for u in urls] for name, urls in config.initial_cluster.items()} == {
            m.name: [m.peer_url] for m in members
        }
        assert config.initial_cluster_state == "new"


def test_banner_has_ready_to_copy_commands() -> None:
    text = banner(plan_members(3, Path(".run")))
    endpoints = "127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379"
    assert f"ETCDCTL_API=3 etcdctl --endpoints={endpoints} put foo bar" in text
    assert f"raftkvctl --endpoints={endpoints} get foo" in text
    assert "http://127.0.0.1:2379,http://127.0.0.1:22379,http://127.0.0.1:32379" in text


# --- the running launcher ---------------------------------------------------------------------


class Launcher:
    """`python -m raftkv.cli.localcluster` in a subprocess, its output read line by line."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "raftkv.cli.localcluster", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        for line in self.lines:
            if text in line:
                return line
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in:\n" + "\n".join(self.lines))

    def finish(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout=timeout)
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.lines.append(line)
        return code


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port_offset(size: int) -> int:
    for _ in range(100):
        offset = random.randrange(10_000, 30_000)
        members = plan_members(size, Path("."), offset)
        if _ports_free([p for m in members for p in (m.client_port, m.peer_port)]):
            return offset
    raise RuntimeError("no free ports for a local cluster")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    with contextlib.suppress(FileNotFoundError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return False


Launch = Callable[..., Launcher]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    launched: list[Launcher] = []

    def start(*args: str, **env: str) -> Launcher:
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "FAKE_"))}
        launcher = Launcher([*args], tmp_path, {**environ, **env})
        launched.append(launcher)
        return launcher

    yield start
    for launcher in launched:
        if launcher.process.poll() is None:
            launcher.process.terminate()
            try:
                launcher.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                launcher.process.kill()
    for pid_file in tmp_path.glob("**/pid"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def fake(tmp_path: Path, *extra: str) -> list[str]:
    command = shlex.join([sys.executable, str(FAKE_MEMBER)])
    return ["--member-command", command, "--base-dir", str(tmp_path / "data"), *extra]


def member_pids(tmp_path: Path) -> list[int]:
    """The pids the fake members recorded (a member killed early may not have)."""
    return [int(path.read_text()) for path in sorted(tmp_path.glob("data/infra*/pid"))]


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_starts_the_members_prefixes_their_output_and_stops_them_all(
    launch: Launch,
    tmp_path: Path,
    stop_signal: signal.Signals,
) -> None:
    offset = free_port_offset(3)
    launcher = launch(*fake(tmp_path, "--port-offset", str(offset)), FAKE_MEMBER_LISTEN="1")
    for i in (1, 2, 3):
        client_port = 2379 + offset + (10_000 * i if i > 1 else 0)
        launcher.wait_for(f"infra{i}       | fake infra{i} up on http://127.0.0.1:{client_port}")
        launcher.wait_for(f"infra{i}       | fake infra{i} cluster ['infra1', 'infra2', 'infra3']")
    launcher.wait_for(f"etcdctl --endpoints=127.0.0.1:{2379 + offset},")
    launcher.wait_for("localcluster | all 3 members accept client connections")
    pids = member_pids(tmp_path)
    assert len(pids) == 3
    assert all(alive(pid) for pid in pids)

    launcher.process.send_signal(stop_signal)
    assert launcher.finish() == 0
    stops = [line for line in launcher.lines if "stopping on signal" in line]
    assert stops == [
        f"infra{i}       | fake infra{i} stopping on signal {signal.SIGTERM.value}"
        for i in (1, 2, 3)
    ]
    assert launcher.lines[-1] == "localcluster | stopped"
    assert not any(alive(pid) for pid in pids)


def test_a_member_that_dies_takes_the_cluster_down_with_an_error(
    launch: Launch,
    tmp_path: Path,
) -> None:
    launcher = launch(*fake(tmp_path), FAKE_MEMBER_CRASH="infra2")
    assert launcher.finish() == 1
    launcher.wait_for("infra2       | fake infra2 crashing")
    launcher.wait_for("localcluster | infra2 exited with code 3; stopping the cluster")
    assert launcher.lines[-1] == "localcluster | stopped"
    assert not any(alive(pid) for pid in member_pids(tmp_path))


def test_restart_keeps_the_data_and_fresh_wipes_it(
    launch: Launch,
    tmp_path: Path,
) -> None:
    def run_once(*extra: str) -> list[int]:
        launcher = launch(*fake(tmp_path, *extra))
        for i in (1, 2, 3):
            launcher.wait_for(f"fake infra{i} up")
        launcher.process.send_signal(signal.SIGTERM)
        assert launcher.finish() == 0
        starts = [tmp_path / "data" / f"infra{i}" / "starts" for i in (1, 2, 3)]
        return [len(path.read_text().splitlines()) for path in starts]

    assert run_once() == [1, 1, 1]
    assert run_once() == [2, 2, 2]
    assert run_once("--fresh") == [1, 1, 1]


def test_a_missing_member_program_is_reported(
    launch: Launch,
    tmp_path: Path,
) -> None:
    launcher = launch("--member-command", str(tmp_path / "no-such-server"))
    assert launcher.finish() == 2
    launcher.wait_for("localcluster | cannot start")


def test_a_bad_size_is_a_usage_error(
    launch: Launch,
) -> None:
    launcher = launch("--size", "0")
    assert launcher.finish() == 2
    launcher.wait_for("localcluster: error: --size must be at least 1 (got 0)")


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd 3.4 (make system-deps)")
def test_runs_a_real_etcd_cluster_that_etcdctl_can_use(
    launch: Launch,
    tmp_path: Path,
) -> None:
    offset = free_port_offset(3)
    launcher = launch(
        "--member-command",
        "etcd",
        "--base-dir",
        str(tmp_path / "data"),
        "--port-offset",
        str(offset),
    )
    launcher.wait_for("localcluster | all 3 members accept client connections", timeout=30)
    endpoints = launcher.wait_for("etcdctl --endpoints=").split("--endpoints=")[1].split()[0]
    env = {**os.environ, "ETCDCTL_API": "3"}
    etcdctl = ["etcdctl", f"--endpoints={endpoints}", "--command-timeout=10s"]
    put = subprocess.run([*etcdctl, "put", "foo", "bar"], env=env, capture_output=True, text=True)
    assert put.stdout.strip() == "OK", put.stderr
    get = subprocess.run(
        [*etcdctl, "get", "foo", "--print-value-only"], env=env, capture_output=True, text=True
    )
    assert get.stdout.strip() == "bar"
    launcher.process.send_signal(signal.SIGINT)
    assert launcher.finish() == 0
