"""The bench smoke tests share one single-member real etcd per module."""

from tests.support.fixtures import etcd_cluster

__all__ = ["etcd_cluster"]
