"""Run the same curl commands against real etcd and raftkv, and compare normalised answers.

Each server keeps its own normaliser: v2 indexes (`modifiedIndex`, `createdIndex`, an error's
`index`, `X-Etcd-Index`, the 20-digit names of in-order keys, the indexes in compare-failed causes)
become `#1`, `#2`... in the order they first appear in that server's answers, so equal indexes
stay equal and new ones stay new on both sides while the absolute values (etcd counts its own
membership nodes) may differ. Expiration timestamps and remaining TTLs become placeholders
(wall-clock values); headers are compared by presence, except `X-Etcd-Index` and the content
type.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from typing import Any

CURL = "curl"
TIMEOUT_S = 60.0
INDEX_FIELDS = {"modifiedIndex", "createdIndex", "index"}
IN_ORDER_NAME = re.compile(r"(?<=/)\d{20}(?=/|$)")
INDEX_COMPARE = re.compile(r"\[(\d+) != (\d+)\]")
CLEARED = re.compile(r"^the requested history has been cleared \[(\d+)/(\d+)\]$")
PRESENCE_HEADERS = ("x-raft-index", "x-raft-term", "x-etcd-cluster-id", "transfer-encoding")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any  # parsed JSON, or the raw text when it is not JSON

    @property
    def index(self) -> int:
        return int(self.body["node"]["modifiedIndex"])


def parse_curl_output(raw: bytes) -> Answer:
    """`curl -i` output: status line, headers, blank line, body."""
    text = raw.decode(errors="replace")
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = body
    return Answer(status, headers, parsed)


@dataclass
class Normaliser:
    seen: dict[int, str] = field(default_factory=dict)

    def index(self, value: int) -> str:
        return self.seen.setdefault(value, f"#{len(self.seen) + 1}")

    def key(self, key: str) -> str:
        return IN_ORDER_NAME.sub(lambda m: self.index(int(m.group())), key)

    def cause(self, code: int, cause: str) -> str:
        if code == 101:
            return INDEX_COMPARE.sub(
                lambda m: f"[{self.index(int(m[1]))} != {self.index(int(m[2]))}]", cause
            )
        cleared = CLEARED.match(cause)
        if code == 401 and cleared:
            oldest, asked = (int(g) for g in cleared.groups())
            assert oldest > asked, cause
            return f"the requested history has been cleared [<oldest>/{self.index(asked)}]"
        return self.key(cause)

    def body(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.body(v) for v in value]
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for name, item in value.items():
            if name in INDEX_FIELDS and isinstance(item, int):
                out[name] = self.index(item)
            elif name == "key":
                out[name] = self.key(item)
            elif name == "expiration":
                out[name] = "<expiration>"
            elif name == "ttl":
                assert isinstance(item, int) and item > 0, value
                out[name] = "<ttl>"
            elif name == "cause" and "errorCode" in value:
                out[name] = self.cause(value["errorCode"], item)
            else:
                out[name] = self.body(item)
        return out

    def answer(self, answer: Answer) -> dict[str, Any]:
        headers = answer.headers
        out: dict[str, Any] = {
            "status": answer.status,
            "content-type": headers.get("content-type"),
            "present": [h for h in PRESENCE_HEADERS if h in headers],
        }
        if "x-etcd-index" in headers:
            index = int(headers["x-etcd-index"])
            out["x-etcd-index"] = self.index(index) if index else 0
        # Keys in body order too: clients (and people) read them in that order.
        body = answer.body
        out["body"] = self.body(body) if isinstance(body, dict | list) else body
        out["order"] = list(body) if isinstance(body, dict) else None
        return out


@dataclass
class Server:
    name: str
    url: str
    normaliser: Normaliser = field(default_factory=Normaliser)
    saved: dict[str, Any] = field(default_factory=dict)

    def argv(self, args: list[str]) -> list[str]:
        values = {"E": self.url, **self.saved}
        formatted = [a.format(**values) for a in args]
        return [CURL, "-sS", "-i", "--max-time", str(int(TIMEOUT_S)), *formatted]

    def curl(self, *args: str) -> Answer:
        done = subprocess.run(self.argv(list(args)), capture_output=True, timeout=TIMEOUT_S + 5)
        assert done.returncode == 0, (self.name, args, done.stderr.decode())
        return parse_curl_output(done.stdout)

    def start_wait(self, *args: str) -> subprocess.Popen[bytes]:
        """A long-poll in the background; returns once its response headers arrived (the
        server has registered the watch). curl holds `-i` headers back until body data comes,
        so they are read from `-v`'s trace on stderr, which is written as they arrive."""
        argv = [a for a in self.argv(list(args)) if a != "-i"]
        process = subprocess.Popen(
            [*argv, "-v", "-N"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert process.stderr is not None
        head = b""
        while True:
            line = process.stderr.readline()
            if not line or line == b"< \r\n":
                break
            if line.startswith(b"< "):
                head += line[2:]
        process._head = head + b"\r\n"  # type: ignore[attr-defined]
        return process

    @staticmethod
    def finish_wait(process: subprocess.Popen[bytes]) -> Answer:
        out, err = process.communicate(timeout=TIMEOUT_S + 5)
        assert process.returncode == 0, err.decode()
        return parse_curl_output(process._head + out)  # type: ignore[attr-defined]
