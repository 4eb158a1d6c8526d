"""A real S3-compatible server for tests: MinIO, built from its Go module by `make minio`.

`start_s3_server(root)` starts `minio server` on a fresh 127.0.0.1 port with its data under
`root`, waits until it answers, and returns an `S3Server` that hands out boto3 clients,
creates buckets and gives the AWS_* variables a subprocess (raftkvctl) needs. `stop()` kills
the process and removes the data, also after a failed start. Without the binary the tests are
skipped with the reason (as the etcd ones are); `make test` builds it.

The `s3_server` fixture (module-scoped: one server per test module, about a second to start,
each test using its own bucket via `new_bucket()`) is imported into the conftest.py or test
module that needs it. Not session-scoped: each importing module would get its own copy anyway,
and all of them would live until the end of the run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.support.etcd import free_port

REPO = Path(__file__).resolve().parents[2]
MINIO_BIN = Path(os.environ.get("RAFTKV_MINIO", REPO / ".tools" / "bin" / "minio"))
_READY_TIMEOUT_S = 60.0
_REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint_url: str
    root: Path
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default=Path())

    def client(self) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=_REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
        )

    def new_bucket(self, name: str | None = None) -> str:
        bucket = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def env(self) -> dict[str, str]:
        """The variables boto3's default chain reads, for a subprocess; no config files."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": _REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def minio_installed() -> bool:
    return MINIO_BIN.is_file() and os.access(MINIO_BIN, os.X_OK)


def start_s3_server(root: Path) -> S3Server:
    """Start MinIO under `root` on 127.0.0.1; returns once it serves S3 requests."""
    root = root / f"minio-{uuid.uuid4().hex[:8]}"
    (root / "data").mkdir(parents=True)
    port, console = free_port(), free_port()
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{port}",
        root=root,
        access_key="raftkvtest",
        secret_key=uuid.uuid4().hex,
        log_path=root / "minio.log",
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "MINIO_ROOT_USER": server.access_key,
        "MINIO_ROOT_PASSWORD": server.secret_key,
        "MINIO_BROWSER": "off",
        "MINIO_UPDATE": "off",
    }
    try:
        with server.log_path.open("ab") as log:
            server.process = subprocess.Popen(
                [
                    str(MINIO_BIN),
                    "server",
                    "--quiet",
                    "--address",
                    f"127.0.0.1:{port}",
                    "--console-address",
                    f"127.0.0.1:{console}",
                    str(root / "data"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        _wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: S3Server) -> None:
    client = server.client()
    deadline = time.monotonic() + _READY_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        assert server.process is not None
        if server.process.poll() is not None:
            raise RuntimeError(f"minio exited:\n{server.log_tail()}")
        try:
            client.list_buckets()
            return
        except Exception as error:  # connection refused, 503 while it initialises
            last = error
            time.sleep(0.2)
    raise TimeoutError(f"minio not serving: {last}\n{server.log_tail()}")


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    if not minio_installed():
        pytest.skip(f"MinIO not built ({MINIO_BIN}); `make minio` (run by `make test`) builds it")
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()
