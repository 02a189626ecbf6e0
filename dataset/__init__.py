"""Data layer: the sample contract, NIfTI I/O with geometry checks, datasets and the Lightning DataModule."""

from dataset.contract import DataError, Sample, check_label_range, one_hot, validate_sample

__all__ = ["DataError", "Sample", "check_label_range", "one_hot", "validate_sample"]

# Heavier parts load on first access (PEP 562) so that `import dataset` stays cheap for scripts that only need
# NIfTI I/O (pytorch_lightning alone takes seconds to import).
_LAZY_EXPORTS = {
    "VolumeDataModule": "dataset.datamodule",
    "NiftiPairsDataset": "dataset.nifti_pairs",
    "PreprocessedDataset": "dataset.nifti_pairs",
    "AutoPETDataset": "dataset.autopet",
    "SynthRAD2023Dataset": "dataset.synthrad2023",
    "DukeDataset": "dataset.duke",
    "MNI152Dataset": "dataset.mni152",
    "CTAbdomenDataset": "dataset.ct_abdomen",
    "SyntheticPhantomDataset": "dataset.synthetic",
    "load_image": "dataset.nifti",
    "load_label": "dataset.nifti",
    "load_pair": "dataset.nifti",
    "save_nifti": "dataset.nifti",
    "shift_affine": "dataset.nifti",
    "normalize": "dataset.intensity",
    "invert": "dataset.intensity",
    "load_label_table": "dataset.label_table",
    "save_montage": "dataset.visualization",
    "save_gif": "dataset.visualization",
}
__all__ += list(_LAZY_EXPORTS)


def __getattr__(name: str) -> object:
    if name in _LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'dataset' has no attribute {name!r}")
