"""etcdctl's watch and lease commands give the same output against raftkv as against etcd 3.4.

Watches run until killed, so each is started as a process and read until it printed what the
writes must produce (or a deadline passed), then stopped; what it printed is compared. Lease IDs
are chosen by each server, so lease commands are run per system with that system's ID, which the
comparison then names `<lease>`; remaining TTLs depend on timing and are compared as `<n>`.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from collections.abc import Callable, Sequence

import pytest

from tests.compat.harness import Case, ComparisonError, CtlResult, Outcome, System
from tests.support.etcd import ETCDCTL_BIN

WATCH_DEADLINE_S = 15.0
# The same timings on both, so both derive the same minimum lease TTL from them.
COMPAT_CLUSTER_FLAGS = {"heartbeat_interval": 100, "election_timeout": 1000}


def watch_outcome(system: System, args: Sequence[str], lines: int) -> Outcome:
    """Run `etcdctl watch ARGS` until it printed `lines` lines (or exited), then stop it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    process = subprocess.Popen(
        [str(ETCDCTL_BIN), f"--endpoints={system.endpoints()}", "watch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert process.stdout is not None
    printed = b""
    deadline = time.monotonic() + WATCH_DEADLINE_S
    while printed.count(b"\n") < lines and time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break  # etcdctl exited (a canceled watch)
            printed += chunk
    process.kill()
    _, stderr = process.communicate(timeout=10)
    result = CtlResult(printed, stderr, 0 if printed.count(b"\n") >= lines else 1)
    return system.normalize(result)


def check_watch(compat: Case, args: Sequence[str], lines: int) -> Outcome:
    """Both print the same; unless the watch ends early, both print all `lines` in time."""
    etcd, raftkv = (watch_outcome(s, args, lines) for s in compat.pair.systems)
    if etcd != raftkv:
        raise ComparisonError(f"etcdctl watch {' '.join(args)} differs:\n{etcd}\n{raftkv}")
    return etcd


def test_watch_replays_history_from_a_revision(compat: Case) -> None:
    k, check = compat.key, compat.check
    check("put", k("a"), "1")
    check("put", k("b"), "2")
    check("put", k("a"), "3")
    check("del", k("b"))
    check("put", k("c"), "4")
    # Every event: type, key, value (3 lines); with --prev-kv the previous key/value too.
    replay = check_watch(compat, ["--prefix", k(), f"--rev={compat.rev(1)}"], 15)
    assert replay.code == 0 and replay.stdout.splitlines()[:3] == ["PUT", k("a"), "1"]
    with_prev = check_watch(
        compat, ["--prefix", k(), f"--rev={compat.rev(2)}", "--prev-kv"], 4 * 3 + 2 * 2
    )
    assert with_prev.code == 0
    assert check_watch(compat, [k("a"), f"--rev={compat.rev(1)}"], 6).code == 0
    # One revision, one response: how responses batch revisions is not etcd's contract.
    assert check_watch(compat, [k("c"), f"--rev={compat.rev(5)}", "-w", "json"], 1).code == 0


def test_watch_from_a_compacted_revision_is_canceled(compat: Case) -> None:
    k, check = compat.key, compat.check
    check("put", k("a"), "1")
    check("put", k("a"), "2")
    check("put", k("a"), "3")
    check("compaction", str(compat.rev(3)))
    canceled = check_watch(compat, [k("a"), f"--rev={compat.rev(1)}"], 1)
    assert "compacted" in canceled.stdout + canceled.stderr


def lease_rule(lease_id: str) -> Callable[[str], str]:
    decimal = str(int(lease_id, 16))

    def rule(text: str) -> str:
        text = text.replace(lease_id, "<lease>").replace(decimal, "<lease>")
        text = re.sub(r"remaining\(\d+s\)", "remaining(<n>s)", text)
        # etcd lists attached keys in Go map order, which is random: compare them as a set.
        return re.sub(
            r"attached keys\(\[(.*)\]\)",
            lambda m: "attached keys([" + " ".join(sorted(m.group(1).split(" "))) + "])",
            text,
        )

    return rule


def grant(system: System, ttl: int) -> str:
    result = system.etcdctl("lease", "grant", str(ttl))
    match = re.search(rb"lease ([0-9a-f]+) granted", result.stdout)
    assert match, result
    return match.group(1).decode()


def check_each(
    compat: Case, leases: dict[str, str], args: Callable[[str], Sequence[str]]
) -> Outcome:
    """Run a command needing each system's own lease ID; require the same outcome."""
    outcomes = [
        s.normalize(s.etcdctl(*args(leases[s.label])), [lease_rule(leases[s.label])])
        for s in compat.pair.systems
    ]
    if outcomes[0] != outcomes[1]:
        raise ComparisonError(f"lease command differs:\n{outcomes[0]}\n{outcomes[1]}")
    return outcomes[0]


def test_lease_grant_put_timetolive_keepalive_list_revoke(compat: Case) -> None:
    k = compat.key
    leases = {s.label: grant(s, 100) for s in compat.pair.systems}
    check_each(compat, leases, lambda lease: ["put", k("leased"), "v", f"--lease={lease}"])
    check_each(compat, leases, lambda lease: ["put", k("also"), "w", f"--lease={lease}"])
    ttl = check_each(compat, leases, lambda lease: ["lease", "timetolive", lease, "--keys"])
    assert "granted with TTL(100s)" in ttl.stdout and k("leased") in ttl.stdout
    check_each(compat, leases, lambda lease: ["lease", "timetolive", lease, "-w", "json"])
    check_each(compat, leases, lambda lease: ["lease", "keep-alive", "--once", lease])
    listed = check_each(compat, leases, lambda lease: ["lease", "list"])
    assert "<lease>" in listed.stdout
    check_each(compat, leases, lambda lease: ["get", k("leased"), "-w", "json"])
    revoked = check_each(compat, leases, lambda lease: ["lease", "revoke", lease])
    assert revoked.stdout == "lease <lease> revoked\n"
    compat.check("get", "--prefix", k())
    # Revoking again, and asking about a lease that is gone, give etcd's errors.
    check_each(compat, leases, lambda lease: ["lease", "revoke", lease])
    check_each(compat, leases, lambda lease: ["lease", "timetolive", lease])
    check_each(compat, leases, lambda lease: ["lease", "keep-alive", "--once", lease])


@pytest.mark.parametrize("ttl", [1, 3])
def test_a_lease_left_alone_expires_with_its_keys(compat: Case, ttl: int) -> None:
    k = compat.key
    leases = {s.label: grant(s, ttl) for s in compat.pair.systems}
    granted = check_each(compat, leases, lambda lease: ["lease", "timetolive", lease])
    # Both raise a 1 s TTL to the same minimum (2 s with the default timings).
    assert f"TTL({max(ttl, 2)}s)" in granted.stdout, granted
    check_each(compat, leases, lambda lease: ["put", k("ephemeral"), "v", f"--lease={lease}"])
    time.sleep(ttl + 3.5)
    gone = compat.check("get", "--prefix", k(), "--consistency=l")
    assert gone.stdout == ""
    check_each(compat, leases, lambda lease: ["lease", "timetolive", lease])
