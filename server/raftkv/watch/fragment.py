"""Splitting a large watch response into fragments, for watchers created with `fragment=true`.

etcd's rule: a response of at least `limit` bytes with two or more events is cut into
consecutive pieces, each as full as it can be while staying under `limit` (a piece always holds
at least one event, however large); every piece but the last has `fragment=true`. A client
reassembles the pieces before handing the events on, so a revision split this way still reaches
the application whole.

Sizes are computed from each event's encoded size (a repeated message field costs a tag byte and
a length varint per element), so splitting is linear in the number of events.
"""

from __future__ import annotations

from raftkv.pb.etcdserverpb import rpc_pb2

# Field 11 (`events`) is a one-byte tag on the wire.
_EVENT_TAG_BYTES = 1


def _varint_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def split_fragments(response: rpc_pb2.WatchResponse, limit: int) -> list[rpc_pb2.WatchResponse]:
    """`response` as etcd sends it to a fragmenting watcher; see the module docstring."""
    if len(response.events) < 2 or response.ByteSize() < limit:
        return [response]
    envelope = rpc_pb2.WatchResponse()
    envelope.CopyFrom(response)
    del envelope.events[:]
    envelope.fragment = True
    base = envelope.ByteSize()
    pieces: list[rpc_pb2.WatchResponse] = []
    current = _new_piece(envelope)
    size = base
    for event in response.events:
        encoded = event.ByteSize()
        cost = _EVENT_TAG_BYTES + _varint_size(encoded) + encoded
        if current.events and size + cost >= limit:
            pieces.append(current)
            current = _new_piece(envelope)
            size = base
        current.events.append(event)
        size += cost
    current.fragment = False
    pieces.append(current)
    return pieces


def _new_piece(envelope: rpc_pb2.WatchResponse) -> rpc_pb2.WatchResponse:
    piece = rpc_pb2.WatchResponse()
    piece.CopyFrom(envelope)
    return piece
