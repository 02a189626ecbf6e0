"""Evaluation of synthetic volumes: image metrics, FID / 3D-FID, LPIPS, the Dice protocol and a privacy audit.

Entry points: ``python evaluation/compute_metrics.py`` and ``python evaluation/segmentation.py`` (also runnable
with ``python -m``). This package imports only ``dataset`` from the project (never training code); pretrained
feature networks load from local files or the torch hub cache and are never downloaded here
(``scripts/fetch_weights.py`` fetches them once, on a machine with internet).
"""
