"""Export a dataset split as NIfTI files for evaluation: one implementation for ``generate --export-real`` and the
demo's (and the utility protocol's) exported subjects (:func:`export_config_split`).

Images are written in the units generation writes (HU for a ``ct_window`` dataset, else the model's [-1, 1]), so
real and synthetic volumes compare like with like; label maps hold the model's class ids (0..K-1), or, for a dataset
with a label table (sparse ids such as TotalSegmentator's), the user's ids again, as the dataset's own files and the
generated maps hold them. The images' folder gets a run record (``generation.json``) with their units and range
(and the label table), so the evaluation tools read the range instead of assuming one and the label maps through
the table (:func:`dataset.label_table.recorded_label_table`), and ``--overwrite`` replaces exactly these files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from dataset.files import check_name, check_output_files, plan_outputs, write_run_record
from dataset.intensity import invert
from dataset.label_table import LabelTable, restore_labels
from dataset.nifti import save_nifti
from dataset.registry import build_split, label_table_of, plain_data_info
from diffusion.generation.pipeline import RECORD_NAME, output_units


def export_split(
    ds: Any,
    split: str,
    images: Path,
    labels: Path,
    intensity: dict | None,
    overwrite: bool = False,
    record: dict[str, Any] | None = None,
    what: str = "--export-real",
    table: LabelTable | None = None,
) -> list[str]:
    """Write every sample of ``ds`` as ``images/<id>.nii.gz`` and ``labels/<id>.nii.gz``; return the ids.

    Args:
        ds: a dataset split (samples with ``id``, ``image`` (1, D, H, W) in [-1, 1], ``label``, ``affine``).
        split: its name (for messages and the record).
        images: folder of the images and of the run record.
        labels: folder of the label maps (inside ``images``, e.g. ``images/labels``, or beside it).
        intensity: the dataset's intensity spec (which units the images are written in).
        overwrite: replace the files a previous export recorded (never anything else).
        record: extra plain data for the run record (checkpoint hash, command).
        what: the option naming the folder, in messages.
        table: the dataset's label table: label maps are written back in its source ids, and it is recorded.

    Raises:
        DataError / FileExistsError: an unsafe id, outputs in the way (checked before anything is written).
    """
    ids = [check_name(str(ds[i]["id"]), f"{split}[{i}] id") for i in range(len(ds))]
    image_files = [images / f"{v}.nii.gz" for v in ids]
    label_files = [labels / f"{v}.nii.gz" for v in ids]
    inside = labels.absolute() == images.absolute() or images.absolute() in labels.absolute().parents
    recorded = image_files + (label_files if inside else [])
    plan = plan_outputs(images, recorded, overwrite, RECORD_NAME, what=what)
    if not inside:
        check_output_files(label_files, overwrite, what=what)
    units = output_units(intensity)
    for i, vid in enumerate(ids):
        s = ds[i]
        image = s["image"][0].numpy()
        if units["units"] != "model":  # data units (HU), as generation writes them
            image = invert(image, intensity)
        affine = np.asarray(s["affine"])
        save_nifti(images / f"{vid}.nii.gz", image.astype(np.float32), affine, overwrite=overwrite)
        label = s["label"][0].numpy()
        if table is not None:  # the user's ids, as in their own files and the generated maps
            label = restore_labels(label, table)
        save_nifti(labels / f"{vid}.nii.gz", label, affine, overwrite=overwrite)
    plan.remove_stale()
    write_run_record(
        images / RECORD_NAME,
        {"command": "export", **(record or {}), "split": split, **units,
         **({"label_table": table.to_plain()} if table is not None else {}),
         "outputs": [str(p.relative_to(images)) for p in recorded]},
    )  # fmt: skip
    return ids


def export_config_split(dataset_cfg: DictConfig, out: Path, split: str) -> list[str]:
    """A split of a composed dataset config as ``out/images`` and ``out/labels`` (what a user would have on disk),
    for the pipeline drivers (``scripts/demo.py``, ``scripts/utility_protocol.py``); returns the ids."""
    # Built from the fixed dataset table, like generation's split=..., never by instantiating a config node.
    info = plain_data_info(OmegaConf.to_container(dataset_cfg, resolve=True))
    return export_split(build_split(info, split), split, out / "images", out / "labels", info.get("intensity"),
                        record={"command": "demo export"}, what="--out", table=label_table_of(info))  # fmt: skip
