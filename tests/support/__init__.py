"""Shared test support: real reference servers (etcd) and, beside them, raftkv clusters.

Fixtures live in `tests.support.fixtures`; a conftest.py imports the ones its tests use.
"""
