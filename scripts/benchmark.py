"""Performance benchmark of Med-LSDM: the command line of :mod:`scripts.bench` (see ``--help``).

python scripts/benchmark.py --device cpu --quick --out runs/bench/bench.json
python -m scripts.benchmark --skip training sampling generation --out runs/bench/ab.json
"""

from __future__ import annotations

import sys

from scripts.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
