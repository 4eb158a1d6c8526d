"""Revisions `(main, sub)` and their byte encoding, which orders backend rows by revision.

`main` is the store revision a write transaction produced; `sub` numbers the changes inside it.
The encoding is etcd's: 8 bytes of `main` big-endian, `_`, 8 bytes of `sub` big-endian (17 bytes),
so byte order equals revision order and a range scan of the key bucket replays history in order.
A deletion's row carries a trailing `t` (18 bytes), which keeps it in the same position.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

_FORMAT = struct.Struct(">QcQ")
REVISION_BYTES = _FORMAT.size  # 17
_TOMBSTONE = b"t"


class Revision(NamedTuple):
    main: int
    sub: int = 0

    def to_bytes(self, tombstone: bool = False) -> bytes:
        raw = _FORMAT.pack(self.main, b"_", self.sub)
        return raw + _TOMBSTONE if tombstone else raw

    @classmethod
    def from_bytes(cls, raw: bytes) -> Revision:
        """Decode a 17-byte revision, or an 18-byte tombstone row key (see `is_tombstone`)."""
        if len(raw) not in (REVISION_BYTES, REVISION_BYTES + 1):
            raise ValueError(f"not an encoded revision: {raw!r}")
        main, _, sub = _FORMAT.unpack_from(raw)
        return cls(main, sub)


def is_tombstone(raw: bytes) -> bool:
    """True for the row key of a deletion."""
    return len(raw) == REVISION_BYTES + 1 and raw[-1:] == _TOMBSTONE


def revision_floor(main: int) -> bytes:
    """The smallest encoded revision with this `main` (a scan bound)."""
    return Revision(main, 0).to_bytes()
