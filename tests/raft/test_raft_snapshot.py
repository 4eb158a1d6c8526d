"""Snapshots: a leader ships one to a follower that needs compacted entries; followers install
them; the transport's reports drive the follower's progress."""

from __future__ import annotations

from raftkv.pb.raftpb import raft_pb2 as pb
from raftkv.raft import MemoryStorage, SnapshotTemporarilyUnavailableError
from test_raft_harness import Net, core, msg


class FlakyStorage(MemoryStorage):
    """A storage whose snapshot is not ready while ``busy`` is set."""

    __slots__ = ("asked", "busy")

    def __init__(self) -> None:
        super().__init__()
        self.busy = False
        self.asked = 0

    def snapshot(self) -> pb.Snapshot:
        self.asked += 1
        if self.busy:
            raise SnapshotTemporarilyUnavailableError("snapshot being written")
        return super().snapshot()


def lagging_follower(net: Net, entries: int = 10) -> None:
    """Elect 1, let 3 miss ``entries`` proposals, then compact 1's log past them."""
    net.campaign(1)
    net.isolate(3)
    for k in range(entries):
        net.propose(1, b"v%d" % k)
    net.deliver()
    net.compact(1)
    assert net.storage[1].first_index() > core(net.nodes[3]).log.last_index() + 1
    net.heal()


def snaps(net: Net) -> list[pb.Message]:
    return [m for m in net.queue if m.type == pb.MSG_SNAP]


def test_leader_sends_a_snapshot_then_resumes_replication() -> None:
    net = Net()
    lagging_follower(net)
    net.tick(1)  # heartbeat -> response -> the follower needs compacted entries
    while not snaps(net):
        net.deliver_one()
    (snap_msg,) = snaps(net)
    assert snap_msg.to == 3 and snap_msg.snapshot.metadata.index == 14
    assert net.nodes[1].status().progress[3].state == "snapshot"
    net.deliver()
    assert net.applied[3][0] == b"<snapshot>"
    assert net.storage[3].snapshot().metadata.index == 14
    assert list(net.conf[3].voters) == [1, 2, 3]
    assert net.nodes[1].status().progress[3].state == "replicate"
    net.propose(1, b"after")
    net.deliver()
    assert net.applied[3][-1] == b"after"
    assert net.log_terms(3)[-1] == net.log_terms(1)[-1]


def test_no_snapshot_is_sent_while_the_storage_cannot_produce_one() -> None:
    flaky = FlakyStorage()
    net = Net(storages={1: flaky})
    lagging_follower(net)
    flaky.busy = True
    net.tick_all(3)
    assert flaky.asked > 0
    assert not [m for m in net.delivered if m.type == pb.MSG_SNAP]
    assert net.nodes[1].status().progress[3].state != "snapshot"
    flaky.busy = False
    net.tick_all(3)
    assert [m for m in net.delivered if m.type == pb.MSG_SNAP]
    assert net.applied[3][0] == b"<snapshot>"


def test_a_failed_snapshot_is_retried_after_a_heartbeat() -> None:
    net = Net()
    lagging_follower(net)
    net.filter = lambda m: m.type != pb.MSG_SNAP
    net.tick(1)
    net.deliver()
    assert net.dropped[-1].type == pb.MSG_SNAP
    net.nodes[1].report_snapshot(3, failed=True)
    pr = net.nodes[1].status().progress[3]
    assert pr.state == "probe"
    net.drain(1)
    assert not net.queue  # paused until the next heartbeat response
    net.filter = None
    net.tick(1)
    net.deliver()
    assert net.applied[3][0] == b"<snapshot>"
    assert net.nodes[1].status().progress[3].state == "replicate"


def test_a_reported_snapshot_success_waits_for_the_follower() -> None:
    net = Net()
    lagging_follower(net)
    held: list[pb.Message] = []

    def hold(m: pb.Message) -> bool:
        # hold 3's answer to the snapshot (not its earlier rejection of a MsgApp)
        if m.type == pb.MSG_APP_RESP and getattr(m, "from") == 3 and not m.reject:
            held.append(m)
            return False
        return True

    net.filter = hold
    net.tick(1)
    net.deliver()
    net.nodes[1].report_snapshot(3, failed=False)
    pr = net.nodes[1].status().progress[3]
    assert (pr.state, pr.next) == ("probe", 15)
    net.drain(1)
    net.filter = None
    net.send(held[-1])
    net.deliver()
    assert net.nodes[1].status().progress[3].state == "replicate"


def test_follower_installs_a_newer_snapshot() -> None:
    net = Net()
    snap = pb.Snapshot(data=b"state")
    snap.metadata.index, snap.metadata.term = 10, 2
    snap.metadata.conf_state.voters.extend([1, 2, 3, 4])
    net.nodes[2].step(msg(pb.MSG_SNAP, 1, 2, term=2, snapshot=snap))
    rd = net.nodes[2].ready()
    assert rd.snapshot is not None and rd.snapshot.metadata.index == 10
    assert rd.must_sync
    assert rd.committed_entries == []
    assert rd.hard_state is not None and rd.hard_state.commit == 10
    (resp,) = rd.messages
    assert (resp.type, resp.index, resp.reject) == (pb.MSG_APP_RESP, 10, False)
    net.storage[2].apply_snapshot(rd.snapshot)
    net.storage[2].set_hard_state(rd.hard_state)
    net.nodes[2].advance(rd)
    st = net.nodes[2].status()
    assert list(st.conf_state.voters) == [1, 2, 3, 4]
    assert st.applied == 10
    assert core(net.nodes[2]).log.last_index() == 10
    assert not net.nodes[2].has_ready()


def test_a_snapshot_older_than_the_commit_index_is_ignored() -> None:
    net = Net()
    net.campaign(1)  # commit 4 everywhere
    snap = pb.Snapshot()
    snap.metadata.index, snap.metadata.term = 3, 1
    net.nodes[2].step(msg(pb.MSG_SNAP, 1, 2, term=2, snapshot=snap))
    rd = net.nodes[2].ready()
    assert rd.snapshot is None
    (resp,) = rd.messages
    assert resp.index == 4


def test_a_snapshot_whose_last_entry_we_hold_only_moves_the_commit_index() -> None:
    net = Net()
    net.set_log(2, [1, 1, 1])  # entries 4..6 of term 1, commit 3
    snap = pb.Snapshot()
    snap.metadata.index, snap.metadata.term = 5, 1
    net.nodes[2].step(msg(pb.MSG_SNAP, 1, 2, term=1, snapshot=snap))
    rd = net.nodes[2].ready()
    assert rd.snapshot is None
    assert core(net.nodes[2]).log.committed == 5
    assert core(net.nodes[2]).log.last_index() == 6
    assert [e.index for e in rd.committed_entries] == [4, 5]
