"""Served latency under overload, 16 against 1,000 connections: `python benchmarks/overload.py --help`."""

import sys
from pathlib import Path

# Run as a script, this file's own directory is on the path, not the one that holds `benchmarks`.
sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.gatewaybench.overload import main

if __name__ == "__main__":
    sys.exit(main())
