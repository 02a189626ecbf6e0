"""Performance benchmark of Med-LSDM: the command line of :mod:`scripts.bench` (see ``--help``).

python scripts/benchmark.py --device cpu --quick --out runs/bench/quick
python scripts/benchmark.py --device cpu --quick --out runs/bench/new --compare runs/bench/old
"""

from __future__ import annotations

import sys

from scripts.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
