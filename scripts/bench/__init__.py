"""The performance benchmark of Med-LSDM (SPEC section 9); ``python scripts/benchmark.py --help``.

- :mod:`scripts.bench.common`: constants, parsers, statistics, random data, the machine record, peak memory.
- :mod:`scripts.bench.build`: models and the Lightning ``Trainer`` composed from the project's ``config/`` tree.
- :mod:`scripts.bench.training`: training steps per model and size, and their precision / compile variants.
- :mod:`scripts.bench.sampling`: samplers on trained checkpoints, speed and paired quality.
- :mod:`scripts.bench.generation`: block-wise generation, its growth with the volume, precision / compile.
- :mod:`scripts.bench.report`: the Markdown summary and the comparison with an older report (``--compare``).
- :mod:`scripts.bench.cli`: the command line.
"""
