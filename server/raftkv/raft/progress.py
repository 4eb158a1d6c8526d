"""The leader's view of each follower, and the quorum arithmetic over the configuration.

Configuration changes are single-server changes (see ``core``), so a configuration is one set
of voters plus a set of learners, and a quorum is a simple majority of the voters. Learners have
a ``Progress`` (they receive the log) but never count towards commit, votes or liveness.

Per follower, replication runs in one of three states:

* PROBE: the leader does not know where the follower's log matches; it sends one MsgApp at a
  time and waits for the answer (or the next heartbeat response) before sending another.
* REPLICATE: the logs match up to ``match``; the leader streams entries optimistically, at most
  ``max_inflight_msgs`` unacknowledged messages at once (``Inflights``).
* SNAPSHOT: the follower needs entries the leader has compacted; a snapshot is on its way and
  nothing else is sent until it is reported done (or a MsgAppResp shows it caught up).
"""

from __future__ import annotations

import enum
from collections import deque

from raftkv.pb.raftpb.raft_pb2 import ConfState


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


PROBE = ProgressState.PROBE
REPLICATE = ProgressState.REPLICATE
SNAPSHOT = ProgressState.SNAPSHOT


class Inflights:
    """Last indexes of the MsgApp messages sent but not yet acknowledged, oldest first."""

    __slots__ = ("buf", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf: deque[int] = deque()

    def add(self, last_index: int) -> None:
        self.buf.append(last_index)

    def free_le(self, to: int) -> None:
        buf = self.buf
        while buf and buf[0] <= to:
            buf.popleft()

    def free_first_one(self) -> None:
        if self.buf:
            self.buf.popleft()

    def full(self) -> bool:
        return len(self.buf) >= self.size

    def count(self) -> int:
        return len(self.buf)

    def reset(self) -> None:
        self.buf.clear()


class Progress:
    """Replication state of one peer, kept by the leader."""

    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool = False) -> None:
        self.match = 0  # highest index known to match the leader's log
        self.next = next_index  # next index to send
        self.state = PROBE
        self.pending_snapshot = 0  # index of the snapshot in flight (SNAPSHOT state)
        self.recent_active = False  # heard from since the last CheckQuorum
        self.probe_sent = False  # PROBE: a MsgApp is unanswered; wait before sending another
        self.inflights = Inflights(max_inflight)
        self.is_learner = is_learner

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.value} match={self.match} next={self.next} "
            f"inflight={self.inflights.count()} learner={self.is_learner})"
        )

    def reset(self, next_index: int) -> None:
        """Start over for a new term; only ``is_learner`` is kept."""
        self.match = 0
        self.next = next_index
        self.recent_active = False
        self._reset_state(PROBE)

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state is SNAPSHOT:
            # Resume after the snapshot: the follower has at least what it contained.
            pending = self.pending_snapshot
            self._reset_state(PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """The follower acknowledged index ``n``; False if that was old news."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        if self.next < n + 1:
            self.next = n + 1
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A MsgApp at ``rejected`` was refused; move ``next`` back. False if the rejection is
        stale (answers a message sent before a later decision)."""
        if self.state is REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        state = self.state
        if state is REPLICATE:
            return self.inflights.full()
        if state is PROBE:
            return self.probe_sent
        return True


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


class ProgressTracker:
    """Voters, learners, their ``Progress`` and the votes of the current election."""

    __slots__ = ("learners", "max_inflight", "progress", "voters", "votes")

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.voters: set[int] = set()
        self.learners: set[int] = set()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}

    def conf_state(self) -> ConfState:
        return ConfState(voters=sorted(self.voters), learners=sorted(self.learners))

    def restore(self, cs: ConfState, next_index: int) -> None:
        """Start over from ``cs`` (the configuration of a snapshot or of the storage)."""
        self.voters = set()
        self.learners = set()
        self.progress = {}
        for v in cs.voters:
            self.add_voter(v, next_index)
        for lid in cs.learners:
            self.add_learner(lid, next_index)

    def add_voter(self, node_id: int, next_index: int) -> None:
        self.voters.add(node_id)
        self.learners.discard(node_id)
        pr = self.progress.get(node_id)
        if pr is None:
            pr = self.progress[node_id] = Progress(next_index, self.max_inflight)
            pr.recent_active = True  # give a new member an election timeout to show up
        pr.is_learner = False

    def add_learner(self, node_id: int, next_index: int) -> None:
        self.learners.add(node_id)
        pr = Progress(next_index, self.max_inflight, is_learner=True)
        pr.recent_active = True
        self.progress[node_id] = pr

    def remove(self, node_id: int) -> None:
        self.voters.discard(node_id)
        self.learners.discard(node_id)
        self.progress.pop(node_id, None)
        self.votes.pop(node_id, None)

    def is_singleton(self) -> bool:
        return len(self.voters) == 1

    def committed(self) -> int:
        """The largest index known to be replicated on a majority of voters."""
        voters = self.voters
        n = len(voters)
        if n == 0:
            return 0
        progress = self.progress
        if n == 1:
            for v in voters:
                return progress[v].match
        matches = sorted([progress[v].match for v in voters], reverse=True)
        return matches[n // 2]

    def has_quorum(self, ids: set[int] | dict[int, bool]) -> bool:
        return sum(1 for v in self.voters if v in ids) > len(self.voters) // 2

    def quorum_active(self) -> bool:
        progress = self.progress
        active = sum(1 for v in self.voters if progress[v].recent_active)
        return active > len(self.voters) // 2

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node_id: int, granted: bool) -> None:
        self.votes.setdefault(node_id, granted)

    def tally_votes(self) -> VoteResult:
        granted = rejected = 0
        votes = self.votes
        for v in self.voters:
            g = votes.get(v)
            if g is True:
                granted += 1
            elif g is False:
                rejected += 1
        half = len(self.voters) // 2
        if granted > half:
            return VoteResult.WON
        if rejected >= len(self.voters) - half:
            return VoteResult.LOST
        return VoteResult.PENDING
