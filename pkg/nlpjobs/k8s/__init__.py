"""Kubernetes delivery: the Helm binary and chart rendering (submit/status/logs come with issue 4)."""
