"""etcd's safety checks before a membership change is proposed, as pure functions.

A change that Raft would accept can still hurt availability: adding a voter that never starts
raises the quorum, removing a live voter while another is down can leave the rest without one.
With `--strict-reconfig-check` (the default) etcd refuses such changes up front, and so does
raftkv, with etcd's errors and in etcd's order:

* *started* means the member has published its name (it ran at least once), as etcd counts it;
* *connected* is this member's current view of its peer streams, supplied by the caller. etcd
  also wants a stream to have been up for five seconds; raftkv takes "up now", so a change is
  possible right after a cluster starts.

The functions take the member list and callables, never the node, so they are tested directly.
Membership validation proper (duplicate IDs and URLs, the learner limit) happens when the change
is applied (`Membership.validate`), because only the applied list is authoritative.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from raftkv.membership.errors import (
    InvalidPeerURLsError,
    LearnerNotReadyError,
    NotEnoughStartedMembersError,
    UnhealthyClusterError,
)
from raftkv.membership.members import Member

# A learner may be promoted once its log reaches this share of the leader's (etcd's rule).
LEARNER_READY_RATIO = 0.9

_URL_SCHEMES = ("http", "https", "unix", "unixs")

Connected = Callable[[int], bool]


def parse_peer_urls(urls: Sequence[str]) -> tuple[str, ...]:
    """etcd's URL rules for member peer URLs; the URLs sorted, as etcd stores them."""
    if not urls:
        raise InvalidPeerURLsError("no URLs given")
    parsed = []
    for raw in urls:
        url = raw.strip()
        try:
            parts = urlsplit(url)
        except ValueError as error:
            raise InvalidPeerURLsError(f"{url}: {error}") from None
        if parts.scheme not in _URL_SCHEMES:
            raise InvalidPeerURLsError(f"URL scheme must be http, https, unix, or unixs: {url}")
        if not _is_host_port(parts.netloc.rpartition("@")[2]):
            raise InvalidPeerURLsError(f'URL address does not have the form "host:port": {url}')
        if parts.path:
            raise InvalidPeerURLsError(f"URL must not contain a path: {url}")
        parsed.append(url)
    return tuple(sorted(parsed))


def _is_host_port(address: str) -> bool:
    """Go's net.SplitHostPort acceptance: `host:port` or `[v6host]:port`, port may be empty."""
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
        return bool(sep) and "]" not in host and ":" not in port
    return address.count(":") == 1


def _voters(members: Iterable[Member]) -> list[Member]:
    return [m for m in members if not m.is_learner]


def _started(member: Member) -> bool:
    return bool(member.name)


def _has_quorum(started: int, total: int) -> bool:
    return started >= total // 2 + 1


def check_add(
    members: Iterable[Member], is_learner: bool, self_id: int, connected: Connected
) -> None:
    """Before adding a member: enough started voters for the grown quorum, every voter up."""
    voters = _voters(members)
    if not is_learner:
        total, started = len(voters) + 1, sum(1 for m in voters if _started(m))
        # Adding a second member to a one-member cluster is how a cluster is restored.
        if not (started == 1 and total == 2) and not _has_quorum(started, total):
            raise NotEnoughStartedMembersError()
    if not all(connected(m.id) for m in voters if m.id != self_id):
        raise UnhealthyClusterError()


def check_remove(
    members: Iterable[Member], member_id: int, self_id: int, connected: Connected
) -> None:
    """Before removing a member: the remaining voters keep a started, connected quorum."""
    members = list(members)
    target = next((m for m in members if m.id == member_id), None)
    if target is not None and target.is_learner:
        return
    remaining = [m for m in _voters(members) if m.id != member_id]
    if not _has_quorum(sum(1 for m in remaining if _started(m)), len(remaining)):
        raise NotEnoughStartedMembersError()
    if member_id != self_id and not connected(member_id):
        return  # a member that is down is not part of the active quorum
    voters = _voters(members)
    active = sum(1 for m in voters if m.id == self_id or connected(m.id))
    if active - 1 < 1 + (len(voters) - 1) // 2:
        raise UnhealthyClusterError()


def check_promote(members: Iterable[Member]) -> None:
    """Before promoting a learner: the grown voter set (counting the learner) has a quorum."""
    voters = _voters(members)
    total, started = len(voters) + 1, 1 + sum(1 for m in voters if _started(m))
    if not _has_quorum(started, total):
        raise NotEnoughStartedMembersError()


def check_learner_in_sync(match: Mapping[int, int], leader_id: int, learner_id: int) -> None:
    """On the leader, with each member's match index: the learner has nearly caught up."""
    if learner_id in match and match[learner_id] < match[leader_id] * LEARNER_READY_RATIO:
        raise LearnerNotReadyError()
