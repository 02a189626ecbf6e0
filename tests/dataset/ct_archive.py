"""A small stand-in for TotalSegmentator's source archive, with the same layout (tests never use the network).

The phantom CT is an elliptic body slab in HU (air outside, a scanner table below it) holding a few organs of the
``total`` class map, the three tissue-type masks, an unlabelled gas bubble inside the body and unlabelled soft
tissue, so every step of ``dataset.ct_abdomen.merged_labels`` has something to do.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np

from dataset.ct_abdomen import ARCHIVE_PREFIX, REFERENCE, TISSUE_DIR
from dataset.label_table import load_label_table

SHAPE = (28, 24, 12)  # (I, J, K): the body spans all 12 slices of 3 mm
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
#: (TotalSegmentator id, HU) of the phantom's organs.
ORGANS = {"liver": (5, 60), "spleen": (1, 45), "vertebrae_L1": (31, 300), "lung_lower_lobe_left": (11, -800),
          "autochthon_left": (86, 40), "rib_left_9": (100, 250)}  # fmt: skip
#: Marker file the archive's map_to_binary.py would create if anything ran it.
RUN_MARKER = "ARCHIVE_CODE_RAN"


def phantom(depth: int = SHAPE[2]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(I, J, K) int16 HU, uint8 organ ids and the three tissue-type masks of the phantom, ``depth`` slices."""
    shape = (*SHAPE[:2], depth)
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    r = np.sqrt(((i - 13.5) / 12.0) ** 2 + ((j - 12.0) / 9.0) ** 2)
    body = r < 1.0
    hu = np.full(shape, -1000.0)
    hu[body] = 20.0  # unlabelled soft tissue
    subcut = body & (r >= 0.8)
    hu[subcut] = -100.0
    torso_fat = body & (r < 0.8) & (np.abs(i - 13.5) < 3) & (j > 15)
    hu[torso_fat] = -90.0
    organs = np.zeros(shape, dtype=np.uint8)
    boxes = {"liver": (slice(4, 11), slice(8, 17), slice(None)), "spleen": (slice(18, 23), slice(8, 14), slice(None)),
             "vertebrae_L1": (slice(12, 16), slice(5, 8), slice(None)),
             "lung_lower_lobe_left": (slice(17, 23), slice(14, 19), slice(depth - 4, depth)),
             "autochthon_left": (slice(16, 20), slice(4, 7), slice(None)),
             "rib_left_9": (slice(23, 24), slice(10, 12), slice(None))}  # fmt: skip
    for name, box in boxes.items():
        value, level = ORGANS[name]
        organs[box] = value
        hu[box] = level
    # one column of voxels through every slice for each class the boxes above leave out, so the merged map
    # holds all 26 classes (what inspect_dataset must count)
    table = load_label_table("ct_abdomen")
    present = {table.remap[v] for v, _ in ORGANS.values()}
    missing = [
        min(src for src, dst in table.remap.items() if dst == cls) for cls in range(1, 22) if cls not in present
    ]
    free = (body & (r < 0.75) & (organs == 0) & ~torso_fat & (j >= 8))[:, :, 0]
    free[11:16, 8:13] = False  # the gas bubble below
    columns = [tuple(c) for c in np.argwhere(free)]
    assert len(columns) >= len(missing)
    for src, (ci, cj) in zip(missing, columns, strict=False):
        organs[ci, cj, :] = src
        hu[ci, cj, :] = 30.0
    muscle = body & (r < 0.8) & (j < 7) & (organs == 0)
    hu[muscle] = 40.0
    muscle |= organs == ORGANS["autochthon_left"][0]  # the organ map wins where they overlap
    hu[12:15, 9:12, 3:6] = -900.0  # gas inside the body, no label: other_tissue, not background
    hu[8:20, 22:24, :] = 0.0  # the scanner table: dense, but not connected to the body
    hu += np.random.default_rng(0).normal(0.0, 5.0, shape)
    tissues = {"subcutaneous_fat": subcut, "torso_fat": torso_fat, "skeletal_muscle": muscle}
    return np.rint(hu).astype(np.int16), organs, {k: v.astype(np.uint8) for k, v in tissues.items()}


def class_map_source(rename: dict[int, str] | None = None) -> str:
    """A map_to_binary.py: the ``class_map`` literal with the table's source names, plus code that must not run."""
    names = {int(k): str(v) for k, v in load_label_table("ct_abdomen").extra["source_names"].items()}
    names.update(rename or {})
    total = ",\n".join(f"        {k}: {v!r}" for k, v in sorted(names.items()))
    return (
        "import pathlib\n"
        f"pathlib.Path({RUN_MARKER!r}).touch()  # running this file is what extraction must never do\n"
        "class_map = {\n"
        '    "total_v1": {1: "spleen"},\n'
        f'    "total": {{\n{total}\n    }},\n'
        '    "tissue_types": {1: "subcutaneous_fat", 2: "torso_fat", 3: "skeletal_muscle"},\n'
        "}\n"
        "commercial_models = {'x': 1}\n"
    )


def _gz(img: nib.Nifti1Image) -> bytes:
    return gzip.compress(img.to_bytes())


def write_archive(
    path: Path,
    rename: dict[int, str] | None = None,
    symlink_ct: bool = False,
    omit: tuple[str, ...] = (),
    depth: int = SHAPE[2],
) -> Path:
    """Write the fake ``totalsegmentator-2.18.0.tar.gz`` at ``path``.

    Args:
        path: archive file to write.
        rename: class ids whose name in the class map differs from the label table's.
        symlink_ct: store the CT as a symlink (to /etc/passwd) instead of a file.
        omit: members (below the prefix) left out.
        depth: slices of the phantom (the demo's 24-slice blocks need at least 24).

    Besides the wanted members it carries entries extraction must ignore: ``../escape.txt``, an absolute path and
    a symlink to ``/``.
    """
    hu, organs, tissues = phantom(depth)
    files = {
        f"{REFERENCE}example_ct_sm.nii.gz": _gz(nib.Nifti1Image(hu, AFFINE)),
        f"{REFERENCE}example_seg.nii.gz": _gz(nib.Nifti1Image(organs, AFFINE)),
        **{f"{REFERENCE}{TISSUE_DIR}/{k}.nii.gz": _gz(nib.Nifti1Image(v, AFFINE)) for k, v in tissues.items()},
        "totalsegmentator/map_to_binary.py": class_map_source(rename).encode(),
        "LICENSE": b"Apache License\nVersion 2.0, January 2004\n",
        "README.md": b"not extracted\n",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for name, data in files.items():
            if name in omit:
                continue
            if symlink_ct and name.endswith("example_ct_sm.nii.gz"):
                link = tarfile.TarInfo(ARCHIVE_PREFIX + name)
                link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(link)
                continue
            add(ARCHIVE_PREFIX + name, data)
        add("../escape.txt", b"outside\n")
        add("/tmp/absolute-escape.txt", b"outside\n")
        link = tarfile.TarInfo(ARCHIVE_PREFIX + "rootlink")
        link.type, link.linkname = tarfile.SYMTYPE, "/"
        tar.addfile(link)
    return path
