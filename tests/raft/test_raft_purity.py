"""The Raft core stays pure: no module under raftkv/raft may do I/O, read the clock, start
threads or use the global random generator. Only pure standard-library modules, raftkv.pb and
raftkv.raft itself may be imported (DESIGN.md §2, §4.1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import raftkv.raft

RAFT_DIR = Path(raftkv.raft.__file__).parent

ALLOWED_STDLIB = {
    "__future__",
    "abc",
    "bisect",
    "collections",
    "dataclasses",
    "enum",
    "functools",
    "heapq",
    "itertools",
    "math",
    "operator",
    "random",  # for the ``random.Random`` type only; see below
    "typing",
}
ALLOWED_OURS = ("raftkv.pb", "raftkv.raft")
FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "compile", "__import__", "breakpoint"}


def violations(source: str, name: str = "<src>") -> list[str]:
    tree = ast.parse(source, name)
    out: list[str] = []

    def allowed(module: str) -> bool:
        top = module.split(".")[0]
        return top in ALLOWED_STDLIB or any(
            module == ours or module.startswith(ours + ".") for ours in ALLOWED_OURS
        )

    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            out += [f"{where} imports {a.name}" for a in node.names if not allowed(a.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                continue  # relative: inside raftkv.raft
            module = node.module or ""
            if not allowed(module):
                out.append(f"{where} imports from {module}")
            elif module == "random":
                out += [
                    f"{where} imports random.{a.name}" for a in node.names if a.name != "Random"
                ]
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
            and node.attr != "Random"
        ):
            out.append(f"{where} uses the global generator: random.{node.attr}")
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in FORBIDDEN_CALLS:
                out.append(f"{where} calls {f.id}()")
            # A Random() made here would be seeded from the OS: take it from the Config.
            if (isinstance(f, ast.Name) and f.id == "Random") or (
                isinstance(f, ast.Attribute) and f.attr == "Random"
            ):
                out.append(f"{where} creates its own Random")
    return out


MODULES = sorted(RAFT_DIR.glob("*.py"))


def test_the_package_has_the_expected_modules() -> None:
    names = {p.stem for p in MODULES}
    assert {"core", "log", "rawnode", "storage", "progress", "config"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_is_pure(path: Path) -> None:
    assert violations(path.read_text(), path.name) == []


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import os.path",
        "from threading import Thread",
        "import asyncio",
        "import logging",
        "from pathlib import Path",
        "import socket",
        "import subprocess",
        "from raftkv.storage import wal",
        "import random\nx = random.random()",
        "from random import randint",
        "import random\nr = random.Random()",
        "print('hello')",
        "with open('f') as f: pass",
    ],
)
def test_the_checker_catches_impurities(source: str) -> None:
    assert violations(source) != []


def test_the_checker_accepts_what_the_core_needs() -> None:
    src = (
        "from __future__ import annotations\nimport random\nimport enum\n"
        "from collections import deque\nfrom raftkv.pb.raftpb.raft_pb2 import Entry\n"
        "from raftkv.raft.errors import RaftError\nfrom .log import RaftLog\n"
        "def f(rng: random.Random) -> int:\n    return rng.randrange(10)\n"
    )
    assert violations(src) == []
