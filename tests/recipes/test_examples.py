"""Smoke test of `examples/`: each script runs to completion against a real 3-member cluster
(named by ETCDCTL_ENDPOINTS, as a user would point them away from `make run`'s) and prints what
its docstring promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.raftkv import RaftKVCluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXPECTED = {
    "service_discovery.py": "later web-2 is gone",
    "config_pubsub.py": "'feature': b'on'",
    "load_balancing.py": "after api-1 left: ['api-3', 'api-2', 'api-3', 'api-2']",
    "heartbeats_progress.py": "progress 100%",
    "distributed_lock.py": "carol releases it",
    "queues.py": "all three left together",
    "leader_election.py": "node-a stopped: leadership",
}


def test_every_example_runs_and_shows_its_point(cluster: RaftKVCluster) -> None:
    assert {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")} == set(EXPECTED)
    env = {**os.environ, "ETCDCTL_ENDPOINTS": cluster.endpoints}
    running = {
        name: subprocess.Popen(
            [sys.executable, str(EXAMPLES / name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for name in EXPECTED
    }
    failures = []
    for name, process in running.items():
        try:
            output, _ = process.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            failures.append(f"{name} timed out:\n{output}")
            continue
        if process.returncode != 0 or EXPECTED[name] not in output:
            failures.append(f"{name} exited {process.returncode}:\n{output}")
    assert not failures, "\n\n".join(failures)
