"""The gateway's benchmarks: `bench.py` (with its package `gatewaybench`) and `split_report.py`."""
