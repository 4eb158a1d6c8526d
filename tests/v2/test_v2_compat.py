"""The v2 keys API side by side with real etcd 3.4 `--enable-v2`: the same curl commands go to
a one-member etcd and a one-member raftkv, and the answers (status, content type, index
header, which headers are present, JSON body and its field order) must be equal once indexes,
expirations and TTLs are normalised (see `curlpair`).

Expiries are waited for on both sides before the next command, so both stores see the same
sequence of changes and their indexes correspond one to one.
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.support.etcd import EtcdCluster, etcd_installed, start_etcd_cluster
from tests.support.raftkv import RaftKVCluster, start_raftkv_cluster
from tests.v2.curlpair import Answer, Server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not etcd_installed(), reason="etcd 3.4 is not installed"),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]

EXPIRY_DEADLINE_S = 60.0
# etcd keeps the last 1000 v2 events; this many writes push older ones out.
ETCD_HISTORY_OVERFLOW = 1010


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EtcdCluster, RaftKVCluster]]:
    root = tmp_path_factory.mktemp("v2compat")
    with (
        start_etcd_cluster(root, size=1, enable_v2=True) as etcd,
        start_raftkv_cluster(root, size=1, enable_v2="true") as raftkv,
    ):
        yield etcd, raftkv


class Pair:
    """One etcd and one raftkv `Server`, each with its own normaliser."""

    def __init__(self, etcd: EtcdCluster, raftkv: RaftKVCluster) -> None:
        self.etcd = Server("etcd", etcd.client_urls[0])
        self.raftkv = Server("raftkv", raftkv.members[0].client_url)
        self.both = (self.etcd, self.raftkv)

    def same(self, *args: str, save: str = "") -> tuple[Answer, Answer]:
        """Run one curl command on both and assert equal normalised answers; `save` keeps
        each side's resulting modifiedIndex for later commands (`{name}` in arguments)."""
        answers = [server.curl(*args) for server in self.both]
        self._compare(args, answers)
        if save:
            for server, answer in zip(self.both, answers, strict=True):
                server.saved[save] = answer.index
        return answers[0], answers[1]

    def same_wait(self, wait: tuple[str, ...], *write: str) -> None:
        """A long-poll started in the background on both, then a write on both."""
        polls = [server.start_wait(*wait) for server in self.both]
        writes = [server.curl(*write) for server in self.both]
        events = [Server.finish_wait(poll) for poll in polls]
        self._compare(wait, events)
        self._compare(write, writes)

    def _compare(self, args: tuple[str, ...], answers: list[Answer]) -> None:
        normalised = [s.normaliser.answer(a) for s, a in zip(self.both, answers, strict=True)]
        assert normalised[1] == normalised[0], (
            f"curl {' '.join(args)}\netcd:   {answers[0]}\nraftkv: {answers[1]}"
        )

    def until_gone(self, path: str) -> None:
        """Wait until `path` expired on both sides; keep the index after it as `now`."""
        for server in self.both:
            deadline = time.monotonic() + EXPIRY_DEADLINE_S
            while True:
                answer = server.curl(f"{{E}}/v2/keys{path}")
                if answer.status == 404:
                    server.saved["now"] = int(answer.headers["x-etcd-index"])
                    break
                assert time.monotonic() < deadline, f"{path} never expired on {server.name}"
                time.sleep(0.2)


@pytest.fixture
def pair(servers: tuple[EtcdCluster, RaftKVCluster]) -> Pair:
    return Pair(*servers)


