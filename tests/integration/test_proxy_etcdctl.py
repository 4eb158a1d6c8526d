"""etcdctl through `raftkv grpc-proxy` in front of raftkv answers as etcd 3.4 does directly.

The etcdctl comparison suites (`tests/compat`, the lock and election comparisons) are run
again, unchanged, with one difference: the raftkv side is a proxy in front of the raftkv
cluster instead of the members themselves. The tests are imported from their modules, so they
are the same code; the fixtures here hand them a pair whose raftkv endpoint is the proxy. The
selection covers KV (every output format, ranges, sorting, revisions, deletes, transactions,
compaction, refused requests), watch (history replay, a compacted start), leases, `etcdctl
lock` and `etcdctl elect`. Left out: commands about one endpoint (`endpoint status/health/
hashkv`, `defrag`), whose answer names the member that served it, and tests that address a
member directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from google.protobuf.message import Message

from tests.compat.harness import Case, CtlResult, Outcome, Pair, System, start_pair
from tests.compat.normalize import Rule
from tests.compat.test_etcdctl_kv import (
    MAX_REQUEST_BYTES,
    test_alarm_list_and_disarm_without_alarms,
    test_compaction_and_reads_of_compacted_revisions,
    test_delete_key_prefix_range_and_from_key,
    test_get_at_past_present_and_future_revisions,
    test_get_prefix_from_key_range_limit_count_and_keys_only,
    test_get_sorted_by_every_target_and_order,
    test_member_list,
    test_put_and_get_in_every_output_format,
    test_request_larger_than_max_request_bytes,
    test_requests_the_server_refuses,
    test_txn_branches_compares_and_output_formats,
    test_txn_errors,
    test_txn_interactive,
    test_txn_operation_limit,
)
from tests.compat.test_etcdctl_watch_lease import (
    test_lease_grant_put_timetolive_keepalive_list_revoke,
    test_watch_from_a_compacted_revision_is_canceled,
    test_watch_replays_history_from_a_revision,
)
from tests.integration.test_lock_election_etcdctl import (
    spawn,
    test_elect_and_listen_show_the_same_leaders_as_etcd,
    test_lock_runs_the_command_while_holding_the_lock,
    test_queued_etcdctl_locks_never_overlap_and_run_in_queue_order,
)
from tests.proxy.support import ProxyProcess, start_proxy
from tests.support.fixtures import require_etcd
from tests.support.raftkv import RaftKVCluster, RaftKVMember

pytestmark = pytest.mark.integration

__all__ = [
    "spawn",
    "test_alarm_list_and_disarm_without_alarms",
    "test_compaction_and_reads_of_compacted_revisions",
    "test_delete_key_prefix_range_and_from_key",
    "test_elect_and_listen_show_the_same_leaders_as_etcd",
    "test_get_at_past_present_and_future_revisions",
    "test_get_prefix_from_key_range_limit_count_and_keys_only",
    "test_get_sorted_by_every_target_and_order",
    "test_lease_grant_put_timetolive_keepalive_list_revoke",
    "test_lock_runs_the_command_while_holding_the_lock",
    "test_member_list",
    "test_put_and_get_in_every_output_format",
    "test_queued_etcdctl_locks_never_overlap_and_run_in_queue_order",
    "test_request_larger_than_max_request_bytes",
    "test_requests_the_server_refuses",
    "test_txn_branches_compares_and_output_formats",
    "test_txn_errors",
    "test_txn_interactive",
    "test_txn_operation_limit",
    "test_watch_from_a_compacted_revision_is_canceled",
    "test_watch_replays_history_from_a_revision",
]


@dataclass
class ProxiedCluster:
    """A raftkv cluster as the comparison sees it through a proxy: its members (for names,
    logs and per-member revision checks) and the proxy's URL as the endpoint."""

    cluster: RaftKVCluster
    proxy: ProxyProcess

    @property
    def members(self) -> list[RaftKVMember]:
        return self.cluster.members

    @property
    def endpoints(self) -> str:
        return self.proxy.url

    def stop(self) -> None:
        self.proxy.kill()
        self.cluster.stop()


class ProxiedSystem(System):
    """The raftkv side: etcdctl talks to the proxy where it talked to the first member, and
    names that endpoint in its client log lines, so the proxy's address is normalised as the
    first member's (`<client:m0>`, what the etcd side shows)."""

    def normalize(
        self, result: CtlResult, rules: Sequence[Rule] = (), proto: type[Message] | None = None
    ) -> Outcome:
        cluster = self.cluster
        assert isinstance(cluster, ProxiedCluster)
        target = cluster.proxy.target

        def as_first_member(text: str) -> str:
            return text.replace(target, "<client:m0>")

        return super().normalize(result, (as_first_member, *rules), proto)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    require_etcd()
    root = tmp_path_factory.mktemp("proxy-compat")
    started = start_pair(root, max_request_bytes=MAX_REQUEST_BYTES)
    raftkv = started.raftkv.cluster
    assert isinstance(raftkv, RaftKVCluster)
    proxy: ProxyProcess | None = None
    try:
        proxy = start_proxy(root, raftkv.endpoints)
        proxied = ProxiedCluster(raftkv, proxy)
        started.raftkv = ProxiedSystem("raftkv", proxied)  # type: ignore[arg-type]
        yield started
    finally:
        started.stop()
        if proxy is not None:
            proxy.kill()


@pytest.fixture
def compat(pair: Pair, request: pytest.FixtureRequest) -> Case:
    return pair.case(request.node.name)
