"""The local tier: a real control plane built from the Kubernetes Go modules, no Docker."""
