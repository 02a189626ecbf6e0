"""Data layer: the sample contract, NIfTI I/O with geometry checks, datasets and the Lightning DataModule."""

from dataset.contract import DataError, Sample, check_label_range, one_hot, validate_sample

__all__ = ["DataError", "Sample", "check_label_range", "one_hot", "validate_sample"]
