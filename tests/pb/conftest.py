"""Make the shared real-etcd fixtures available to the wire-compatibility tests."""

from tests.support.fixtures import etcd_cluster, etcd_cluster3

__all__ = ["etcd_cluster", "etcd_cluster3"]
