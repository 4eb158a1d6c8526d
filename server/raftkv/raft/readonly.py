"""Pending ReadIndex requests on the leader (the "safe" read-only mode of the Raft thesis §6.4).

A request records the commit index at arrival; the leader then sends a heartbeat round carrying
the request's context. Once a quorum of voters acknowledged a context, that request and every
request queued before it are confirmed (the leader was still the leader after they arrived), and
each may be served at its recorded index once the application has applied up to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raftkv.pb.raftpb.raft_pb2 import Message


@dataclass(slots=True)
class ReadIndexStatus:
    req: Message  # the MsgReadIndex (``from`` 0 or the leader itself for a local request)
    index: int  # the leader's commit index when the request arrived
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    """Requests by context, in arrival order. Contexts must be unique while pending."""

    __slots__ = ("pending", "queue")

    def __init__(self) -> None:
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: int, m: Message) -> None:
        ctx = m.context
        if ctx in self.pending:
            return
        self.pending[ctx] = ReadIndexStatus(m, index)
        self.queue.append(ctx)

    def recv_ack(self, node_id: int, ctx: bytes) -> set[int] | None:
        rs = self.pending.get(ctx)
        if rs is None:
            return None
        rs.acks.add(node_id)
        return rs.acks

    def advance(self, ctx: bytes) -> list[ReadIndexStatus]:
        """Pop and return the requests up to and including ``ctx``."""
        if ctx not in self.pending:
            return []
        out: list[ReadIndexStatus] = []
        for i, c in enumerate(self.queue):
            out.append(self.pending.pop(c))
            if c == ctx:
                del self.queue[: i + 1]
                break
        return out

    def last_pending_request_ctx(self) -> bytes:
        return self.queue[-1] if self.queue else b""
