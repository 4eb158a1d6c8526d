"""Real member processes, configured only by OTEL_* variables, export one Put's trace over OTLP.

The test runs a small OTLP/gRPC trace receiver (the `opentelemetry-proto` stubs) and starts a
3-member cluster whose environment names it. The batch span processor is told to wait a minute,
so the spans can only arrive through the flush a member does when it shuts down (SIGTERM).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from tests.support.etcd import free_port
from tests.support.raftkv import start_raftkv_cluster

TRACE_ID = 0x5B8EFFF798038103D269B633813FC60C
CLIENT_SPAN_ID = 0xEEE19B7EC3C1B174
TRACEPARENT = f"00-{TRACE_ID:032x}-{CLIENT_SPAN_ID:016x}-01"


@dataclass(frozen=True)
class Received:
    service: str
    instance: str
    name: str
    trace_id: int
    span_id: int
    parent_id: int


class Receiver(otlp_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[Received] = []
        self._lock = threading.Lock()

    def Export(
        self, request: otlp.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> otlp.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            Received(
                                service=attributes.get("service.name", ""),
                                instance=attributes.get("service.instance.id", ""),
                                name=span.name,
                                trace_id=int.from_bytes(span.trace_id, "big"),
                                span_id=int.from_bytes(span.span_id, "big"),
                                parent_id=int.from_bytes(span.parent_span_id or b"\0", "big"),
                            )
                        )
        return otlp.ExportTraceServiceResponse()

    def of_trace(self, trace_id: int) -> list[Received]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    servicer = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    otlp_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(None)


def test_members_export_one_trace_over_otlp_on_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: tuple[Receiver, int]
) -> None:
    collector, port = receiver
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER"):
        monkeypatch.delenv(name, raising=False)
    with start_raftkv_cluster(tmp_path) as cluster:
        leader = cluster.leader()
        with grpc.insecure_channel(leader.target) as channel:
            rpc_pb2_grpc.KVStub(channel).Put(
                rpc_pb2.PutRequest(key=b"k", value=b"v"),
                metadata=(("traceparent", TRACEPARENT),),
                timeout=10,
            )
            # Linearizable reads on the followers: they have applied the Put.
            for member in cluster.members:
                with grpc.insecure_channel(member.target) as to_member:
                    rpc_pb2_grpc.KVStub(to_member).Range(rpc_pb2.RangeRequest(key=b"k"), timeout=10)
        time.sleep(0.3)  # the followers' acknowledgements reach the leader
        assert collector.of_trace(TRACE_ID) == []  # still buffered in the members
        for member in cluster.members:
            member.kill(signal.SIGTERM)
    spans = collector.of_trace(TRACE_ID)
    assert {s.service for s in spans} == {"raftkv"}
    instances = {m.name for m in cluster.members}
    assert {s.instance for s in spans} == instances
    [server] = [s for s in spans if s.name == "etcdserverpb.KV/Put"]
    assert (server.instance, server.parent_id) == (leader.name, CLIENT_SPAN_ID)
    [propose] = [s for s in spans if s.name == "raft.propose"]
    assert propose.parent_id == server.span_id
    replicates = {s.span_id for s in spans if s.name == "raft.replicate"}
    assert len(replicates) == 2
    for follower in instances - {leader.name}:
        mine = {s.name: s for s in spans if s.instance == follower}
        assert {"raft.append", "wal.fsync", "raft.apply"} <= mine.keys()
        assert mine["raft.append"].parent_id in replicates
        assert mine["wal.fsync"].parent_id == mine["raft.append"].span_id
        assert mine["raft.apply"].parent_id == mine["raft.append"].parent_id
