"""The cluster the examples talk to: `make run`'s, unless ETCDCTL_ENDPOINTS names another."""

import os

ENDPOINTS = os.environ.get("ETCDCTL_ENDPOINTS", "127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379")
