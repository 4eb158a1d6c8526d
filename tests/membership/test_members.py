"""Member identities match etcd's, and configuration changes update the member list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from raftkv.membership import (
    IDRemovedError,
    Member,
    MemberExistsError,
    MemberNotFoundError,
    Membership,
    PeerURLExistsError,
    compute_cluster_id,
    compute_member_id,
)
from raftkv.pb.raftpb import raft_pb2 as raftpb
from raftkv.storage.backend import Backend

from tests.support.etcd import etcd_installed, start_etcd_cluster


@pytest.mark.skipif(not etcd_installed(), reason="etcd 3.4 is installed by make test")
def test_ids_are_computed_exactly_as_etcd_computes_them(tmp_path: Path) -> None:
    token = "raftkv-id-check"
    with start_etcd_cluster(tmp_path, size=3, initial_cluster_token=token) as cluster:
        listing = json.loads(cluster.etcdctl("member", "list", "-w", "json").stdout)
    by_url = {m["peerURLs"][0]: m["ID"] for m in listing["members"]}
    expected = {url: compute_member_id([url], token) for url in cluster.peer_urls}
    assert by_url == expected
    assert listing["header"]["cluster_id"] == compute_cluster_id(expected.values())


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

    promote = raftpb.ConfChange(type=raftpb.CONF_CHANGE_ADD_NODE, node_id=2)
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


def test_refused_changes_are_remembered_across_reload(tmp_path: Path) -> None:
    membership = _membership(tmp_path)
    membership.record_refused(42)
    membership.backend.commit()
    reloaded = Membership.load(membership.backend)
    assert reloaded.was_refused(42)
    assert not reloaded.was_refused(41)
