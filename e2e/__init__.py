"""End-to-end tests against a Kubernetes cluster named by KUBECONFIG (the local tier or kind)."""
