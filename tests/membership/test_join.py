"""A joining member checks `--initial-cluster` against the cluster's list as etcd does."""

from __future__ import annotations

import pytest
from raftkv.membership import Member
from raftkv.node.errors import DataDirError, JoinError
from raftkv.node.join import RemoteCluster, find_self, members_response

A = Member(1, "a", ("http://h:1",), ("http://h:11",))
B = Member(2, "b", ("http://h:2",), ("http://h:12",))
NEW = Member(3, "", ("http://h:3", "http://h:33"), is_learner=True)


def remote(*members: Member) -> RemoteCluster:
    return RemoteCluster.from_pb(members_response(0xC1, members), "http://h:1")


def test_the_member_list_round_trips_through_the_peer_message() -> None:
    assert remote(A, B, NEW) == RemoteCluster(0xC1, (A, B, NEW), "http://h:1")


def test_finds_itself_by_peer_urls_in_any_order() -> None:
    flags = {"a": ["http://h:1"], "b": ["http://h:2"], "c": ["http://h:33", "http://h:3"]}
    assert find_self(remote(A, B, NEW), flags, "c") == NEW


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"a": ["http://h:1"], "c": ["http://h:3", "http://h:33"]}, "lists 2 members but"),
        (
            {"a": ["http://h:1"], "b": ["http://h:2"], "c": ["http://h:3"]},
            "c=http://h:3 is not a member of cluster c1",
        ),
    ],
)
def test_a_list_that_does_not_match_the_cluster_is_refused(
    flags: dict[str, list[str]], message: str
) -> None:
    with pytest.raises(JoinError, match=message):
        find_self(remote(A, B, NEW), flags, "c")


def test_a_member_that_already_ran_cannot_join_with_an_empty_data_dir() -> None:
    flags = {"a": ["http://h:1"], "b": ["http://h:2"], "c": ["http://h:3", "http://h:33"]}
    with pytest.raises(JoinError, match="has run before"):
        find_self(remote(A, B, NEW), flags, "b")
    # The process reports it like any unusable data dir.
    assert issubclass(JoinError, DataDirError)
