"""The performance benchmark of Med-LSDM (SPEC section 9); ``python scripts/benchmark.py --help``.

:mod:`~scripts.bench.common` (constants, parsers, statistics, data, one guarded measurement, the machine, peak
memory), :mod:`~scripts.bench.build` (models, Trainer and datasets from ``config/``), one module per section
(:mod:`~scripts.bench.training`, :mod:`~scripts.bench.sampling`, :mod:`~scripts.bench.generation`),
:mod:`~scripts.bench.report` (Markdown, ``--compare``) and :mod:`~scripts.bench.cli` (the command line).
"""
