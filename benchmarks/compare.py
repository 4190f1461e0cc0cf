"""Compare two commits of the gateway in alternating rounds: `python benchmarks/compare.py --help`."""

import sys
from pathlib import Path

# Run as a script, this file's own directory is on the path, not the one that holds `benchmarks`.
sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.gatewaybench.compare import main

if __name__ == "__main__":
    sys.exit(main())
