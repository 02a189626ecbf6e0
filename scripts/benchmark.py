"""Performance benchmark of Med-LSDM: the command line of :mod:`scripts.bench` (``--help``; README: Benchmarks)."""

import sys

from scripts.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
