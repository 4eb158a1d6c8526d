"""Who is calling: the credentials a request presents and the identity they resolve to.

The API layer binds each request's credentials (the `token` metadata, later the TLS client
certificate's common name) to the running task with `bound()`. Everything the request then does
on this member, however deep (a Raft proposal made by a lock recipe, a read inside an election),
finds them with `current()` and needs no extra parameter. asyncio copies the binding into tasks a
request starts, so background clean-up runs as the same caller. Tasks that the member starts for
itself (lease expiry) bind `ROOT`, as etcd revokes expired leases with root's rights.

Credentials resolve to an `AuthInfo` (user name and the auth revision the caller was checked
against) lazily, at the moment a check needs them, as etcd resolves them: a request that needs no
check (Status, MemberList, LeaseTimeToLive) succeeds even with an invalid token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class AuthInfo:
    """A resolved caller. Revision 0 means "no user", which etcd refuses as "user name is empty"."""

    username: str
    revision: int


@dataclass(frozen=True)
class Credentials:
    """What a request presented. `token` is None when it sent no token at all."""

    token: str | None = None
    # The verified client certificate's common name, used as the user name when the member
    # runs with --client-cert-auth and no token is given (etcd's AuthInfoFromTLS).
    common_name: str | None = None
    # The member acting on its own behalf with root's rights (lease expiry).
    root: bool = False


ANONYMOUS = Credentials()
ROOT = Credentials(root=True)

_CALLER: ContextVar[Credentials] = ContextVar("raftkv_auth_caller", default=ANONYMOUS)


def current() -> Credentials:
    return _CALLER.get()


@contextlib.contextmanager
def bound(credentials: Credentials) -> Iterator[None]:
    """Run the block (and the tasks it starts) as the caller presenting `credentials`."""
    reset = _CALLER.set(credentials)
    try:
        yield
    finally:
        _CALLER.reset(reset)