def test_sets_gets_dirs_compare_and_errors(pair: Pair) -> None:
    same = pair.same
    same("{E}/v2/keys/")  # the empty root
    same("{E}/v2/keys")
    same("{E}/v2/keys/s/a", "-XPUT", "-d", "value=x", save="a")
    same("{E}/v2/keys/s/a", "-XPUT", "-d", "value=y", save="a")
    same("{E}/v2/keys/s/a")
    same("{E}/v2/keys/s/nope")
    same("{E}/v2/keys/s/nope/deeper")
    same("{E}/v2/keys/s/a/b")
    same("{E}/v2/keys/s/a/b", "-XPUT", "-d", "value=1")
    same("{E}/v2/keys/s/d/e/f", "-XPUT", "-d", "value=1")
    same("{E}/v2/keys/s/d")
    same("{E}/v2/keys/s/d?recursive=true")
    same("{E}/v2/keys/s?recursive=true&sorted=true")
    same("{E}/v2/keys/s/h/_hidden", "-XPUT", "-d", "value=h")
    same("{E}/v2/keys/s/h")
    same("{E}/v2/keys/s/h/_hidden")
    # compare-and-swap
    same("{E}/v2/keys/s/a?prevValue=y", "-XPUT", "-d", "value=z", save="a")
    same("{E}/v2/keys/s/a?prevValue=nope", "-XPUT", "-d", "value=w")
    same("{E}/v2/keys/s/a?prevIndex=999999", "-XPUT", "-d", "value=w")
    same("{E}/v2/keys/s/a?prevIndex=999999&prevValue=q", "-XPUT", "-d", "value=w")
    same("{E}/v2/keys/s/a?prevIndex={a}", "-XPUT", "-d", "value=w")
    same("{E}/v2/keys/s/a", "-XPUT", "-d", "value=v", "-d", "prevValue=w", "-d", "prevIndex={a}")
    same("{E}/v2/keys/s/a?prevExist=false", "-XPUT", "-d", "value=z")
    same("{E}/v2/keys/s/a?prevExist=false&prevValue=v", "-XPUT", "-d", "value=z")
    same("{E}/v2/keys/s/a?prevExist=true&prevValue=v", "-XPUT", "-d", "value=u")
    same("{E}/v2/keys/s/a?prevIndex=0", "-XPUT", "-d", "value=v")
    same("{E}/v2/keys/s/a?quorum=true")
    same("{E}/v2/keys/s/a", "-I")
    same("{E}/v2/keys/s/new?prevExist=true", "-XPUT", "-d", "value=z")
    same("{E}/v2/keys/s/new?prevExist=false", "-XPUT", "-d", "value=z")
    same("{E}/v2/keys/s/new?prevExist=true", "-XPUT", "-d", "value=zz")
    same("{E}/v2/keys/s/nope?prevValue=x", "-XPUT", "-d", "value=z")
    same("{E}/v2/keys/s/d?prevValue=x", "-XPUT", "-d", "value=z")
    same("{E}/v2/keys/s/d", "-XPUT", "-d", "value=z")
    same("{E}/v2/keys/s/d?dir=true", "-XPUT")
    same("{E}/v2/keys/s/d?prevExist=true", "-XPUT", "-d", "value=5")
    same("{E}/v2/keys/", "-XPUT", "-d", "value=z")
    same("{E}/v2/keys/s/empty", "-XPUT")
    same("{E}/v2/keys/s/sp%20ace", "-XPUT", "--data-urlencode", "value=a b&c=<d> é")
    same("{E}/v2/keys/s/sp%20ace")
    # deletes and compare-and-delete
    same("{E}/v2/keys/s/d", "-XDELETE")
    same("{E}/v2/keys/s/d?dir=true", "-XDELETE")
    same("{E}/v2/keys/s/d?recursive=true", "-XDELETE")
    same("{E}/v2/keys/s/d/e/f")
    same("{E}/v2/keys/s/dd?dir=true", "-XPUT")
    same("{E}/v2/keys/s/dd?dir=true&prevExist=false", "-XPUT")
    same("{E}/v2/keys/s/dd?prevValue=1", "-XDELETE")
    same("{E}/v2/keys/s/dd?dir=true", "-XDELETE")
    same("{E}/v2/keys/s/new?dir=true", "-XDELETE")
    same("{E}/v2/keys/s/f", "-XPUT", "-d", "value=1", save="f")
    same("{E}/v2/keys/s/f?prevIndex=999999", "-XDELETE")
    same("{E}/v2/keys/s/f?prevIndex=999999&prevValue=abc", "-XDELETE")
    same("{E}/v2/keys/s/f?prevValue=1", "-XDELETE")
    same("{E}/v2/keys/s/f?prevValue=1", "-XDELETE")
    same("{E}/v2/keys/s/f", "-XDELETE")
    same("{E}/v2/keys/s/f", "-XPUT", "-d", "value=2", save="f")
    same("{E}/v2/keys/s/f?prevIndex={f}", "-XDELETE")
    same("{E}/v2/keys/", "-XDELETE")
    same("{E}/v2/keys/?recursive=true", "-XDELETE")
    # etcd 3.4 keeps a directory's old modifiedIndex after such an update (only its answer
    # has the new one), so nothing reads this directory again
    same("{E}/v2/keys/s2/du?dir=true", "-XPUT")
    same("{E}/v2/keys/s2/du?dir=true&prevExist=true", "-XPUT")
    same("{E}/v2/keys/s/g", "-XPUT", "-d", "value=1")
    same("{E}/v2/keys/s/g?dir=true", "-XPUT")  # a directory replaces the file
    # parameter errors
    same("{E}/v2/keys/s/p", "-XPUT", "-d", "value=1", "-d", "ttl=abc")
    same("{E}/v2/keys/s/p", "-XPUT", "-d", "value=1", "-d", "ttl=-1")
    same("{E}/v2/keys/s/p?prevIndex=abc", "-XPUT", "-d", "value=1")
    same("{E}/v2/keys/s/p?prevExist=abc", "-XPUT", "-d", "value=1")
    same("{E}/v2/keys/s/p?recursive=abc")
    same("{E}/v2/keys/s/p?dir=abc", "-XPUT")
    same("{E}/v2/keys/s/p?stream=abc")
    same("{E}/v2/keys/s/p?quorum=abc")
    same("{E}/v2/keys/s/p", "-XPUT", "-d", "value=%zz")
    same("{E}/v2/keys/s/p?wait=true&waitIndex=abc")
    same("{E}/v2/keys/s/p?prevValue=", "-XPUT", "-d", "value=2")
    same("{E}/v2/keys/s/p?wait=true", "-XPOST", "-d", "value=x")
    same("{E}/v2/keys/s/p", "-XPUT", "-d", "ttl=10", "-d", "refresh=true", "-d", "value=3")
    same("{E}/v2/keys/s/p", "-XPUT", "-d", "refresh=true")
    same("{E}/v2/keys/s/p", "-XPATCH")
    same("{E}/v2/keys/s/./../s//a")
    # in-order keys: a queue
    same("{E}/v2/keys/s/q", "-XPOST", "-d", "value=job1")
    same("{E}/v2/keys/s/q", "-XPOST", "-d", "value=job2")
    same("{E}/v2/keys/s/q", "-XPOST", "-d", "value=job3")
    same("{E}/v2/keys/s/q", "-XPOST", "-d", "dir=true")
    same("{E}/v2/keys/s/q?sorted=true")
    same("{E}/v2/keys/s/a", "-XPOST", "-d", "value=x")
    same("{E}/v2/keys/s?sorted=true&recursive=true")


