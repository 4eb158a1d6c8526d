"""Snapshot files: the SHA-256 trailer check, `status`, and the data dir `restore_member` builds
(what `MemberServer._restart` reads back: WAL metadata and hard state, the Raft snapshot with the
new voters, and a backend holding the new cluster's identity and the old keyspace)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from raftkv.apply.applier import Applier
from raftkv.membership import compute_cluster_id, compute_member_id
from raftkv.node.backup import (
    RestoreError,
    RestoreSpec,
    SnapshotFileError,
    restore_member,
    snapshot_status,
    verify_snapshot_file,
)
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.raftpb import raft_pb2 as raftpb
from raftkv.pb.serverpb import internal_pb2 as serverpb
from raftkv.storage.snapshotter import Snapshotter
from raftkv.storage.wal import WAL

OLD_IDS = (0x10, 0x20)
CLUSTER = {
    "a": ["http://127.0.0.1:1001"],
    "b": ["http://127.0.0.1:1002"],
    "c": ["http://127.0.0.1:1003"],
}
TOKEN = "restored"


def add_node(node_id: int, name: str) -> raftpb.ConfChange:
    context = f'{{"id": {node_id}, "name": "{name}", "peerURLs": ["http://old-{name}"]}}'
    return raftpb.ConfChange(
        type=raftpb.CONF_CHANGE_ADD_NODE, node_id=node_id, context=context.encode()
    )


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, int]:
    """A snapshot file (database + SHA-256) of an old cluster; returns it and its Hash."""
    applier = Applier(tmp_path / "old" / "db", max_txn_ops=16)
    index = 0

    def apply(**request: object) -> None:
        nonlocal index
        index += 1
        data = serverpb.InternalRequest(**request).SerializeToString()
        applier.apply_normal(raftpb.Entry(index=index, term=3, data=data))

    for node_id, name in zip(OLD_IDS, ("x", "y"), strict=True):
        index += 1
        applier.apply_conf_change(index, add_node(node_id, name))
    applier.membership.set_cluster_id(0xC0FFEE)
    index += 1
    applier.apply_conf_change(
        index, raftpb.ConfChange(type=raftpb.CONF_CHANGE_REMOVE_NODE, node_id=OLD_IDS[1])
    )
    for i in range(20):
        apply(put=pb.PutRequest(key=f"key/{i:02d}".encode(), value=b"v" * i))
    apply(put=pb.PutRequest(key=b"key/00", value=b"again"))
    apply(alarm=pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=0x10, alarm=pb.NOSPACE))
    applier.commit()
    backend_hash = applier.backend.hash()
    db = tmp_path / "copy.db"
    applier.backend.snapshot_to(db)
    applier.close()
    data = db.read_bytes()
    snapshot = tmp_path / "snapshot.db"
    snapshot.write_bytes(data + hashlib.sha256(data).digest())
    return snapshot, backend_hash


def spec(snapshot: Path, data_dir: Path, name: str = "b", **kw: object) -> RestoreSpec:
    values: dict[str, object] = {
        "snapshot": snapshot,
        "name": name,
        "data_dir": data_dir,
        "initial_cluster": CLUSTER,
        "initial_cluster_token": TOKEN,
        "initial_advertise_peer_urls": CLUSTER.get(name, ["http://127.0.0.1:9"]),
    }
    values.update(kw)
    return RestoreSpec(**values)  # type: ignore[arg-type]


def test_the_trailer_is_checked(source: tuple[Path, int], tmp_path: Path) -> None:
    snapshot, _ = source
    data = snapshot.read_bytes()
    assert verify_snapshot_file(snapshot) == len(data) - 32

    flipped = tmp_path / "flipped.db"
    flipped.write_bytes(data[:5000] + bytes([data[5000] ^ 1]) + data[5001:])
    with pytest.raises(SnapshotFileError, match=r"^expected sha256 [0-9a-f]{64}, got [0-9a-f]{64}"):
        verify_snapshot_file(flipped)

    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(data[:-100])
    with pytest.raises(SnapshotFileError, match="snapshot missing hash but --skip-hash-check"):
        verify_snapshot_file(truncated)

    bare = tmp_path / "bare.db"
    bare.write_bytes(data[:-32])
    with pytest.raises(SnapshotFileError, match="missing hash"):
        verify_snapshot_file(bare)
    assert verify_snapshot_file(bare, skip_hash_check=True) == len(data) - 32


def test_status_describes_the_database(source: tuple[Path, int], tmp_path: Path) -> None:
    snapshot, backend_hash = source
    before = snapshot.read_bytes()
    status = snapshot_status(snapshot)
    assert status.revision == 22  # 21 puts after revision 1
    assert status.hash == backend_hash
    assert status.total_size == len(before) - 32
    # Every row of every bucket, as etcdctl counts: 21 key rows among them.
    assert status.total_key > 21
    assert snapshot.read_bytes() == before  # only read
    assert not list(snapshot.parent.glob("snapshot.db-*"))

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 1000)
    with pytest.raises(SnapshotFileError, match="not a raftkv backend"):
        snapshot_status(junk)


def test_restore_builds_a_member_of_the_new_cluster(
    source: tuple[Path, int], tmp_path: Path
) -> None:
    snapshot, _ = source
    data_dir = tmp_path / "b.raftkv"
    result = restore_member(spec(snapshot, data_dir))

    ids = {name: compute_member_id(urls, TOKEN) for name, urls in CLUSTER.items()}
    cluster_id = compute_cluster_id(ids.values())
    assert (result.member_id, result.cluster_id) == (ids["b"], cluster_id)
    assert (result.revision, result.index) == (22, 3)
    assert not list(tmp_path.glob(".*restoring"))

    wal, contents = WAL.open(data_dir / "member" / "wal")
    wal.close()
    metadata = serverpb.WALMetadata.FromString(contents.metadata)
    assert (metadata.member_id, metadata.cluster_id) == (ids["b"], cluster_id)
    assert (contents.hard_state.term, contents.hard_state.commit) == (1, 3)
    assert contents.snapshot_index == 3

    raft_snapshot = Snapshotter(data_dir / "member" / "snap").load_newest()
    assert raft_snapshot is not None
    assert (raft_snapshot.metadata.index, raft_snapshot.metadata.term) == (3, 1)
    assert sorted(raft_snapshot.metadata.conf_state.voters) == sorted(ids.values())
    info = serverpb.SnapshotPayloadInfo.FromString(raft_snapshot.data)
    assert info.cluster_id == cluster_id

    applier = Applier(data_dir / "member" / "snap" / "db", max_txn_ops=16)
    try:
        members = applier.membership
        assert members.cluster_id == cluster_id
        assert {m.id: (m.name, m.peer_urls) for m in members.members.values()} == {
            ids[name]: (name, tuple(urls)) for name, urls in CLUSTER.items()
        }
        assert members.removed == set()
        assert applier.alarms.get() == []  # the old members' alarms mean nothing here
        assert applier.consistent_index == 3
        assert applier.store.current_revision == 22
        kvs = applier.store.range(b"key/", b"key0").kvs
        assert len(kvs) == 20
        assert kvs[0].value == b"again"
    finally:
        applier.close()


def test_restore_refuses_bad_arguments_and_damaged_files(
    source: tuple[Path, int], tmp_path: Path
) -> None:
    snapshot, _ = source
    existing = tmp_path / "exists"
    existing.mkdir()
    with pytest.raises(RestoreError, match=r'data-dir ".*exists" exists'):
        restore_member(spec(snapshot, existing))
    with pytest.raises(RestoreError, match='couldn\'t find local name "z"'):
        restore_member(spec(snapshot, tmp_path / "z", name="z"))
    with pytest.raises(RestoreError, match="missing from --initial-advertise-peer-urls"):
        restore_member(
            spec(snapshot, tmp_path / "w", initial_advertise_peer_urls=["http://127.0.0.1:1"])
        )

    data = snapshot.read_bytes()
    flipped = tmp_path / "flipped.db"
    flipped.write_bytes(data[:6000] + bytes([data[6000] ^ 0x40]) + data[6001:])
    with pytest.raises(SnapshotFileError, match="expected sha256"):
        restore_member(spec(flipped, tmp_path / "f.raftkv"))
    assert not (tmp_path / "f.raftkv").exists()
    assert not list(tmp_path.glob(".*restoring"))
