"""Member identities match etcd's, and configuration changes update the member list."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from raftkv.membership import (
    IDRemovedError,
    Member,
    MemberExistsError,
    MemberNotFoundError,
    MemberNotLearnerError,
    Membership,
    PeerURLExistsError,
    TooManyLearnersError,
    compute_cluster_id,
    compute_member_id,
    promote_context,
)
from raftkv.pb.raftpb import raft_pb2 as raftpb
from raftkv.storage.backend import Backend

from tests.support.etcd import etcd_installed, free_port, start_etcd_cluster


@pytest.mark.skipif(not etcd_installed(), reason="etcd 3.4 is installed by make test")
def test_ids_are_computed_exactly_as_etcd_computes_them(tmp_path: Path) -> None:
    token = "raftkv-id-check"
    with start_etcd_cluster(tmp_path, size=3, initial_cluster_token=token) as cluster:
        listing = json.loads(cluster.etcdctl("member", "list", "-w", "json").stdout)
    by_url = {m["peerURLs"][0]: m["ID"] for m in listing["members"]}
    expected = {url: compute_member_id([url], token) for url in cluster.peer_urls}
    assert by_url == expected
    assert listing["header"]["cluster_id"] == compute_cluster_id(expected.values())


@pytest.mark.skipif(not etcd_installed(), reason="etcd 3.4 is installed by make test")
def test_runtime_added_member_id_is_etcds_with_empty_token_and_request_time(
    tmp_path: Path,
) -> None:
    peer_url = f"http://127.0.0.1:{free_port()}"
    with start_etcd_cluster(tmp_path, size=1, initial_cluster_token="not-used-by-add") as cluster:
        before = int(time.time())
        added = cluster.etcdctl("member", "add", "x", "--learner", f"--peer-urls={peer_url}")
        after = int(time.time())
    assert added.returncode == 0, added.stderr
    member_id = int(added.stdout.split()[1], 16)
    candidates = {compute_member_id([peer_url], "", now=t) for t in range(before, after + 1)}
    assert member_id in candidates


def _membership(tmp_path: Path) -> Membership:
    return Membership.load(Backend(tmp_path / "db"))


def _change(kind: int, member: Member) -> raftpb.ConfChange:
    return raftpb.ConfChange(type=kind, node_id=member.id, context=member.to_json())


def test_add_promote_update_remove_and_reload(tmp_path: Path) -> None:
    membership = _membership(tmp_path)
    a = Member(1, "a", ("http://127.0.0.1:1",))
    b = Member(2, "b", ("http://127.0.0.1:2",))
    for change in (
        _change(raftpb.CONF_CHANGE_ADD_NODE, a),
        _change(raftpb.CONF_CHANGE_ADD_LEARNER_NODE, b),
    ):
        membership.validate(change)
        membership.apply(change)
    assert membership.get(2) == Member(2, "b", ("http://127.0.0.1:2",), is_learner=True)

    promote = raftpb.ConfChange(
        type=raftpb.CONF_CHANGE_ADD_NODE, node_id=2, context=promote_context(2)
    )
    membership.validate(promote)
    membership.apply(promote)
    assert membership.get(2) is not None and not membership.get(2).is_learner

    moved = Member(2, "", ("http://127.0.0.1:22",))
    membership.apply(_change(raftpb.CONF_CHANGE_UPDATE_NODE, moved))
    membership.set_client_urls(2, "b", ("http://127.0.0.1:9",))
    assert membership.get(2) == Member(2, "b", ("http://127.0.0.1:22",), ("http://127.0.0.1:9",))

    membership.apply(raftpb.ConfChange(type=raftpb.CONF_CHANGE_REMOVE_NODE, node_id=1))
    membership.set_cluster_id(77)
    membership.backend.commit()
    reloaded = Membership.load(membership.backend)
    assert [m.id for m in reloaded.sorted_members()] == [2]
    assert reloaded.removed == {1}
    assert reloaded.cluster_id == 77


def test_invalid_changes_get_etcds_errors(tmp_path: Path) -> None:
    membership = _membership(tmp_path)
    a = Member(1, "a", ("http://127.0.0.1:1",))
    membership.apply(_change(raftpb.CONF_CHANGE_ADD_NODE, a))
    with pytest.raises(MemberExistsError, match="member ID already exist"):
        membership.validate(_change(raftpb.CONF_CHANGE_ADD_NODE, a))
    with pytest.raises(PeerURLExistsError, match="Peer URLs already exists"):
        membership.validate(_change(raftpb.CONF_CHANGE_ADD_NODE, Member(3, "", a.peer_urls)))
    with pytest.raises(MemberNotFoundError, match="member not found"):
        membership.validate(raftpb.ConfChange(type=raftpb.CONF_CHANGE_REMOVE_NODE, node_id=9))
    membership.apply(raftpb.ConfChange(type=raftpb.CONF_CHANGE_REMOVE_NODE, node_id=1))
    with pytest.raises(IDRemovedError, match="ID removed"):
        membership.validate(_change(raftpb.CONF_CHANGE_ADD_NODE, a))


def _promote(member_id: int) -> raftpb.ConfChange:
    return raftpb.ConfChange(
        type=raftpb.CONF_CHANGE_ADD_NODE, node_id=member_id, context=promote_context(member_id)
    )


def test_promotion_is_marked_in_the_context_and_only_for_learners(tmp_path: Path) -> None:
    membership = _membership(tmp_path)
    voter = Member(1, "a", ("http://127.0.0.1:1",))
    learner = Member(2, "", ("http://127.0.0.1:2",))
    membership.apply(_change(raftpb.CONF_CHANGE_ADD_NODE, voter))
    membership.apply(_change(raftpb.CONF_CHANGE_ADD_LEARNER_NODE, learner))
    with pytest.raises(MemberNotLearnerError) as refused:
        membership.validate(_promote(1))
    assert str(refused.value) == "etcdserver: can only promote a learner member"
    with pytest.raises(MemberNotFoundError):
        membership.validate(_promote(9))
    # A plain ADD_NODE of the learner's ID is a duplicate add, not a promotion (as in etcd).
    with pytest.raises(MemberExistsError):
        membership.validate(_change(raftpb.CONF_CHANGE_ADD_NODE, learner))
    membership.validate(_promote(2))


def test_one_learner_at_a_time(tmp_path: Path) -> None:
    membership = _membership(tmp_path)
    membership.apply(_change(raftpb.CONF_CHANGE_ADD_LEARNER_NODE, Member(2, "", ("http://h:2",))))
    second = _change(raftpb.CONF_CHANGE_ADD_LEARNER_NODE, Member(3, "", ("http://h:3",)))
    with pytest.raises(TooManyLearnersError, match="too many learner members in cluster"):
        membership.validate(second)
    # A voter may still be added.
    membership.validate(_change(raftpb.CONF_CHANGE_ADD_NODE, Member(3, "", ("http://h:3",))))


def test_update_may_not_take_another_members_urls(tmp_path: Path) -> None:
    membership = _membership(tmp_path)
    membership.apply(_change(raftpb.CONF_CHANGE_ADD_NODE, Member(1, "a", ("http://h:1",))))
    membership.apply(_change(raftpb.CONF_CHANGE_ADD_NODE, Member(2, "b", ("http://h:2",))))
    with pytest.raises(PeerURLExistsError):
        membership.validate(_change(raftpb.CONF_CHANGE_UPDATE_NODE, Member(2, "", ("http://h:1",))))
    with pytest.raises(MemberNotFoundError):
        membership.validate(_change(raftpb.CONF_CHANGE_UPDATE_NODE, Member(9, "", ("http://h:9",))))
    # Keeping one's own URL is fine.
    membership.validate(
        _change(raftpb.CONF_CHANGE_UPDATE_NODE, Member(2, "", ("http://h:2", "http://h:3")))
    )


def test_a_member_marked_removed_stays_removed_after_reload(tmp_path: Path) -> None:
    membership = _membership(tmp_path)
    membership.apply(_change(raftpb.CONF_CHANGE_ADD_NODE, Member(1, "a", ("http://h:1",))))
    membership.mark_removed(1)
    membership.backend.commit()
    reloaded = Membership.load(membership.backend)
    assert reloaded.removed == {1}
    with pytest.raises(IDRemovedError):
        reloaded.validate(raftpb.ConfChange(type=raftpb.CONF_CHANGE_REMOVE_NODE, node_id=1))


def test_refused_changes_are_remembered_across_reload(tmp_path: Path) -> None:
    membership = _membership(tmp_path)
    membership.record_refused(42)
    membership.backend.commit()
    reloaded = Membership.load(membership.backend)
    assert reloaded.was_refused(42)
    assert not reloaded.was_refused(41)
