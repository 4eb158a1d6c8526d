"""The raftkvctl frame: global flags and their ETCDCTL_* variables, output formats, etcdctl's
errors and exit codes, and the pieces of etcdctl's look (tables, sizes, progress)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from raftkv.apply.applier import Applier
from raftkv.cli.ctl import Context, humanize_bytes, main
from raftkv.cli.ctl_snapshot import ProgressBar
from raftkv.pb.etcdserverpb import rpc_pb2 as pb
from raftkv.pb.raftpb import raft_pb2 as raftpb
from raftkv.pb.serverpb import internal_pb2 as serverpb


def run(*argv: str, **environ: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), environ=environ, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_endpoints_come_from_the_flag_else_the_environment() -> None:
    # snapshot save names the endpoints it refuses, which shows where they came from.
    code, _, err = run("snapshot", "save", "x.db", ETCDCTL_ENDPOINTS="a:1,b:2")
    assert (code, err) == (
        5,
        "Error: snapshot must be requested to one selected node, not multiple [a:1 b:2]\n",
    )
    _, _, err = run("--endpoints=c:3,d:4", "snapshot", "save", "x.db", ETCDCTL_ENDPOINTS="a:1,b:2")
    assert "[c:3 d:4]" in err
    _, _, err = run("--endpoints", "e:5,f:6", "snapshot", "save", "x.db")
    assert "[e:5 f:6]" in err


def test_usage_errors_use_etcdctls_exit_codes() -> None:
    assert run("snapshot", "save") == (128, "", "Error: snapshot save expects one argument\n")
    code, _, err = run("-w", "fields", "snapshot", "status", "x.db")
    assert code == 4
    assert err.startswith("Error: fields not supported as output format")
    code, _, err = run("--no-such-flag", "snapshot", "status", "x.db")
    assert code == 128
    assert "--no-such-flag" in err
    code, _, err = run("--dial-timeout=soon", "snapshot", "status", "x.db")
    assert (code, err.startswith("Error: invalid value 'soon' for --dial-timeout")) == (128, True)
    code, out, _ = run()
    assert code == 0
    assert "snapshot" in out


def test_tables_and_sizes_look_like_etcdctls() -> None:
    ctx = Context(endpoints=("x",), write_out="table", dial_timeout=1, command_timeout=1)
    ctx.stdout = io.StringIO()
    ctx.print_table(("HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"), [("68551907", 2, 5, "20 kB")])
    # Byte for byte what etcdctl 3.4 printed for a snapshot of etcd.
    assert ctx.stdout.getvalue() == (
        "+----------+----------+------------+------------+\n"
        "|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n"
        "+----------+----------+------------+------------+\n"
        "| 68551907 |        2 |          5 |      20 kB |\n"
        "+----------+----------+------------+------------+\n"
    )
    assert [humanize_bytes(n) for n in (0, 9, 999, 20480, 4_400_000, 1_000_000, 12_345_678)] == [
        "0 B",
        "9 B",
        "999 B",
        "20 kB",
        "4.4 MB",
        "1.0 MB",
        "12 MB",
    ]


def test_the_progress_bar_redraws_one_line() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream)
    bar.update(250_000, 750_000)
    bar.update(1_000_000, 0)
    bar.close()
    assert stream.getvalue() == (
        "\r[#######-----------------------]  25% 250 kB / 1.0 MB"
        "\r[##############################] 100% 1.0 MB / 1.0 MB\n"
    )


@pytest.fixture
def snapshot_file(tmp_path: Path) -> Path:
    applier = Applier(tmp_path / "db", max_txn_ops=8)
    for index, key in enumerate((b"a", b"b", b"a"), start=1):
        request = serverpb.InternalRequest(put=pb.PutRequest(key=key, value=b"v"))
        applier.apply_normal(raftpb.Entry(index=index, data=request.SerializeToString()))
    applier.commit()
    copy = tmp_path / "copy.db"
    applier.backend.snapshot_to(copy)
    applier.close()
    data = copy.read_bytes()
    path = tmp_path / "snap.db"
    path.write_bytes(data + hashlib.sha256(data).digest())
    return path


def test_snapshot_status_in_every_format(snapshot_file: Path) -> None:
    code, out, _ = run("-w", "json", "snapshot", "status", str(snapshot_file))
    assert code == 0
    status = json.loads(out)
    assert list(status) == ["hash", "revision", "totalKey", "totalSize"]
    assert status["revision"] == 4
    size = humanize_bytes(status["totalSize"])
    simple = run("snapshot", "status", str(snapshot_file))[1]
    assert simple == f"{status['hash']:x}, 4, {status['totalKey']}, {size}\n"
    table = run("-w", "table", "snapshot", "status", str(snapshot_file))[1].splitlines()
    assert [c.strip() for c in table[3].split("|")[1:-1]] == [
        f"{status['hash']:x}",
        "4",
        str(status["totalKey"]),
        size,
    ]


def test_restore_flags_are_checked_before_anything_is_written(
    snapshot_file: Path, tmp_path: Path
) -> None:
    target = tmp_path / "new.raftkv"
    code, _, err = run(
        "snapshot", "restore", str(snapshot_file), f"--data-dir={target}", "--initial-cluster=x"
    )
    assert (code, err) == (128, "Error: 'x' is not of the form name=url\n")
    code, _, err = run(
        "snapshot",
        "restore",
        str(snapshot_file),
        f"--data-dir={target}",
        "--name=n1",
        "--initial-cluster=n1=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:9999",
    )
    assert code == 1
    assert "missing from --initial-advertise-peer-urls=http://127.0.0.1:9999" in err
    assert not target.exists()
    code, _, err = run("snapshot", "restore", str(tmp_path / "none.db"), f"--data-dir={target}")
    assert (code, err) == (1, f"Error: open {tmp_path / 'none.db'}: no such file or directory\n")

    code, _, err = run(
        "snapshot", "restore", str(snapshot_file), f"--data-dir={target}", "--name=solo"
    )
    assert code == 0, err
    assert "of new cluster" in err
    assert (target / "member" / "wal").is_dir()
