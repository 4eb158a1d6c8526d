"""S3-compatible object storage through boto3, shaped for streams that never fit in memory.

- `MultipartUpload` is a file-like sink: `write()` fills one part buffer and uploads it when it
  reaches `part_size`, so a backup of any size holds at most one part in memory. Each part goes
  with its Content-MD5, so the server refuses a part damaged on the way; the MD5s also give the
  ETag S3 computes for a multipart object (MD5 of the part MD5s, `-N`), which `verify_upload`
  compares after a HEAD of the finished object. Servers whose ETag is something else (SSE-KMS)
  get the object read back and hashed instead.
- Credentials, region and profile come from boto3's default chain (AWS_* variables, the shared
  credentials and config files, instance roles); only the endpoint URL is ours to give, for
  MinIO and other S3-compatible servers (with path-style addressing, which they all serve).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from raftkv.backup.errors import BackupError, CorruptBackupError

# S3's smallest part (all but the last) is 5 MiB; 8 MiB is what the AWS CLI uses.
DEFAULT_PART_SIZE = 8 << 20
MIN_PART_SIZE = 5 << 20
_READ_CHUNK = 1 << 20
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-\d+)?$")

Progress = Callable[[int, int], object]


@dataclass(frozen=True)
class S3Location:
    """`s3://BUCKET/PREFIX`; `prefix` is empty or ends with `/`."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        if not url.startswith("s3://"):
            raise BackupError(f"{url!r} is not an s3://BUCKET/PREFIX URL")
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise BackupError(f"{url!r} names no bucket")
        prefix = prefix.strip("/")
        return cls(bucket, f"{prefix}/" if prefix else "")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def make_client(endpoint_url: str | None = None, *, region: str | None = None) -> Any:
    """A boto3 S3 client with the default credential chain; `endpoint_url` for S3-compatible
    servers (path-style addressing then)."""
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": "path" if endpoint_url else "auto"},
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=region, config=config
    )


def describe(error: Exception) -> str:
    """A boto error as one line: the S3 error code and message when the server sent them."""
    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        return f"{info.get('Code', 'error')}: {info.get('Message', error)}"
    return str(error)


S3_ERRORS = (BotoCoreError, ClientError)


class MultipartUpload:
    """Stream bytes into one object; see the module docstring. `complete()` or `abort()` once
    (leaving a `with` block by an exception aborts)."""

    def __init__(
        self, client: Any, bucket: str, key: str, *, part_size: int = DEFAULT_PART_SIZE
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        self._client = client
        self.bucket = bucket
        self.key = key
        self._part_size = part_size
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._md5s: list[bytes] = []
        self._sha256 = hashlib.sha256()
        self.size = 0
        self._upload_id: str | None = None
        self._done = False

    def __enter__(self) -> MultipartUpload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            self.abort()

    def write(self, data: bytes) -> int:
        self._sha256.update(data)
        self.size += len(data)
        self._buffer += data
        while len(self._buffer) >= self._part_size:
            part = bytes(self._buffer[: self._part_size])
            del self._buffer[: self._part_size]
            self._upload_part(part)
        return len(data)

    def _upload_part(self, part: bytes) -> None:
        if self._upload_id is None:
            created = self._client.create_multipart_upload(Bucket=self.bucket, Key=self.key)
            self._upload_id = created["UploadId"]
        md5 = hashlib.md5(part, usedforsecurity=False).digest()
        number = len(self._parts) + 1
        response = self._client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=part,
            ContentMD5=base64.b64encode(md5).decode(),
        )
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})
        self._md5s.append(md5)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def expected_etag(self) -> str:
        """The ETag S3 gives the completed multipart object."""
        joined = hashlib.md5(b"".join(self._md5s), usedforsecurity=False).hexdigest()
        return f"{joined}-{len(self._md5s)}"

    def complete(self) -> None:
        """Upload the last part and assemble the object (an empty stream makes one part)."""
        if self._buffer or not self._parts:
            self._upload_part(bytes(self._buffer))
            self._buffer.clear()
        self._client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )
        self._done = True

    def abort(self) -> None:
        self._done = True
        self._buffer.clear()
        if self._upload_id is not None:
            # Best effort: the caller is already failing with the error that matters.
            with contextlib.suppress(*S3_ERRORS):
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self._upload_id
                )


def iter_object(client: Any, bucket: str, key: str) -> Iterator[bytes]:
    """The object's bytes in chunks of up to 1 MiB."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        yield from body.iter_chunks(_READ_CHUNK)
    finally:
        body.close()


def object_sha256(client: Any, bucket: str, key: str) -> tuple[int, str]:
    """(size, SHA-256 hex) of an object, read back as a stream."""
    digest = hashlib.sha256()
    size = 0
    for chunk in iter_object(client, bucket, key):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def verify_upload(client: Any, upload: MultipartUpload) -> None:
    """After `complete()`: the stored object has the size and bytes that were written."""
    head = client.head_object(Bucket=upload.bucket, Key=upload.key)
    name = f"s3://{upload.bucket}/{upload.key}"
    if head["ContentLength"] != upload.size:
        raise CorruptBackupError(
            f"{name} holds {head['ContentLength']} bytes after upload, {upload.size} were sent"
        )
    etag = str(head.get("ETag", "")).strip('"')
    if etag == upload.expected_etag:
        return
    if _MD5_ETAG.match(etag):
        raise CorruptBackupError(
            f"{name} has ETag {etag} after upload, the parts sent give {upload.expected_etag}"
        )
    size, sha256 = object_sha256(client, upload.bucket, upload.key)
    if (size, sha256) != (upload.size, upload.sha256):
        raise CorruptBackupError(f"{name} read back differs from what was uploaded")


def download(
    client: Any,
    bucket: str,
    key: str,
    dest: Path,
    *,
    size: int,
    sha256: str,
    progress: Progress | None = None,
) -> None:
    """Copy an object into `dest`, checking it has `size` bytes with SHA-256 `sha256`."""
    digest = hashlib.sha256()
    done = 0
    name = f"s3://{bucket}/{key}"
    with dest.open("xb") as out:
        for chunk in iter_object(client, bucket, key):
            digest.update(chunk)
            out.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, max(size - done, 0))
    if done != size:
        raise CorruptBackupError(
            f"{name} has {done} bytes, its metadata says {size}: truncated or replaced"
        )
    if digest.hexdigest() != sha256:
        raise CorruptBackupError(
            f"{name} has SHA-256 {digest.hexdigest()}, its metadata says {sha256}: damaged"
        )
