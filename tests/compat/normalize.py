"""Normalise etcdctl output so etcd's and raftkv's can be compared byte for byte.

Two clusters started side by side legitimately differ in a few things: cluster and member IDs
(derived from their peer URLs), ports, which member answered a request, which one leads and in
which term, timings, the server version, database sizes and the Raft index (each system writes
its own internal entries). Everything else, revisions above all, must match exactly, so the
normaliser replaces only those things, and only where they are recognisable:

- A member is named by its *name* (m0, m1, ...), which both clusters share: its ID in decimal or
  hex becomes `<id:m0>`, its client and peer addresses `<client:m0>` / `<peer:m0>`. An ID that is
  not one of the cluster's members stays a number, so a wrong ID still shows up as a difference.
- In response headers, `member_id` (which member answered) becomes `<id:any>` and a non-zero
  `raft_term` becomes `<term>`; a zero stays, so headers etcd leaves empty must stay empty.
- zap log lines etcdctl prints on errors lose their timestamp and client UUID.
- ASCII tables lose their padding, whose width follows the normalised-away values.

Command-specific differences (status, health timings, member order) are `Rule`s a test passes
explicitly; each one documents why that difference is legitimate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Rule = Callable[[str], str]


@dataclass(frozen=True)
class MemberIdentity:
    """What differs per member between two otherwise identical clusters."""

    name: str
    id: int
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]


@dataclass(frozen=True)
class ClusterIdentity:
    cluster_id: int
    members: tuple[MemberIdentity, ...]

    @classmethod
    def from_member_list_json(cls, text: str) -> ClusterIdentity:
        """Read the identity from `etcdctl member list -w json` output."""
        data = json.loads(text)
        members = tuple(
            MemberIdentity(
                name=m["name"],
                id=int(m["ID"]),
                peer_urls=tuple(m.get("peerURLs", ())),
                client_urls=tuple(m.get("clientURLs", ())),
            )
            for m in data["members"]
        )
        return cls(cluster_id=int(data["header"]["cluster_id"]), members=members)

    def member(self, name: str) -> MemberIdentity:
        return next(m for m in self.members if m.name == name)

    def names_by_id(self) -> list[str]:
        """Member names in ascending ID order: the order etcd lists members in."""
        return [m.name for m in sorted(self.members, key=lambda m: m.id)]


def _address(url: str) -> str:
    return url.split("://", 1)[-1]


class Normalizer:
    """Rewrites one cluster's etcdctl output into the cluster-independent form."""

    def __init__(self, identity: ClusterIdentity) -> None:
        self.identity = identity
        subs: list[tuple[re.Pattern[str], str]] = []

        def number(value: int, token: str) -> None:
            subs.append((re.compile(rf"(?<![0-9]){value}(?![0-9])"), token))
            subs.append((re.compile(rf"(?<![0-9a-f]){value:x}(?![0-9a-f])"), token))

        number(identity.cluster_id, "<cluster>")
        for m in identity.members:
            number(m.id, f"<id:{m.name}>")
            for kind, urls in (("client", m.client_urls), ("peer", m.peer_urls)):
                for url in urls:
                    subs.append(
                        (re.compile(rf"{re.escape(_address(url))}(?![0-9])"), f"<{kind}:{m.name}>")
                    )
        self._subs = subs

    def text(self, text: str, rules: Sequence[Rule] = ()) -> str:
        for pattern, token in self._subs:
            text = pattern.sub(token, text)
        text = _HEADER_MEMBER.sub(r"\1<id:any>", text)
        text = _HEADER_TERM.sub(r"\1<term>", text)
        text = _ZAP_TS.sub(r'"ts":"<ts>"', text)
        text = _CLIENT_UUID.sub("client-<uuid>", text)
        for rule in rules:
            text = rule(text)
        return _collapse_tables(text)


