"""Observability: Prometheus metrics, request/job ids in structured logs, and the readiness check."""
