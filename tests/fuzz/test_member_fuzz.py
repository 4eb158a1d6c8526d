"""Every client-facing request type, weird or mangled, against a real member process.

One member (a `raftkv` subprocess) gets, method by method, valid-but-weird requests (every field
of every etcdserverpb, v3lockpb and v3electionpb request message, with extreme values) and
mutated or random serialized bytes, over gRPC, then JSON bodies over the gateway, and damaged
bytes into its peer receiver. Every call must end, within its deadline, in a response or a gRPC
status — never an unmapped exception (grpcio's "Unexpected <class ...>") and never a hang — and
the member must go on serving, with no traceback in its log.

The KV writes that succeeded are then replayed, in order, on a fresh member: its HashKV must
equal the fuzzed member's, so nothing a refused or odd request did leaked into the state.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st
from raftkv.api.http.gateway import ROUTES, Kind
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.pb.raftpb import peer_pb2
from raftkv.pb.raftpb import raft_pb2 as pb
from raftkv.pb.v3electionpb import v3election_pb2
from raftkv.pb.v3lockpb import v3lock_pb2
from raftkv.transport import wire

from tests.fuzz.support import fuzz, messages, mutated
from tests.support.raftkv import RaftKVCluster, RaftKVMember, start_raftkv_cluster

pytestmark = pytest.mark.integration

DEADLINE_S = 10.0
# Methods that wait by design (a held lock, an election, a watch): running out of time is
# their normal answer, so they get a short deadline.
BLOCKING = {"Lock", "Campaign", "Observe", "Watch"}
BLOCKING_DEADLINE_S = 0.5
KV_WRITES = {"Put", "DeleteRange", "Txn", "Compact"}


def _methods() -> dict[str, MethodDescriptor]:
    found = {}
    for module in (rpc_pb2, v3lock_pb2, v3election_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found[f"/{service.full_name}/{method.name}"] = method
    return found


METHODS = _methods()
KV_PATHS = sorted(path for path in METHODS if path.startswith("/etcdserverpb.KV/"))
OTHER_PATHS = sorted(path for path in METHODS if path not in KV_PATHS)


def request_class(path: str) -> type[Message]:
    return message_factory.GetMessageClass(METHODS[path].input_type)


@st.composite
def request_bytes(draw: st.DrawFn, path: str) -> bytes:
    """A weird request for `path`, serialized, maybe mangled afterwards, or pure noise."""
    valid = draw(messages(request_class(path))).SerializeToString()
    return draw(
        st.one_of(
            st.just(valid),
            st.just(valid),
            mutated(valid),
            st.binary(max_size=32),
        )
    )


def calls(paths: list[str]) -> st.SearchStrategy[list[tuple[str, list[bytes]]]]:
    """1-3 calls: a method and its request(s) (several for the streaming ones)."""
    one = st.sampled_from(paths).flatmap(
        lambda path: st.tuples(st.just(path), st.lists(request_bytes(path), min_size=1, max_size=3))
    )
    return st.lists(one, min_size=1, max_size=3)


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    responses: list[bytes] = field(default_factory=list)


def call(channel: grpc.Channel, path: str, requests: list[bytes]) -> Outcome:
    """Send `requests` to `path` as raw bytes; the status and the raw responses."""
    method = METHODS[path]
    identity = {"request_serializer": None, "response_deserializer": None}
    deadline = BLOCKING_DEADLINE_S if method.name in BLOCKING else DEADLINE_S
    try:
        if method.client_streaming:
            stream = channel.stream_stream(path, **identity)
            responses = list(stream(iter(requests), timeout=deadline))
        elif method.server_streaming:
            stream = channel.unary_stream(path, **identity)
            responses = list(stream(requests[0], timeout=deadline))
        else:
            unary = channel.unary_unary(path, **identity)
            responses = [unary(requests[0], timeout=deadline)]
    except grpc.RpcError as error:
        return Outcome(error.code(), error.details() or "")
    return Outcome(grpc.StatusCode.OK, "", responses)


def check(path: str, outcome: Outcome) -> None:
    name = path.rsplit("/", 1)[1]
    assert not outcome.details.startswith("Unexpected "), f"{path} crashed: {outcome.details}"
    if outcome.code is grpc.StatusCode.DEADLINE_EXCEEDED:
        assert name in BLOCKING, f"{path} hung"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftKVCluster]:
    with start_raftkv_cluster(tmp_path_factory.mktemp("fuzz"), size=1) as c:
        yield c


def hash_kv(member: RaftKVMember) -> tuple[int, int, int]:
    with grpc.insecure_channel(member.target) as channel:
        answer = rpc_pb2_grpc.MaintenanceStub(channel).HashKV(
            rpc_pb2.HashKVRequest(), timeout=DEADLINE_S
        )
    return answer.hash, answer.compact_revision, answer.header.revision


def test_kv_requests_then_a_clean_replay_hashes_the_same(
    cluster: RaftKVCluster, tmp_path: Path
) -> None:
    member = cluster.members[0]
    applied: list[tuple[str, bytes]] = []
    with grpc.insecure_channel(member.target) as channel:

        def body(sequence: list[tuple[str, list[bytes]]]) -> None:
            for path, requests in sequence:
                outcome = call(channel, path, requests[:1])
                check(path, outcome)
                if outcome.code is grpc.StatusCode.OK and path.rsplit("/", 1)[1] in KV_WRITES:
                    applied.append((path, requests[0]))

        fuzz(body, calls(KV_PATHS), examples=60)
    assert_no_traceback(member)
    assert applied, "no write succeeded: the fuzzer only exercised refusals"
    with start_raftkv_cluster(tmp_path, size=1) as clean:
        with grpc.insecure_channel(clean.members[0].target) as channel:
            for path, request in applied:
                outcome = call(channel, path, [request])
                assert outcome.code is grpc.StatusCode.OK, (path, outcome)
        assert hash_kv(clean.members[0]) == hash_kv(member)


def test_every_other_request_type_gets_an_answer(cluster: RaftKVCluster) -> None:
    member = cluster.members[0]
    with grpc.insecure_channel(member.target) as channel:

        def body(sequence: list[tuple[str, list[bytes]]]) -> None:
            for path, requests in sequence:
                check(path, call(channel, path, requests))

        fuzz(body, calls(OTHER_PATHS), examples=80)
        assert_still_serving(channel)
    assert_no_traceback(member)


# The calls that end on their own (not a watch, an observation, a lock or a campaign).
GATEWAY_ROUTES = [
    route
    for route in ROUTES
    if route.kind in (Kind.UNARY, Kind.BIDI_CLOSED) and route.method.name not in BLOCKING
]


@st.composite
def gateway_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    route = draw(st.sampled_from(GATEWAY_ROUTES))
    valid = json.dumps(json_format.MessageToDict(draw(messages(route.request_class)))).encode()
    body = draw(st.one_of(st.just(valid), mutated(valid), st.binary(max_size=32)))
    return "/v3" + route.path, body


def test_gateway_bodies_get_json_answers(cluster: RaftKVCluster) -> None:
    member = cluster.members[0]
    address = urlsplit(member.client_url)

    def body(request: tuple[str, bytes]) -> None:
        path, payload = request
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=DEADLINE_S)
        try:
            connection.request("POST", path, body=payload)
            response = connection.getresponse()
            text = response.read()
        except TimeoutError as error:
            raise AssertionError(f"{path} hung") from error
        finally:
            connection.close()
        assert response.status != 500 or text != b"internal server error\n", f"{path} crashed"
        if text or not path.endswith("/keepalive"):  # a keep-alive of no requests: no lines
            json.loads(text.split(b"\n", 1)[0])

    fuzz(body, gateway_bodies(), examples=80)
    with grpc.insecure_channel(member.target) as channel:
        assert_still_serving(channel)
    assert_no_traceback(member)


PEER_STREAM = "/raftkv.raftpb.Peer/Stream"
PEER_SNAPSHOT = "/raftkv.raftpb.Peer/SendSnapshot"


@st.composite
def peer_calls(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    """Damaged bytes for the peer receiver: message batches or snapshot chunks. Well-formed
    messages are the Raft core's targets (test_raft_fuzz): a well-formed message from a peer
    is obeyed by design, so it does not belong in a test of what must be refused."""
    path = draw(st.sampled_from([PEER_STREAM, PEER_SNAPSHOT]))
    if path == PEER_STREAM:
        heartbeat = pb.Message(type=pb.MSG_HEARTBEAT_RESP, to=1, term=1)
        valid = peer_pb2.MessageBatch(messages=[heartbeat]).SerializeToString()
    else:
        valid = peer_pb2.SnapshotChunk(data=b"payload").SerializeToString()
    noise = st.one_of(mutated(valid), st.binary(min_size=1, max_size=32))
    return path, draw(st.lists(noise, min_size=1, max_size=3))


def test_damaged_peer_traffic_is_refused(cluster: RaftKVCluster) -> None:
    member = cluster.members[0]
    with grpc.insecure_channel(member.target) as channel:
        header = rpc_pb2_grpc.MaintenanceStub(channel).Status(rpc_pb2.StatusRequest()).header
    metadata = wire.peer_metadata(0xFEED, header.member_id, header.cluster_id)
    with grpc.insecure_channel(urlsplit(member.peer_url).netloc) as peers:

        def body(case: tuple[str, list[bytes]]) -> None:
            path, requests = case
            stream = peers.stream_unary(path, request_serializer=None, response_deserializer=None)
            try:
                stream(iter(requests), metadata=metadata, timeout=DEADLINE_S)
            except grpc.RpcError as error:
                assert error.code() is not grpc.StatusCode.DEADLINE_EXCEEDED, f"{path} hung"
                # Undecodable bytes get grpcio's own refusal on the peer port (peers are raftkv
                # members, not etcd clients); any other unexpected exception is a bug.
                details = error.details() or ""
                assert not details.startswith("Unexpected ") or "DecodeError" in details, details

        fuzz(body, peer_calls(), examples=60)
    with grpc.insecure_channel(member.target) as channel:
        assert_still_serving(channel)
    assert_no_traceback(member)


def assert_still_serving(channel: grpc.Channel) -> None:
    maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
    alarms = maintenance.Alarm(
        rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET), timeout=DEADLINE_S
    ).alarms
    for alarm in alarms:  # a fuzzed Alarm request may have raised one
        maintenance.Alarm(
            rpc_pb2.AlarmRequest(
                action=rpc_pb2.AlarmRequest.DEACTIVATE, memberID=alarm.memberID, alarm=alarm.alarm
            ),
            timeout=DEADLINE_S,
        )
    kv = rpc_pb2_grpc.KVStub(channel)
    kv.Put(rpc_pb2.PutRequest(key=b"still-serving", value=b"yes"), timeout=DEADLINE_S)
    assert kv.Range(rpc_pb2.RangeRequest(key=b"still-serving"), timeout=DEADLINE_S).count == 1


# grpcio's own report of undecodable bytes on the peer port (the peer server has no
# tolerant decoding, unlike the client port): a refusal, logged with its stack.
PEER_DECODE_REFUSAL = "Unexpected [DecodeError] raised by servicer method [/raftkv.raftpb.Peer/"


def assert_no_traceback(member: RaftKVMember) -> None:
    """Nothing failed inside the member that its error handling did not expect."""
    for line in member.log_path.read_text(errors="replace").splitlines():
        assert "Traceback" not in line or PEER_DECODE_REFUSAL in line, line[:6000]
