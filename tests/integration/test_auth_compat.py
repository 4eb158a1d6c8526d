"""The same etcdctl auth session against a 3-member raftkv cluster and a 3-member etcd 3.4
cluster prints the same thing: stdout, stderr and exit code of every command, after the
normaliser replaced member IDs, addresses, terms and timestamps (`tests.compat`).

The session sets up root and a reader, enables auth, and then tries what users do: anonymous,
wrong-password, permitted and denied reads and writes, the admin listings, password changes,
etcdctl's password prompts and flags, a watch on a permitted and on a forbidden range, the
refusals that protect root, and disabling auth again. Both clusters receive the same writes in
the same order, so revisions must match too and are compared as they are.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator

import pytest

from tests.compat.harness import ComparisonError, Outcome, Pair, System, start_pair
from tests.support.etcd import ETCDCTL_BIN
from tests.support.fixtures import require_etcd

pytestmark = pytest.mark.integration

ROOT = "--user=root:rootpw"
ALICE = "--user=alice:alicepw"

# (etcdctl arguments, stdin); stdin None means no input at all.
SETUP: list[tuple[tuple[str, ...], str | None]] = [
    (("user", "add", "root", "--new-user-password=rootpw"), None),
    (("user", "grant-role", "root", "root"), None),
    (("user", "add", "alice:alicepw", "--interactive=false"), None),
    # etcdctl's prompt, twice, answered on stdin (etcdctl complains it cannot turn echo off)
    (("user", "add", "carol"), "carolpw\ncarolpw\n"),
    (("user", "add", "dave"), "one\ntwo\n"),  # the two entries differ
    (("user", "add", "root", "--new-user-password=x"), None),
    (("role", "add", "reader"), None),
    (("role", "add", "reader"), None),
    (("role", "grant-permission", "reader", "read", "/app/", "--prefix"), None),
    (("role", "grant-permission", "reader", "readwrite", "/w/x"), None),
    (("role", "grant-permission", "reader", "write", "/log", "--from-key"), None),
    (("role", "grant-permission", "nobody", "read", "/app/"), None),
    (("user", "grant-role", "alice", "reader"), None),
    (("user", "grant-role", "alice", "nope"), None),
    (("user", "grant-role", "zed", "reader"), None),
    (("put", "/app/x", "hello"), None),
    (("put", "/secret", "s3cret"), None),
    (("user", "list"), None),
    (("auth", "enable"), None),
]

ENABLED: list[tuple[tuple[str, ...], str | None]] = [
    # anonymous, wrong password, permitted and denied
    (("get", "/app/x"), None),
    (("put", "/app/x", "anon"), None),
    (("--user=alice:wrong", "get", "/app/x"), None),
    (("--user=nobody:pw", "get", "/app/x"), None),
    ((ALICE, "get", "/app/x"), None),
    ((ALICE, "get", "/app/", "--prefix"), None),
    ((ALICE, "get", "/secret"), None),
    ((ALICE, "get", "/app/", "--from-key"), None),
    ((ALICE, "put", "/app/x", "nope"), None),
    ((ALICE, "put", "/w/x", "mine"), None),
    ((ALICE, "put", "/w/y", "nope"), None),
    ((ALICE, "put", "/log/1", "entry"), None),
    ((ALICE, "get", "/log/1"), None),
    ((ALICE, "del", "/w/x"), None),
    ((ALICE, "txn", "--interactive=false"), 'value("/app/x") = "hello"\n\nput /w/x again\n\n'),
    ((ALICE, "txn", "--interactive=false"), 'value("/secret") = "s3cret"\n\nput /w/x again\n\n'),
    (("--user=alice", "get", "/app/x"), "alicepw\n"),  # etcdctl asks for the password
    # listings: root sees everything, alice herself and her roles only
    ((ROOT, "user", "list"), None),
    ((ROOT, "role", "list"), None),
    ((ROOT, "role", "get", "reader"), None),
    ((ROOT, "user", "get", "alice"), None),
    ((ROOT, "user", "get", "alice", "--detail"), None),
    ((ROOT, "user", "get", "nobody"), None),
    ((ROOT, "role", "get", "nobody"), None),
    ((ALICE, "user", "list"), None),
    ((ALICE, "user", "get", "alice"), None),
    ((ALICE, "user", "get", "root"), None),
    ((ALICE, "role", "get", "reader"), None),
    ((ALICE, "role", "add", "mine"), None),
    ((ALICE, "auth", "enable"), None),
    ((ALICE, "auth", "disable"), None),
    # what protects root, and the management errors
    ((ROOT, "user", "delete", "root"), None),
    ((ROOT, "user", "revoke-role", "root", "root"), None),
    ((ROOT, "role", "delete", "root"), None),
    ((ROOT, "user", "revoke-role", "alice", "nope"), None),
    ((ROOT, "role", "revoke-permission", "reader", "/nope"), None),
    ((ROOT, "role", "revoke-permission", "reader", "/log", "--from-key"), None),
    ((ROOT, "role", "get", "reader"), None),
    # a password change: the old one stops working
    ((ROOT, "user", "passwd", "carol", "--interactive=false"), "newcarol\n"),
    (("--user=carol:carolpw", "get", "/app/x"), None),
    (("--user=carol:newcarol", "get", "/app/x"), None),
    ((ROOT, "user", "delete", "carol"), None),
    (("--user=carol:newcarol", "get", "/app/x"), None),
    # enabling again is harmless for root; members and maintenance need root
    ((ROOT, "auth", "enable"), None),
    ((ALICE, "defrag"), None),
    ((ALICE, "member", "list"), None),
    ((ALICE, "alarm", "list"), None),
    ((ROOT, "auth", "disable"), None),
    (("get", "/app/x"), None),
    (("put", "/app/x", "open again"), None),
    (("auth", "disable"), None),
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    require_etcd()
    pair = start_pair(tmp_path_factory.mktemp("auth-compat"), size=3)
    try:
        yield pair
    finally:
        pair.stop()


def _run(pair: Pair, steps: list[tuple[tuple[str, ...], str | None]]) -> list[str]:
    """Run each step on etcd then raftkv; the differences, described."""
    differences = []
    for args, stdin in steps:
        etcd, raftkv = (
            system.normalize(system.etcdctl(*args, input=stdin)) for system in pair.systems
        )
        if "member" in args:  # members are listed by ID, and IDs differ between the clusters
            etcd, raftkv = _sorted(etcd), _sorted(raftkv)
        if etcd != raftkv:
            differences.append(_describe(args, etcd, raftkv))
    return differences


def _sorted(outcome: Outcome) -> Outcome:
    return Outcome("".join(sorted(outcome.stdout.splitlines(True))), outcome.stderr, outcome.code)


def _describe(args: tuple[str, ...], etcd: Outcome, raftkv: Outcome) -> str:
    return f"etcdctl {' '.join(args)}\n  etcd:   {etcd}\n  raftkv: {raftkv}"


def _watch(system: System, *args: str, until: bytes | None) -> tuple[object, str, str]:
    """`etcdctl watch`: until its output shows `until`, or (None) until it ends by itself."""
    process = subprocess.Popen(
        [str(ETCDCTL_BIN), f"--endpoints={system.endpoints()}", "watch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"ETCDCTL_API": "3"},
    )
    stopper = threading.Timer(15, process.kill)  # a watch that never shows `until`
    stopper.start()
    try:
        assert process.stdout is not None
        output = b""
        while until is not None and until not in output:
            chunk = process.stdout.read1(4096)
            if not chunk:
                break
            output += chunk
        if until is not None:
            process.terminate()
        rest, errors = process.communicate(timeout=20)
    finally:
        stopper.cancel()
    outcome = "saw it" if until is not None and until in output else process.returncode
    return outcome, (output + rest).decode(), system.normalizer.text(errors.decode())


def test_etcdctl_auth_session_matches_etcd(pair: Pair) -> None:
    differences = _run(pair, SETUP)
    differences += [
        f"watch {args}: etcd {etcd} raftkv {raftkv}"
        for args, until in [
            ((ALICE, "/app/", "--prefix", "--rev=1"), b"hello"),
            ((ALICE, "/secret"), None),
            (("/app/x",), None),
        ]
        if (etcd := _watch(pair.etcd, *args, until=until))
        != (raftkv := _watch(pair.raftkv, *args, until=until))
    ]
    differences += _run(pair, ENABLED)
    if differences:
        raise ComparisonError("\n".join(differences))
