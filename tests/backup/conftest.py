"""The backup tests store into a real S3-compatible server (MinIO, see tests/support/s3.py)."""

from tests.support.s3 import s3_server

__all__ = ["s3_server"]