def test_ttl_refresh_expiry_and_waits(pair: Pair) -> None:
    same = pair.same
    same("{E}/v2/keys/t/k", "-XPUT", "-d", "value=one", "-d", "ttl=5", save="set")
    same("{E}/v2/keys/t/k")
    same("{E}/v2/keys/t/k", "-XPUT", "-d", "ttl=6", "-d", "refresh=true", save="refresh")
    same("{E}/v2/keys/t/k?prevExist=true", "-XPUT", "-d", "ttl=6", "-d", "refresh=true")
    same("{E}/v2/keys/t/k?prevValue=one", "-XPUT", "-d", "ttl=6", "-d", "refresh=true")
    same("{E}/v2/keys/t/k?prevValue=two", "-XPUT", "-d", "ttl=6", "-d", "refresh=true")
    same("{E}/v2/keys/t/missing", "-XPUT", "-d", "ttl=6", "-d", "refresh=true")
    same("{E}/v2/keys/t", "-XPUT", "-d", "ttl=6", "-d", "refresh=true")
    same("{E}/v2/keys/t/zero", "-XPUT", "-d", "value=1", "-d", "ttl=0")  # expired at once
    pair.until_gone("/t/k")
    pair.until_gone("/t/zero")
    same("{E}/v2/keys/t/k")
    same("{E}/v2/keys/t/k?wait=true&waitIndex={set}")
    same("{E}/v2/keys/t/k?wait=true&waitIndex={refresh}")  # refreshes are not events
    # a directory with a TTL takes its children with it
    same("{E}/v2/keys/t/d?dir=true&ttl=4", "-XPUT", save="dir")
    same("{E}/v2/keys/t/d/c", "-XPUT", "-d", "value=1", save="child")
    same("{E}/v2/keys/t/d?recursive=true")
    pair.until_gone("/t/d")
    same("{E}/v2/keys/t/d/c")
    same("{E}/v2/keys/t/d/c?wait=true&waitIndex={child}")
    same("{E}/v2/keys/t/d/c?wait=true&waitIndex={now}")
    same("{E}/v2/keys/t?wait=true&recursive=true&waitIndex={dir}")
    # a TTL given to a directory later reaches the children it already has
    same("{E}/v2/keys/t/u?dir=true", "-XPUT")
    same("{E}/v2/keys/t/u/x", "-XPUT", "-d", "value=1")
    same("{E}/v2/keys/t/u?dir=true&prevExist=true&ttl=2", "-XPUT")
    pair.until_gone("/t/u")
    same("{E}/v2/keys/t/u/x")
    # live long-polls: started first, answered by a later write
    pair.same_wait(("{E}/v2/keys/t/w?wait=true",), "{E}/v2/keys/t/w", "-XPUT", "-d", "value=1")
    pair.same_wait(
        ("{E}/v2/keys/t/w?wait=true",), "{E}/v2/keys/t/w?prevValue=1", "-XPUT", "-d", "value=b"
    )
    pair.same_wait(("{E}/v2/keys/t?wait=true&recursive=true",), "{E}/v2/keys/t/q", "-XPOST")
    pair.same_wait(("{E}/v2/keys/t/w?wait=true",), "{E}/v2/keys/t/w?prevValue=b", "-XDELETE")
    # hidden nodes are no events for recursive waits; a directory's delete is one for its keys
    same("{E}/v2/keys/t/v/_hidden", "-XPUT", "-d", "value=1", save="hidden")
    same("{E}/v2/keys/t/v/seen", "-XPUT", "-d", "value=1")
    same("{E}/v2/keys/t/v?wait=true&recursive=true&waitIndex={hidden}")
    pair.same_wait(
        ("{E}/v2/keys/t/v/seen?wait=true",), "{E}/v2/keys/t/v?recursive=true", "-XDELETE"
    )


def _etcd_fill_history(url: str) -> None:
    for i in range(ETCD_HISTORY_OVERFLOW):
        request = urllib.request.Request(
            f"{url}/v2/keys/h/fill",
            data=f"value={i}".encode(),
            method="PUT",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


def _raftkv_compact(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        revision = kv.Range(rpc_pb2.RangeRequest(key=b"x"), timeout=30).header.revision
        kv.Compact(rpc_pb2.CompactionRequest(revision=revision, physical=True), timeout=30)


def test_wait_on_cleared_history(pair: Pair, servers: tuple[EtcdCluster, RaftKVCluster]) -> None:
    """etcd forgets all but its last 1000 events; raftkv forgets what compaction removed."""
    pair.same("{E}/v2/keys/h/k", "-XPUT", "-d", "value=1", save="old")
    _etcd_fill_history(pair.etcd.url)
    pair.raftkv.curl("{E}/v2/keys/h/fill", "-XPUT", "-d", "value=0")
    _raftkv_compact(servers[1].members[0].target)
    pair.same("{E}/v2/keys/h/k?wait=true&waitIndex={old}")
    pair.same("{E}/v2/keys/h?wait=true&recursive=true&waitIndex={old}")
