"""Observability: metrics, the inference-log writer and the readers of the logs."""
