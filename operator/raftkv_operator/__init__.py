"""The raftkv Kubernetes operator (kopf)."""
