"""The local tier: control plane + node agent, then a command (pytest e2e/) against it.

    python -m e2e.local.tier [--storage etcd|raftkv] [--keep] -- pytest e2e/ -q

starts storage, kube-apiserver and kube-controller-manager (`controlplane`), the node agent
(`nodeagent`, a child process with its own log), waits until the cluster can run pods (node
registered, the `default` ServiceAccount and `kube-root-ca.crt` published), runs the command with
`KUBECONFIG` pointing at an admin kubeconfig, then tears everything down. The command's exit
code is the tier's. On failure the logs of every component are printed before the temp dir goes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from e2e.kubeapi import Kube, ns_path, wait_for
from e2e.local.controlplane import REPO, TOOLS_BIN, ControlPlane, Proc
from e2e.local.nodeagent import NODE_NAME, kill_leftovers


@contextmanager
def local_tier(root: Path, storage: str = "etcd") -> Iterator[tuple[ControlPlane, Proc]]:
    """A running control plane and node agent under `root`; everything stops on exit."""
    plane = ControlPlane(root / "control-plane", storage=storage)
    agent = Proc(
        "nodeagent",
        [
            sys.executable,
            "-m",
            "e2e.local.nodeagent",
            "--kubeconfig",
            "",
            "--root",
            str(root / "node"),
            "--apiserver-port",
            "0",
        ],
        root / "nodeagent.log",
    )
    try:
        started = time.monotonic()
        plane.start()
        agent.argv[4], agent.argv[8] = str(plane.kubeconfig), str(plane.apiserver_port)
        agent.start(env={**os.environ, "PYTHONPATH": str(REPO)})
        kube = Kube(str(plane.kubeconfig))

        def usable() -> bool:
            plane.check_alive()
            agent.check_alive()
            node = kube.find(f"/api/v1/nodes/{NODE_NAME}")
            account = kube.find(ns_path("default", "serviceaccounts", "default"))
            root_ca = kube.find(ns_path("default", "configmaps", "kube-root-ca.crt"))
            return bool(node and account and root_ca)

        wait_for("the local tier to accept pods", usable, timeout=180)
        print(f"local tier ({storage}) up in {time.monotonic() - started:.1f} s: {plane.server}")
        yield plane, agent
    finally:
        agent.stop(timeout=60)
        kill_leftovers(root / "node")
        plane.stop()


def print_logs(root: Path, lines: int = 60) -> None:
    for path in sorted(root.rglob("*.log")):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        print(f"\n===== {path.relative_to(root)} (last {len(text)} lines) =====")
        print("\n".join(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a command against the local e2e tier.")
    parser.add_argument("--storage", choices=("etcd", "raftkv"), default="etcd")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    # Not under /tmp: pods mount their own /tmp, which would hide volume sources kept there.
    # A SIGTERM (CI's time limit, a killed make) unwinds like Ctrl-C: every process is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="raftkv-e2e-", dir="/var/tmp"))
    code = 1
    try:
        with local_tier(root, args.storage) as (plane, _agent):
            env = {
                **os.environ,
                "KUBECONFIG": str(plane.kubeconfig),
                "E2E_TIER": "local",
                "E2E_LOCAL_ROOT": str(root),
                "E2E_STORAGE": args.storage,
                "E2E_HELM": os.environ.get("E2E_HELM", str(TOOLS_BIN / "helm")),
                "PYTHONPATH": str(REPO),
            }
            code = subprocess.run(command, env=env, cwd=REPO, check=False).returncode
    finally:
        if code != 0:
            print_logs(root)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
