"""Which member a full backup streams from, and raftkvctl's refusals of bad backup arguments
(before any connection is made)."""

from __future__ import annotations

import io

import pytest
from raftkv.backup import BackupError
from raftkv.backup.engine import choose_member
from raftkv.cli.ctl import EXIT_BAD_ARGS, main
from raftkv.client import Header, StatusResult


def status(member: int, applied: int, *, leader: int = 1, **changes: object) -> StatusResult:
    fields = {
        "header": Header(cluster_id=7, member_id=member, revision=5, raft_term=2),
        "version": "3.4.0",
        "db_size": 0,
        "leader": leader,
        "raft_index": applied,
        "raft_term": 2,
        "raft_applied_index": applied,
        "errors": (),
        "db_size_in_use": 0,
        "is_learner": False,
    }
    fields.update(changes)
    return StatusResult(**fields)  # type: ignore[arg-type]


def test_the_freshest_member_is_chosen_and_a_follower_on_a_tie() -> None:
    leader, follower, lagging = status(1, 50), status(2, 50), status(3, 49)
    assert choose_member([("a", leader), ("b", follower), ("c", lagging)])[0] == "b"
    assert choose_member([("a", status(1, 51)), ("b", follower)])[0] == "a"


def test_unhealthy_members_are_never_chosen() -> None:
    answers: list[tuple[str, StatusResult | str]] = [
        ("learner", status(4, 99, is_learner=True)),
        ("alone", status(5, 99, leader=0)),
        ("corrupt", status(6, 99, errors=("alarm:CORRUPT",))),
        ("down", "connection refused"),
        ("ok", status(2, 10)),
    ]
    assert choose_member(answers)[0] == "ok"
    with pytest.raises(BackupError) as caught:
        choose_member(answers[:-1])
    message = str(caught.value)
    for reason in ("a learner", "no leader", "alarm:CORRUPT", "connection refused"):
        assert reason in message


def run(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), environ={}, stdout=out, stderr=err)
    return code, err.getvalue()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["backup", "prune", "s3://b/p"], "--keep-last N, --max-age D or both"),
        (["backup", "prune", "s3://b/p", "--keep-last", "0"], "at least 1"),
        (["backup", "prune", "s3://b/p", "--max-age", "soon"], "invalid --max-age"),
        (["backup", "list", "b/p"], "not an s3://BUCKET/PREFIX URL"),
        (["backup", "save", "s3://b/p", "--full", "--incremental"], "not allowed with"),
        (
            ["backup", "restore", "s3://b/p", "--name", "m", "--data-dir", "d", "--time", "x"],
            "invalid --time",
        ),
        (
            [
                "backup",
                "restore",
                "s3://b/p",
                "--name",
                "m",
                "--data-dir",
                "d",
                "--time",
                "t",
                "--revision",
                "3",
            ],
            "not allowed with",
        ),
    ],
)
def test_bad_arguments_are_refused_with_exit_code_128(argv: list[str], message: str) -> None:
    code, err = run(*argv)
    assert code == EXIT_BAD_ARGS
    assert message in err
