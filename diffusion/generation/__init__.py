"""Label maps in, synthetic volumes out: input discovery, resampling, block-wise sampling, NIfTI writing.

``scripts/generate.py`` is the command-line front end; everything it does lives here so it can be tested and
reused (evaluation pipelines, the demo, the benchmark).
"""
