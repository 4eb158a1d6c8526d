"""What the fuzz targets share: how long they run, and strategies for protobuf messages.

Every target is a hypothesis property run by `fuzz(body, *strategies, examples=N)`:

- in `make test` it runs N examples derandomized (the same examples on every machine and every
  run, so CI is deterministic and a failure reproduces);
- with `RAFTKV_FUZZ_SECONDS=S` (what `make fuzz` sets) it then keeps running fresh random
  batches for S more seconds per target. A failure prints the falsifying example and a
  `@reproduce_failure` blob.

`messages(cls)` builds valid-but-weird instances of any protobuf message from its descriptor:
extreme integers, unknown enum values, empty, long and non-UTF-8-looking byte strings, and
nested messages to a bounded depth, so every field of every request type gets odd values.
`mutated(data)` turns valid serialized bytes into the near-misses a parser meets in practice:
flipped bits, cut-off tails, spliced-in noise, a length varint made huge.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ_SECONDS_ENV = "RAFTKV_FUZZ_SECONDS"
MAX_DEPTH = 3


def fuzz_seconds() -> float:
    return float(os.environ.get(FUZZ_SECONDS_ENV, "0") or 0)


def fuzz(body: Callable[..., None], *strategies: st.SearchStrategy[Any], examples: int) -> None:
    """Run `body` on values drawn from `strategies`: see the module docstring."""
    deterministic = settings(
        derandomize=True,
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    _run(body, strategies, deterministic)
    deadline = time.monotonic() + fuzz_seconds()
    exploring = settings(deterministic, derandomize=False, max_examples=max(examples, 100))
    while time.monotonic() < deadline:
        _run(body, strategies, exploring)


def _run(
    body: Callable[..., None], strategies: tuple[st.SearchStrategy[Any], ...], chosen: settings
) -> None:
    # A fresh test function per run: hypothesis decorates a function only once.
    def test(values: tuple[Any, ...]) -> None:
        body(*values)

    test.__name__ = getattr(body, "__name__", "fuzz_target")
    given(st.tuples(*strategies))(chosen(test))()


_INT_EDGES = {
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
}

_weird_bytes = st.one_of(
    st.just(b""),
    st.binary(max_size=24),
    st.sampled_from([b"\x00", b"\xff", b"\x00\x00", b"/", b"\xff" * 8, b"a" * 300]),
)
_weird_text = st.one_of(
    st.just(""),
    st.text(max_size=16),
    st.sampled_from(["\x00", "http://", "http://127.0.0.1:1", "\u202e", "a" * 300]),
)


def _integers(kind: int) -> st.SearchStrategy[int]:
    low, high = _INT_EDGES[kind]
    return st.one_of(
        st.sampled_from([0, 1, low, high, low + 1, high - 1, -1 if low < 0 else 2]),
        st.integers(min_value=max(low, -1000), max_value=min(high, 1000)),
        st.integers(min_value=low, max_value=high),
    )


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_EDGES:
        return _integers(kind)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_BYTES:
        return _weird_bytes
    if kind == FieldDescriptor.TYPE_STRING:
        return _weird_text
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [value.number for value in field.enum_type.values]
        # Open enums (proto3) keep unknown numbers: a peer or client may send them.
        return st.one_of(st.sampled_from(known), st.integers(-5, 2**31 - 1))
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if kind == FieldDescriptor.TYPE_FLOAT else 64)
    raise NotImplementedError(f"field type {kind} of {field.full_name}")


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


@st.composite
def _message(draw: st.DrawFn, descriptor: Descriptor, cls: type[Message], depth: int) -> Message:
    message = cls()
    chosen_oneofs: set[str] = set()
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof.name in chosen_oneofs or not draw(st.booleans()):
                continue
            chosen_oneofs.add(oneof.name)
        elif not draw(st.integers(0, 3)):  # most fields set, some left at their default
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= MAX_DEPTH:
                continue
            if _is_repeated(field):
                container = getattr(message, field.name)
                for _ in range(draw(st.integers(0, 3))):
                    element = container.add()
                    element.CopyFrom(draw(_message(field.message_type, type(element), depth + 1)))
            else:
                sub = getattr(message, field.name)
                sub.CopyFrom(draw(_message(field.message_type, type(sub), depth + 1)))
                sub.SetInParent()
        elif _is_repeated(field):
            getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=4)))
        else:
            setattr(message, field.name, draw(_scalar(field)))
    return message


def messages(cls: type[Message]) -> st.SearchStrategy[Message]:
    """Valid-but-weird instances of `cls` (see the module docstring)."""
    return _message(cls.DESCRIPTOR, cls, 0)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with one or a few damaging edits (see the module docstring)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "huge-length"]))
        position = draw(st.integers(0, len(out)))
        if edit == "flip" and out:
            at = min(position, len(out) - 1)
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "truncate":
            del out[position:]
        elif edit == "insert":
            out[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "delete":
            del out[position : position + draw(st.integers(1, 16))]
        elif edit == "huge-length":
            out[position:position] = b"\x0a\xff\xff\xff\xff\x0f"
    return bytes(out)
