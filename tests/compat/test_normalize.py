"""The normaliser hides only what legitimately differs between clusters, never revisions."""

from __future__ import annotations

from tests.compat.normalize import (
    ClusterIdentity,
    MemberIdentity,
    Normalizer,
    endpoint_health,
    endpoint_status,
    loads,
    member_order,
    sort_records,
)

IDENTITY = ClusterIdentity(
    cluster_id=14642505665293236982,
    members=(
        MemberIdentity(
            "m0", 0xFFDA9EABED43A0FE, ("http://127.0.0.1:32443",), ("http://127.0.0.1:3201",)
        ),
        MemberIdentity(
            "m1", 0x5F96F9B576567D52, ("http://127.0.0.1:29607",), ("http://127.0.0.1:22121",)
        ),
    ),
)
NORMALIZER = Normalizer(IDENTITY)
M0, M1 = IDENTITY.members


def test_ids_and_addresses_become_member_tokens() -> None:
    text = (
        f"{M1.id:x}, started, m1, http://127.0.0.1:29607, http://127.0.0.1:22121, false\n"
        f'{{"ID":{M0.id},"clientURLs":["http://127.0.0.1:3201"]}}\n'
        '"target":"endpoint://client-4df25043-fd2f-4f96-b3bb-fb5f908f5107/127.0.0.1:3201"\n'
    )
    assert NORMALIZER.text(text) == (
        "<id:m1>, started, m1, http://<peer:m1>, http://<client:m1>, false\n"
        '{"ID":<id:m0>,"clientURLs":["http://<client:m0>"]}\n'
        '"target":"endpoint://client-<uuid>/<client:m0>"\n'
    )


def test_a_port_is_not_replaced_inside_a_longer_one() -> None:
    assert NORMALIZER.text("127.0.0.1:32011") == "127.0.0.1:32011"


def test_revisions_stay_and_header_member_and_term_are_generic() -> None:
    header = (
        f'{{"header":{{"cluster_id":{IDENTITY.cluster_id},"member_id":{M1.id},'
        '"revision":17,"raft_term":3}}'
    )
    assert NORMALIZER.text(header) == (
        '{"header":{"cluster_id":<cluster>,"member_id":<id:any>,"revision":17,"raft_term":<term>}}'
    )
    # Nested txn headers are empty in etcd; a filled one must show.
    assert NORMALIZER.text('"MemberID" : 0\n"RaftTerm" : 0\n') == '"MemberID" : 0\n"RaftTerm" : 0\n'


def test_an_unknown_member_id_stays_visible() -> None:
    assert NORMALIZER.text('"member_id":12345') == '"member_id":12345'


def test_tables_lose_their_padding() -> None:
    table = "+----+-----+\n| ID |  X  |\n+----+-----+\n"
    assert NORMALIZER.text(table) == "+-+-+\n| ID | X |\n+-+-+\n"


def test_endpoint_status_hides_version_size_index_and_leadership_only() -> None:
    line = f"http://127.0.0.1:3201, {M0.id:x}, 3.4.23, 20 kB, true, false, 2, 26, 26, \n"
    assert NORMALIZER.text(line, [endpoint_status]) == (
        "http://<client:m0>, <id:m0>, <version>, <db-size>, <is-leader>, false, <term>, "
        "<raft-index>, <raft-index>, \n"
    )
    status = (
        f'[{{"Endpoint":"http://127.0.0.1:3201","Status":{{"header":{{"revision":5}},'
        f'"version":"3.4.0","dbSize":61808,"leader":{M1.id},"raftIndex":7,"raftTerm":2,'
        '"raftAppliedIndex":7,"dbSizeInUse":28672}}]'
    )
    assert loads(NORMALIZER.text(status, [endpoint_status])) == [
        {
            "Endpoint": "http://<client:m0>",
            "Status": {
                "header": {"revision": 5},
                "version": "<version>",
                "dbSize": "<db-size>",
                "leader": "<leader>",
                "raftIndex": "<raft-index>",
                "raftTerm": "<term>",
                "raftAppliedIndex": "<raft-index>",
                "dbSizeInUse": "<db-size>",
            },
        }
    ]


def test_health_records_are_sorted_and_timings_hidden() -> None:
    text = (
        "http://127.0.0.1:22121 is healthy: successfully committed proposal: took = 4.9ms\n"
        "http://127.0.0.1:3201 is healthy: successfully committed proposal: took = 980.5µs\n"
    )
    assert NORMALIZER.text(text, [endpoint_health]) == (
        "http://<client:m0> is healthy: successfully committed proposal: took = <took>\n"
        "http://<client:m1> is healthy: successfully committed proposal: took = <took>\n"
    )


def test_member_order_and_sorting_of_json_members() -> None:
    text = NORMALIZER.text(
        f'{{"header":{{"member_id":{M0.id}}},"members":[{{"ID":{M1.id},"name":"m1"}},'
        f'{{"ID":{M0.id},"name":"m0"}}]}}'
    )
    assert member_order(text) == ["m1", "m0"]
    assert IDENTITY.names_by_id() == ["m1", "m0"]
    assert loads(sort_records(text))["members"] == [
        {"ID": "<id:m0>", "name": "m0"},
        {"ID": "<id:m1>", "name": "m1"},
    ]