# Header fields as printed by -w json, -w fields and protobuf text format.
_HEADER_MEMBER = re.compile(r'("member_id":|"MemberID" : |member_id: )<id:m\d+>')
_HEADER_TERM = re.compile(r'("raft_term":|"RaftTerm" : |raft_term: )[1-9][0-9]*')
_ZAP_TS = re.compile(r'"ts":"[^"]*"')
_CLIENT_UUID = re.compile(r"client-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TABLE_BORDER = re.compile(r"^\+[-+]+\+$", re.MULTILINE)
_TABLE_ROW = re.compile(r"^\|.*\|$", re.MULTILINE)


def _collapse_tables(text: str) -> str:
    text = _TABLE_BORDER.sub(lambda m: re.sub(r"-+", "-", m.group(0)), text)
    return _TABLE_ROW.sub(lambda m: re.sub(r" {2,}", " ", m.group(0)), text)


# ---- command-specific rules ----------------------------------------------------------------

_STATUS_FIELDS = re.compile(
    r'("version":|"Version" : )"[^"]*"'
    r'|("dbSize":|"dbSizeInUse":|"DBSize" : )[0-9]+'
    r'|("raftIndex":|"raftAppliedIndex":|"RaftIndex" : |"RaftAppliedIndex" : )[0-9]+'
    r'|("raftTerm":)[0-9]+'
    r'|("leader":|"Leader" : )<id:m[0-9]+>'
)
_STATUS_TOKENS = ("<version>", "<db-size>", "<raft-index>", "<term>", "<leader>")


def _status_field(m: re.Match[str]) -> str:
    group = next(i for i in range(1, len(_STATUS_TOKENS) + 1) if m.group(i) is not None)
    return m.group(group) + _STATUS_TOKENS[group - 1]


def _status_cells(cells: list[str]) -> list[str]:
    # ENDPOINT, ID, VERSION, DB SIZE, IS LEADER, IS LEARNER, RAFT TERM, RAFT INDEX, APPLIED, ERRORS
    if len(cells) != 10 or not cells[0].startswith("http://<client:"):
        return cells
    tokens = {
        2: "<version>",
        3: "<db-size>",
        4: "<is-leader>",
        6: "<term>",
        7: "<raft-index>",
        8: "<raft-index>",
    }
    return [tokens.get(i, cell) for i, cell in enumerate(cells)]


def endpoint_status(text: str) -> str:
    """`endpoint status`: the server version (raftkv says 3.4.0, etcd its patch release), the
    database size (different storage engines), the Raft index (each system writes its own
    internal entries: etcd publishes a cluster version, answers /health through Raft...), and
    which member leads in which term differ legitimately. Endpoint order, IDs, learner flags,
    errors and header revisions do not."""
    text = _STATUS_FIELDS.sub(_status_field, text)
    lines = []
    for line in text.split("\n"):
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            line = "| " + " | ".join(_status_cells(cells)) + " |"
        elif line.startswith("http://"):
            line = ", ".join(_status_cells(line.split(", ")))
        lines.append(line)
    return "\n".join(lines)


_DURATION = r"[0-9.]+(?:ns|µs|us|ms|s|m)"
_TOOK = re.compile(rf'(took = |"took":"|"Took" : |\|\s+){_DURATION}')


def endpoint_health(text: str) -> str:
    """`endpoint health`: how long each check took differs, and etcdctl checks the endpoints
    concurrently and prints them in completion order, so the records are sorted."""
    return sort_records(_TOOK.sub(r"\1<took>", text))


def sort_records(text: str) -> str:
    """Put records printed in an order that legitimately differs into a canonical order: the
    lines of simple output, the body rows of a table, the elements of a JSON list (top level,
    or the `members` list of a JSON object), and blank-line separated `-w fields` blocks."""
    stripped = text.strip()
    if not stripped:
        return text
    if stripped[0] in "[{":
        return _sort_json(stripped) + "\n"
    lines = text.rstrip("\n").split("\n")
    if lines[0].startswith("+"):
        # border, header, border, rows..., border
        return "\n".join([*lines[:3], *sorted(lines[3:-1]), lines[-1]]) + "\n"
    if "\n\n" in text:
        blocks = [b for b in text.split("\n\n") if b]
        return "\n\n".join(sorted(blocks)) + "\n\n"
    return "\n".join(sorted(lines)) + "\n"


def _sort_json(text: str) -> str:
    data: Any = loads(text)
    if isinstance(data, list):
        data = sorted(data, key=lambda e: json.dumps(e, sort_keys=True))
    elif isinstance(data.get("members"), list):
        data["members"] = sorted(data["members"], key=lambda e: e.get("name", ""))
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


_BARE_TOKEN = re.compile(r"(?<=[:\[,])(<[^<>\"]+>)(?=[,}\]])")


def loads(text: str) -> Any:
    """Parse normalised JSON output; tokens that replaced numbers become strings."""
    return json.loads(_BARE_TOKEN.sub(r'"\1"', text))


def member_order(text: str) -> list[str]:
    """Member names in the order their ID tokens appear in normalised output (header excluded,
    duplicates dropped): checks a member listing came sorted by ID before `sort_records`."""
    seen: list[str] = []
    for name in re.findall(r"<id:(m[0-9]+)>", text):
        if name not in seen:
            seen.append(name)
    return seen
