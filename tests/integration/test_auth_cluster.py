"""Auth on a real 3-member raftkv cluster: replication, restarts, token lifetimes, JWT.

Auth state travels through Raft and lives in the backend, so any member answers with it, and a
member that restarts still has it. Simple tokens are issued through Raft too, so a token from
one member works on the others; they live in memory only and die with a restart, or when unused
for `--auth-token-ttl` seconds. JWT tokens, signed with a key made by `openssl` here, need no
shared state at all, and become "old" once users, roles or grants change. The JSON gateway's
clients send their token in the Authorization header.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from raftkv.pb.authpb.auth_pb2 import Permission
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.etcdserverpb import rpc_pb2_grpc as rpc

from tests.support.etcd import etcdctl
from tests.support.raftkv import RaftKVCluster, RaftKVMember, start_raftkv_cluster

pytestmark = pytest.mark.integration

T = TypeVar("T")
_TIMEOUT = 10.0


def call(member: RaftKVMember, method: Callable[[grpc.Channel], T]) -> T:
    with grpc.insecure_channel(member.target) as channel:
        return method(channel)


def token_md(token: str) -> list[tuple[str, str]]:
    return [("token", token)]


def authenticate(member: RaftKVMember, name: str, password: str) -> str:
    request = pb.AuthenticateRequest(name=name, password=password)
    return call(member, lambda ch: rpc.AuthStub(ch).Authenticate(request, timeout=_TIMEOUT)).token


def get(member: RaftKVMember, key: bytes, token: str) -> pb.RangeResponse:
    request = pb.RangeRequest(key=key)
    return call(
        member, lambda ch: rpc.KVStub(ch).Range(request, metadata=token_md(token), timeout=_TIMEOUT)
    )


def refused(action: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        action()
    return error.value.code(), error.value.details()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post(
    member: RaftKVMember, path: str, body: dict[str, str], token: str | None = None
) -> dict[str, object]:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = token
    request = urllib.request.Request(
        member.client_url + path, json.dumps(body).encode(), headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
        answer: dict[str, object] = json.loads(response.read())
    return answer


def set_up_auth(member: RaftKVMember) -> None:
    """root, alice reading /app/, a value to read, auth enabled (through `member`)."""

    def setup(channel: grpc.Channel) -> None:
        auth, kv = rpc.AuthStub(channel), rpc.KVStub(channel)
        auth.UserAdd(pb.AuthUserAddRequest(name="root", password="rootpw"), timeout=_TIMEOUT)
        auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"))
        auth.UserAdd(pb.AuthUserAddRequest(name="alice", password="alicepw"), timeout=_TIMEOUT)
        auth.RoleAdd(pb.AuthRoleAddRequest(name="reader"))
        perm = Permission(permType=Permission.READ, key=b"/app/", range_end=b"/app0")
        auth.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(name="reader", perm=perm))
        auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="alice", role="reader"))
        kv.Put(pb.PutRequest(key=b"/app/x", value=b"hello"))
        auth.AuthEnable(pb.AuthEnableRequest(), timeout=_TIMEOUT)

    call(member, setup)


def restart_and_wait(member: RaftKVMember) -> None:
    """Restart a killed member and wait until alice can read through it."""
    member.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            get(member, b"/app/x", authenticate(member, "alice", "alicepw"))
            return
        except grpc.RpcError:
            if time.monotonic() > deadline or not member.alive:
                raise
            time.sleep(0.2)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RaftKVCluster]:
    with start_raftkv_cluster(tmp_path, size=3, auth_token_ttl=2) as cluster:
        yield cluster


def test_auth_state_is_replicated_survives_restarts_and_tokens_work_everywhere(
    cluster: RaftKVCluster,
) -> None:
    m0, m1, m2 = cluster.members
    set_up_auth(m0)

    # A simple token from one member works on the others (issued through Raft).
    token = authenticate(m0, "alice", "alicepw")
    assert token.split(".")[0].isalpha() and token.split(".")[1].isdigit()
    for member in (m1, m2):
        assert get(member, b"/app/x", token).kvs[0].value == b"hello"
    assert refused(lambda: get(m1, b"/secret", token)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "etcdserver: permission denied",
    )
    # The JSON gateway passes the Authorization header on as the token.
    http_token = post(m1, "/v3/auth/authenticate", {"name": "alice", "password": "alicepw"})
    found = post(m2, "/v3/kv/range", {"key": b64(b"/app/x")}, str(http_token["token"]))
    assert found["kvs"][0]["value"] == b64(b"hello")  # type: ignore[index]

    root = authenticate(m2, "root", "rootpw")
    listed = call(
        m2,
        lambda ch: rpc.AuthStub(ch).UserList(pb.AuthUserListRequest(), metadata=token_md(root)),
    )
    assert list(listed.users) == ["alice", "root"]

    # A restarted member keeps the auth state, not the tokens (memory only, as etcd's).
    before_restart = authenticate(m2, "alice", "alicepw")
    m2.kill(signal.SIGKILL)
    restart_and_wait(m2)
    assert refused(lambda: get(m2, b"/app/x", before_restart)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "etcdserver: invalid auth token",
    )
    assert refused(lambda: get(m2, b"/app/x", "")) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "etcdserver: invalid auth token",
    )
    anonymous = pb.RangeRequest(key=b"/app/x")
    assert refused(lambda: call(m2, lambda ch: rpc.KVStub(ch).Range(anonymous))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "etcdserver: user name is empty",
    )
    result = etcdctl(m2.client_url, "--user=root:rootpw", "role", "get", "reader")
    assert result.stdout == "Role reader\nKV Read:\n\t[/app/, /app0) (prefix /app/)\nKV Write:\n"

    # A token unused for --auth-token-ttl (2 s) expires; using one keeps it alive.
    idle = authenticate(m1, "alice", "alicepw")
    busy = authenticate(m1, "alice", "alicepw")
    for _ in range(6):
        time.sleep(0.5)
        get(m1, b"/app/x", busy)
    assert refused(lambda: get(m1, b"/app/x", idle))[1] == "etcdserver: invalid auth token"


def _openssl_rsa_keys(directory: Path) -> tuple[Path, Path]:
    private, public = directory / "jwt.key", directory / "jwt.pub"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(private), "2048"], check=True, capture_output=True
    )
    subprocess.run(
        ["openssl", "rsa", "-in", str(private), "-pubout", "-out", str(public)],
        check=True,
        capture_output=True,
    )
    return private, public


def test_jwt_tokens_signed_with_an_openssl_key(tmp_path: Path) -> None:
    private, public = _openssl_rsa_keys(tmp_path)
    spec = f"jwt,pub-key={public},priv-key={private},sign-method=RS256,ttl=10m"
    with start_raftkv_cluster(tmp_path, size=3, auth_token=spec) as cluster:
        m0, m1, m2 = cluster.members
        set_up_auth(m0)
        token = authenticate(m0, "alice", "alicepw")
        header, claims, _ = (
            json.loads(base64.urlsafe_b64decode(part + "==")) if i < 2 else part
            for i, part in enumerate(token.split("."))
        )
        assert header == {"alg": "RS256", "typ": "JWT"}
        assert claims["username"] == "alice" and claims["exp"] > time.time() + 500
        assert get(m1, b"/app/x", token).kvs[0].value == b"hello"

        # Any change of users, roles or grants makes earlier tokens old for key access.
        root = authenticate(m1, "root", "rootpw")
        call(
            m1,
            lambda ch: rpc.AuthStub(ch).RoleAdd(
                pb.AuthRoleAddRequest(name="other"), metadata=token_md(root)
            ),
        )
        assert refused(lambda: get(m2, b"/app/x", token)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "etcdserver: revision of auth store is old",
        )
        # etcdctl authenticates anew for each command.
        result = etcdctl(cluster.endpoints, "--user=alice:alicepw", "get", "/app/x")
        assert (result.returncode, result.stdout) == (0, "/app/x\nhello\n")
        tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        assert refused(lambda: get(m2, b"/app/x", tampered))[1] == "etcdserver: invalid auth token"
