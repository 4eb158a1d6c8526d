"""etcd's Auth service: enabling auth, authenticating, and managing users, roles and grants.

Changes go through Raft and are authorized where they are applied (`raftkv.auth.requests`);
the listings and lookups (UserGet, UserList, RoleGet, RoleList), which etcd 3.4 also sends
through Raft, are answered here after a read barrier, with the same checks, which gives the same
linearizable answer without a log entry.

Passwords never enter the log: UserAdd and UserChangePassword hash them here, on the member that
received the request, at `--bcrypt-cost`, in a worker thread (a hash takes tens of milliseconds).
Authenticate checks the password here too, then proposes the authentication so that every
member records the token; as in etcd, it starts over if the auth state changed between the check
and the entry (the password it checked may have been replaced).

etcd 3.4 has no AuthStatus method (it came in 3.5): calling it fails with Unimplemented and the
text etcd's gRPC server gives.

`watch_refusal` is the canceled response etcd sends for a watch the caller may not read.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from raftkv.api import errors
from raftkv.api.handlers import unary
from raftkv.auth import AuthError, AuthFailedError, hash_password, password_matches
from raftkv.node.server import MemberServer
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.etcdserverpb import rpc_pb2_grpc
from raftkv.pb.serverpb import internal_pb2 as serverpb

_AUTH_STATUS_UNKNOWN = "unknown method AuthStatus for service etcdserverpb.Auth"


def go_status_text(error: errors.EtcdError) -> str:
    """Go's text for a gRPC status error ("rpc error: code = PermissionDenied desc = ...")."""
    name = error.code.name
    code = "Canceled" if name == "CANCELLED" else name.title().replace("_", "")
    return f"rpc error: code = {code} desc = {error.message}"


def watch_refusal(error: AuthError, revision: int) -> pb.WatchResponse:
    """etcd's answer to a watch create the caller may not make: created, canceled, id -1."""
    mapped = errors.lookup(error)
    assert mapped is not None  # every auth error is mapped
    return pb.WatchResponse(
        header=pb.ResponseHeader(revision=revision),
        watch_id=-1,
        created=True,
        canceled=True,
        cancel_reason=go_status_text(mapped),
    )


class AuthService(rpc_pb2_grpc.AuthServicer):
    def __init__(self, server: MemberServer) -> None:
        self.server = server

    async def _propose(self, **request: Any) -> Any:
        """Propose one auth change; the response is the applied entry's."""
        return await self.server.propose(serverpb.InternalRequest(**request))

    async def _hash(self, password: str) -> bytes:
        return await asyncio.to_thread(hash_password, password, self.server.config.bcrypt_cost)

    # ---- enabling and authenticating -----------------------------------------------------------

    @unary
    async def AuthEnable(
        self, request: pb.AuthEnableRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthEnableResponse:
        return await self._propose(auth_enable=request)

    @unary
    async def AuthDisable(
        self, request: pb.AuthDisableRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthDisableResponse:
        return await self._propose(auth_disable=request)

    async def AuthStatus(
        self, request: pb.AuthStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthStatusResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, _AUTH_STATUS_UNKNOWN)
        raise AssertionError("unreachable: abort raises")

    @unary
    async def Authenticate(
        self, request: pb.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthenticateResponse:
        await self.server.node.read_barrier()
        gate = self.server.auth
        while True:
            hashed, checked_at = gate.store.password_hash(request.name)
            matches = await asyncio.to_thread(password_matches, request.password, hashed)
            if not matches:
                raise AuthFailedError()
            prefix = gate.store.tokens.gen_prefix()
            response = await self._propose(
                authenticate=serverpb.AuthenticateInternalRequest(
                    name=request.name, simple_token=prefix
                )
            )
            if gate.store.revision == checked_at:
                return response

    # ---- users ---------------------------------------------------------------------------------

    @unary
    async def UserAdd(
        self, request: pb.AuthUserAddRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthUserAddResponse:
        add = serverpb.AuthUserAddInternalRequest(name=request.name)
        if request.HasField("options"):
            add.options.CopyFrom(request.options)
        if not request.options.no_password:
            add.hashed_password = await self._hash(request.password)
        return await self._propose(auth_user_add=add)

    @unary
    async def UserGet(
        self, request: pb.AuthUserGetRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthUserGetResponse:
        await self.server.node.read_barrier()
        await self.server.auth.check_user_get(request.name)
        roles = self.server.auth.store.user_roles(request.name)
        response = pb.AuthUserGetResponse(roles=roles)
        self.server.fill_header(response.header)
        return response

    @unary
    async def UserList(
        self, request: pb.AuthUserListRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthUserListResponse:
        await self.server.node.read_barrier()
        await self.server.auth.require_admin()
        users = self.server.auth.store.user_names()
        response = pb.AuthUserListResponse(users=users)
        self.server.fill_header(response.header)
        return response

    @unary
    async def UserDelete(
        self, request: pb.AuthUserDeleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthUserDeleteResponse:
        return await self._propose(auth_user_delete=request)

    @unary
    async def UserChangePassword(
        self, request: pb.AuthUserChangePasswordRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthUserChangePasswordResponse:
        change = serverpb.AuthUserChangePasswordInternalRequest(
            name=request.name, hashed_password=await self._hash(request.password)
        )
        return await self._propose(auth_user_change_password=change)

    @unary
    async def UserGrantRole(
        self, request: pb.AuthUserGrantRoleRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthUserGrantRoleResponse:
        return await self._propose(auth_user_grant_role=request)

    @unary
    async def UserRevokeRole(
        self, request: pb.AuthUserRevokeRoleRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthUserRevokeRoleResponse:
        return await self._propose(auth_user_revoke_role=request)

    # ---- roles ---------------------------------------------------------------------------------

    @unary
    async def RoleAdd(
        self, request: pb.AuthRoleAddRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthRoleAddResponse:
        return await self._propose(auth_role_add=request)

    @unary
    async def RoleGet(
        self, request: pb.AuthRoleGetRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthRoleGetResponse:
        await self.server.node.read_barrier()
        await self.server.auth.check_role_get(request.role)
        perms = self.server.auth.store.role_permissions(request.role)
        response = pb.AuthRoleGetResponse(perm=perms)
        self.server.fill_header(response.header)
        return response

    @unary
    async def RoleList(
        self, request: pb.AuthRoleListRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthRoleListResponse:
        await self.server.node.read_barrier()
        await self.server.auth.require_admin()
        roles = self.server.auth.store.role_names()
        response = pb.AuthRoleListResponse(roles=roles)
        self.server.fill_header(response.header)
        return response

    @unary
    async def RoleDelete(
        self, request: pb.AuthRoleDeleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthRoleDeleteResponse:
        return await self._propose(auth_role_delete=request)

    @unary
    async def RoleGrantPermission(
        self, request: pb.AuthRoleGrantPermissionRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthRoleGrantPermissionResponse:
        return await self._propose(auth_role_grant_permission=request)

    @unary
    async def RoleRevokePermission(
        self, request: pb.AuthRoleRevokePermissionRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthRoleRevokePermissionResponse:
        return await self._propose(auth_role_revoke_permission=request)
