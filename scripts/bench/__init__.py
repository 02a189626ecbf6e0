"""The performance benchmark of Med-LSDM (SPEC section 9), split by what it measures.

- :mod:`scripts.bench.common`: constants, parsers, statistics, the random training data.
- :mod:`scripts.bench.machine`: the machine record (CPU, cores, threads, versions, date) and peak-memory probes.
- :mod:`scripts.bench.build`: models and the Lightning ``Trainer`` composed from the project's ``config/`` tree.
- :mod:`scripts.bench.training`, :mod:`scripts.bench.fastpaths`: training steps and their bf16/compile variants.
- :mod:`scripts.bench.sampling`: samplers on trained checkpoints, speed and paired quality.
- :mod:`scripts.bench.generation`, :mod:`scripts.bench.genfast`: block-wise generation, its growth and fast paths.
- :mod:`scripts.bench.switches`, :mod:`scripts.bench.ab_training` (+ :mod:`scripts.bench.memchild`),
  :mod:`scripts.bench.ab_sampling`, :mod:`scripts.bench.ab_generation`: before/after ratios of the speed work,
  variants alternated in one process.
- :mod:`scripts.bench.profiling`: torch.profiler tables.
- :mod:`scripts.bench.report`, :mod:`scripts.bench.report_ab`: the Markdown summary.
- :mod:`scripts.bench.args`, :mod:`scripts.bench.cli`: the command line (``python scripts/benchmark.py``).
"""
