"""What the embedded datasets (mni152, ct_abdomen) share: a built cache read as a :mod:`dataset.nifti_pairs` split.

Each dataset builds its subjects into a cache folder of NIfTI pairs with a manifest; reading a split of that
cache is the same for all of them, so it is written once here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from dataset.contract import Sample
from dataset.nifti_pairs import NiftiPairsDataset

#: The caveat of each embedded dataset's subjects, stated in every report that measures novelty or utility on them.
LOWER_BOUND_NOTES = {
    "mni152": "mni152 subjects are deformations of one template, so novelty and utility measured here are a lower "
    "bound of what real, varied anatomy needs.",
    "ct_abdomen": "ct_abdomen subjects are deformations of one abdominal CT slab, so novelty and utility measured "
    "here are a lower bound of what real, varied anatomy needs.",
}


class EmbeddedPairs(Dataset):
    """A split of an embedded dataset's built cache; subclasses build the cache and call :meth:`_open`."""

    def _open(self, split: str, cache_dir: Path, label_nc: int, name: str) -> None:
        """Read ``split`` of the NIfTI-pairs cache in ``cache_dir`` (``label_nc`` classes, dataset ``name``)."""
        self._pairs = NiftiPairsDataset(split=split, root=cache_dir, label_nc=label_nc, dataset_name=name)
        self.split = split

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Manifest entries of this split (subject index, seed, class counts, ...)."""
        return self._pairs.entries

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> Sample:
        """Subject ``index`` of the split: image (1, D, H, W) in [-1, 1], label (1, D, H, W) class indices."""
        return self._pairs[index]
