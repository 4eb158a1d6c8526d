"""The member's door: resolves who is calling and runs etcd's checks for requests served here.

Writes are authorized where they are applied (`raftkv.auth.requests`); the gate only stamps the
caller into the proposal's header (`stamp`). Everything a member answers without Raft is checked
here, against the member's auth state after the request's read barrier: key reads (Range, a
read-only Txn, a watch), and the admin-only calls that never reach the log (member changes,
Defragment, Hash, HashKV, Snapshot, the user and role listings).

Credentials come from `raftkv.auth.identity.current()` unless given. A simple token names the
Raft index that issued it; a member that has not applied that index yet waits for it (at most
`index_wait` seconds), so a token obtained from one member works at once on any other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from raftkv.auth import identity
from raftkv.auth.errors import AuthError, InvalidAuthTokenError
from raftkv.auth.identity import AuthInfo, Credentials
from raftkv.auth.requests import LeaseKeys, check_txn
from raftkv.auth.store import ROOT_USER, AuthStore
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.serverpb import internal_pb2 as serverpb

# etcd's watch treats an empty key as the smallest key.
_SMALLEST_KEY = b"\0"


class AuthGate:
    """Caller resolution and local checks for one member (its store may be replaced by a
    snapshot restore, hence the accessor)."""

    def __init__(
        self,
        store: Callable[[], AuthStore],
        wait_applied: Callable[[int], Awaitable[None]],
        lease_keys: LeaseKeys,
        *,
        index_wait: float,
        client_cert_auth: bool = False,
    ) -> None:
        self._store = store
        self._wait_applied = wait_applied
        self._lease_keys = lease_keys
        self._index_wait = index_wait
        # --client-cert-auth: a TLS client certificate's common name names the user.
        self.client_cert_auth = client_cert_auth

    @property
    def store(self) -> AuthStore:
        return self._store()

    async def resolve(self, credentials: Credentials | None = None) -> AuthInfo | None:
        """The caller's identity (None: anonymous); raises InvalidAuthTokenError."""
        creds = identity.current() if credentials is None else credentials
        if creds.root:
            return AuthInfo(ROOT_USER, self.store.revision)
        if creds.token is not None:
            index = self.store.tokens.index_of(creds.token)
            if index:
                try:
                    async with asyncio.timeout(self._index_wait):
                        await self._wait_applied(index)
                except TimeoutError:
                    raise InvalidAuthTokenError() from None
            store = self.store
            info = store.tokens.info(creds.token, store.revision)
            if info is None:
                raise InvalidAuthTokenError()
            return info
        if creds.common_name and self.client_cert_auth:
            return AuthInfo(creds.common_name, self.store.revision)
        return None

    async def stamp(self, header: serverpb.RequestHeader) -> None:
        """Name the caller in a proposal's header; its entry is authorized when applied."""
        info = await self.resolve()
        if info is not None:
            header.username = info.username
            header.auth_revision = info.revision

    async def check_range(self, key: bytes, range_end: bytes) -> None:
        info = await self.resolve()
        self.store.is_range_permitted(info, key, range_end)

    async def check_txn(self, txn: pb.TxnRequest) -> None:
        info = await self.resolve()
        check_txn(self.store, info, txn, self._lease_keys)

    async def check_watch(
        self, key: bytes, range_end: bytes, credentials: Credentials | None = None
    ) -> None:
        """A watch needs read access to its whole range."""
        info = await self.resolve(credentials)
        self.store.is_range_permitted(info, key or _SMALLEST_KEY, range_end)

    async def require_admin(self, credentials: Credentials | None = None) -> None:
        info = await self.resolve(credentials)
        self.store.is_admin_permitted(info)

    async def check_user_get(self, name: str) -> None:
        """A user may read its own roles; reading another's needs the root role."""
        info = await self.resolve()
        try:
            self.store.is_admin_permitted(info)
        except AuthError:
            if info is None or info.username != name:
                raise

    async def check_role_get(self, role: str) -> None:
        """A user may read the grants of its own roles; others need the root role."""
        info = await self.resolve()
        try:
            self.store.is_admin_permitted(info)
        except AuthError:
            if info is None or not self.store.has_role(info.username, role):
                raise
