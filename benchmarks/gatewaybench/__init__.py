"""The benchmark of the gateway against `mlflow models serve`; `benchmarks/bench.py` runs it."""
