"""A model serving gateway for MLflow: aliases, champion/challenger splits, logs and metrics."""

__version__ = "0.1.0"
