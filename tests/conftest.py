"""Settings every test process needs."""

import os

# The test registry holds only models these tests trained themselves (see gateway.commands.demo).
os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
# No telemetry or network calls from MLflow during tests.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
