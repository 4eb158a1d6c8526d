"""bcrypt password hashes, as etcd stores them.

Hashing is slow on purpose (cost 10: about 80 ms here), so callers run these functions in a
worker thread, and only on the member that received the request: the hash travels in the Raft
entry and applying it is a plain write. bcrypt reads at most 72 bytes of a password; longer
ones are cut there, as Go's bcrypt did when etcd 3.4 was released.
"""

from __future__ import annotations

import bcrypt

# etcd's --bcrypt-cost default and bounds (golang.org/x/crypto/bcrypt's).
DEFAULT_COST = 10
MIN_COST = 4
MAX_COST = 31
_MAX_PASSWORD_BYTES = 72


def hash_password(password: str, cost: int = DEFAULT_COST) -> bytes:
    return bcrypt.hashpw(_bytes(password), bcrypt.gensalt(rounds=cost))


def password_matches(password: str, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(_bytes(password), hashed)
    except ValueError:  # not a bcrypt hash (a user added without password has none)
        return False


def _bytes(password: str) -> bytes:
    return password.encode()[:_MAX_PASSWORD_BYTES]
