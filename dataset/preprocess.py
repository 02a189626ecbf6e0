"""Shared preprocessing: raw patient volumes -> normalised NIfTI blocks + a manifest with patient-level splits.

Per case (one raw image with its labels), in this order:

1. load image and labels, check them (:mod:`dataset.nifti`), map label values to class ids through the
   dataset's explicit table (:mod:`dataset.label_table`; an unknown value is an error naming file and value);
2. optionally resample to a fixed voxel size (``spacing``; image linear with anti-aliasing, labels nearest);
3. normalise intensities over the whole volume (:mod:`dataset.intensity`; ``reference`` works per block);
4. cut blocks (:mod:`dataset.crops`: ``grid`` covers the volume, ``random`` draws seeded starts; volumes
   smaller than a block are padded, image with -1 and labels with background, never dropped);
5. skip a block whose labels are all background (when ``skip_background``), logging the reason and
   counting it in the manifest;
6. write image (float32) and label (uint8) blocks with the source affine shifted by the block offset.

Patients (not cases, not blocks) are split into disjoint train/val/test sets by a seeded permutation of the
sorted patient ids. Output layout::

    DST/manifest.json                                        the live dataset: entries point into blocks-<id>/
    DST/blocks-<id>/{train,val,test}/images/<case>_b<k>.nii.gz
    DST/blocks-<id>/{train,val,test}/labels/<case>_b<k>.nii.gz

The output is written all or nothing (:mod:`dataset.transaction`): a kill at any moment leaves ``DST/manifest.json``
describing a complete dataset, the old one or the new one, and ``overwrite=True`` replaces only a dataset this
project wrote. A run whose source data lies inside ``dst`` (or the reverse) is refused before anything is
written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dataset.contract import DataError
from dataset.crops import BLOCK_SAMPLERS, block_starts, extract_block
from dataset.files import PRODUCER, check_name, check_output_dir
from dataset.intensity import normalize, validate_intensity
from dataset.label_table import LabelTable, remap_labels
from dataset.nifti import AFFINE_ATOL, load_pair, save_nifti, shift_affine, voxel_size_dhw
from dataset.resample import index_map, resample, same_extent, same_extent_shape
from dataset.splits import SPLITS, split_ids
from dataset.transaction import StagedDataset, clean_stale, live_manifest

log = logging.getLogger(__name__)

#: Version of the manifest schema preprocessing writes.
MANIFEST_VERSION = 2


@dataclass(frozen=True)
class Case:
    """One raw image and where its labels come from.

    Args:
        case_id: unique name of this volume; output blocks are named ``<case_id>_b<k>``.
        patient: split unit; several cases (e.g. studies) of one patient always land in the same split.
        image: raw intensity NIfTI.
        label: label NIfTI holding source values (remapped through the table), or None when the dataset's
            loader builds the label map itself (e.g. Duke merges segment files listed in ``segments``).
        segments: named extra label files for such loaders.
    """

    case_id: str
    patient: str
    image: Path
    label: Path | None = None
    segments: dict[str, Path] = field(default_factory=dict)


#: (case, table, affine_atol) -> (image (D,H,W) float32 raw units, label (D,H,W) int64 class ids, affine (4,4)).
CaseLoader = Callable[[Case, LabelTable, float], tuple[np.ndarray, np.ndarray, np.ndarray]]


def load_remapped_case(case: Case, table: LabelTable, affine_atol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Default :data:`CaseLoader`: an image/label pair whose label values go through ``table.remap``."""
    if case.label is None:
        raise ValueError(f"case {case.case_id} has no label file")
    image, label, affine = load_pair(case.image, case.label, label_nc=None, affine_atol=affine_atol)
    return image, remap_labels(label, table, str(case.label)), affine


@dataclass
class PreprocessOptions:
    """Settings of one preprocessing run (all recorded in the manifest).

    Args:
        block_size: (D, H, W) block size; default the paper's 32x256x256.
        sampler: ``grid`` or ``random`` (see :mod:`dataset.crops`).
        blocks_per_volume: number of blocks per case for ``random`` (default: the grid's count).
        seed: seeds the patient split and the random sampler.
        val_frac, test_frac: patient fractions of the val and test splits.
        intensity: intensity spec (:mod:`dataset.intensity`).
        spacing: (D, H, W) voxel size in mm to resample to, or None to keep native voxels.
        skip_background: skip blocks whose labels are all background (logged and counted).
        affine_atol: image/label affine tolerance.
        overwrite: replace an existing output in ``dst``.
        progress: show a progress bar.
    """

    block_size: tuple[int, int, int] = (32, 256, 256)
    sampler: str = "grid"
    blocks_per_volume: int | None = None
    seed: int = 0
    val_frac: float = 0.1
    test_frac: float = 0.1
    intensity: dict[str, Any] = field(default_factory=lambda: {"kind": "ct_window"})
    spacing: tuple[float, float, float] | None = None
    skip_background: bool = True
    affine_atol: float = AFFINE_ATOL
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` on invalid settings (before any file is touched)."""
        if len(self.block_size) != 3 or any(int(b) < 1 for b in self.block_size):
            raise ValueError(f"block_size must be three positive ints (D, H, W), got {self.block_size}")
        self.block_size = tuple(int(b) for b in self.block_size)  # type: ignore[assignment]
        if self.sampler not in BLOCK_SAMPLERS:
            raise ValueError(f"sampler must be one of {BLOCK_SAMPLERS}, got {self.sampler!r}")
        if self.blocks_per_volume is not None and self.blocks_per_volume < 1:
            raise ValueError(f"blocks_per_volume must be >= 1, got {self.blocks_per_volume}")
        if self.spacing is not None:
            if len(self.spacing) != 3 or any(float(s) <= 0 for s in self.spacing):
                raise ValueError(f"spacing must be three positive mm values (D, H, W), got {self.spacing}")
            self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.intensity = validate_intensity(self.intensity)
        if not (0.0 <= self.val_frac < 1.0 and 0.0 <= self.test_frac < 1.0 and self.val_frac + self.test_frac < 1):
            raise ValueError(
                f"need 0 <= val_frac, test_frac < 1 with a sum < 1, got {self.val_frac}, {self.test_frac}"
            )


def resample_to_spacing(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample a (D, H, W) image/label pair to (about) the given voxel size.

    The new grid keeps the volume's extent: ``n_new = round(n * old / new)`` voxels per axis, so the actual
    voxel size (recorded by the returned affine) may differ from ``spacing`` by rounding.

    Args:
        image: (D, H, W) float32, resampled linearly (Gaussian anti-aliasing when shrinking).
        label: (D, H, W) int64, resampled with nearest neighbour.
        affine: (4, 4) of the stored (I, J, K) array.
        spacing: target (D, H, W) voxel size in mm.

    Returns:
        ``(image, label, affine)`` on the new grid.
    """
    new_shape = same_extent_shape(image.shape, voxel_size_dhw(affine), spacing)
    if tuple(new_shape) == tuple(image.shape):
        return image, label, affine
    grids = [same_extent(n, m) for n, m in zip(image.shape, new_shape)]
    new_image = resample(image, grids, order=1, antialias=True).astype(np.float32)
    new_label = resample(label, grids, order=0).astype(np.int64)
    # The affine is of the stored (I, J, K) array: its columns are the (H, W, D) axes of the arrays.
    return new_image, new_label, np.asarray(affine, dtype=np.float64) @ index_map([grids[1], grids[2], grids[0]])


def _case_rng(seed: int, case_id: str) -> np.random.Generator:
    # Seed per case (not per processing position) so adding a patient does not change others' blocks.
    return np.random.default_rng([seed, zlib.crc32(case_id.encode())])


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return path.name


def _check_cases(cases: Sequence[Case]) -> None:
    if not cases:
        raise DataError("no cases found to preprocess")
    seen: set[str] = set()
    for case in cases:
        # Case ids name output files and patient ids go into the manifest: both must be safe file names.
        check_name(case.case_id, f"{case.image}: case id")
        check_name(case.patient, f"{case.image}: patient id")
        if case.case_id in seen:
            raise DataError(f"{case.image}: case id {case.case_id!r} occurs twice; ids must be unique")
        seen.add(case.case_id)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_src_dst(src_root: str | Path | None, cases: Sequence[Case], dst: str | Path) -> None:
    """Refuse a destination that overlaps the raw data, before anything is written.

    ``--src`` inside ``--dst`` (or the reverse, or the same folder), or any raw file of a case inside ``--dst``,
    would let an ``--overwrite`` replace the raw data; paths are compared after resolving links.

    Raises:
        DataError: naming both paths.
    """
    dst_r = Path(dst).resolve()
    if src_root is not None:
        src_r = Path(src_root).resolve()
        if _inside(src_r, dst_r) or _inside(dst_r, src_r):
            where = "is" if src_r == dst_r else "lies inside" if _inside(src_r, dst_r) else "contains"
            raise DataError(
                f"--src {src_root} {where} --dst {dst}; write the preprocessed data to a folder outside the raw data"
            )
    for case in cases:
        for raw in (case.image, case.label, *case.segments.values()):
            if raw is not None and _inside(Path(raw).resolve(), dst_r):
                raise DataError(f"{raw}: raw file lies inside --dst {dst}; choose a --dst outside the raw data")


def _space_estimate(cases: Sequence[Case]) -> int:
    """A first, deliberately low estimate of the output size: half the raw files' size.

    Blocks are compressed like the raw files; resampling or skipped background can shrink the output, grid
    overlap can grow it, so only a clearly too small disk is refused up front.
    """
    total = 0
    for case in cases:
        for raw in (case.image, case.label, *case.segments.values()):
            if raw is not None:
                with contextlib.suppress(OSError):
                    total += Path(raw).stat().st_size
    return total // 2


def preprocess(
    name: str,
    cases: Sequence[Case],
    dst: str | Path,
    table: LabelTable,
    options: PreprocessOptions,
    load_case: CaseLoader = load_remapped_case,
    src_root: str | Path | None = None,
    modality: str | None = None,
) -> dict[str, Any]:
    """Run the pipeline described in the module docstring.

    Args:
        name: dataset name written to the manifest (datasets check it).
        cases: raw cases (see the dataset modules' ``discover_*`` functions).
        dst: output folder.
        table: label table; its class names go into the manifest.
        options: run settings.
        load_case: how to read one case (default: image/label pair + table remap).
        src_root: raw data root; source paths are recorded relative to it.
        modality: ``ct`` or ``mr``, recorded in the manifest.

    Returns:
        The manifest dict (also written to ``dst/manifest.json``).

    Raises:
        FileExistsError: ``dst`` already holds an output and ``options.overwrite`` is False.
        DataError: bad raw data (the message names the file); ``src_root`` or a raw file overlapping ``dst``;
            ``dst/manifest.json`` not ours; ``dst`` not writable.
    """
    options.validate()
    _check_cases(cases)
    dst = Path(dst)
    src_root = Path(src_root) if src_root is not None else None
    check_src_dst(src_root, cases, dst)
    old = live_manifest(dst, options.overwrite)
    patient_split = split_ids([c.patient for c in cases], options.val_frac, options.test_frac, options.seed)
    check_output_dir(dst, min_free_bytes=_space_estimate(cases), what="--dst")
    clean_stale(dst)

    with StagedDataset(dst, old) as staged:
        manifest: dict[str, Any] = {
            "producer": PRODUCER,
            "format_version": MANIFEST_VERSION,
            "data_dir": staged.data_dir,
            "dataset": name,
            "modality": modality,
            "label_nc": table.label_nc,
            "class_names": list(table.class_names),
            "intensity": options.intensity,
            "images_normalized": True,
            "voxel_size": list(options.spacing) if options.spacing else None,
            "options": {k: v for k, v in asdict(options).items() if k not in ("overwrite", "progress")},
            "splits": {s: sorted(p for p, sp in patient_split.items() if sp == s) for s in SPLITS},
            "cases": {},
            "entries": [],
            "skipped": {"all_background": 0},
        }
        with logging_redirect_tqdm():
            for case in tqdm(
                sorted(cases, key=lambda c: c.case_id),
                desc=f"preprocess {name}",
                unit="case",
                disable=None if options.progress else True,  # None: no bar when stderr is not a terminal
            ):
                split = patient_split[case.patient]
                record, entries = _process_case(
                    case, split, staged.staging, staged.data_dir, table, options, load_case, src_root
                )
                manifest["cases"][case.case_id] = record
                manifest["entries"].extend(entries)
                manifest["skipped"]["all_background"] += record["skipped"]["all_background"]
        manifest["counts"] = {s: sum(e["split"] == s for e in manifest["entries"]) for s in SPLITS}
        for split in SPLITS:
            if manifest["splits"][split] and manifest["counts"][split] == 0:
                log.warning("split %s has patients but no blocks (all skipped as background)", split)
        staged.commit(manifest)
    log.info(
        "wrote %d blocks (%s) to %s; skipped %d all-background blocks",
        len(manifest["entries"]),
        manifest["counts"],
        dst,
        manifest["skipped"]["all_background"],
    )
    return manifest


def _process_case(
    case: Case,
    split: str,
    out_root: Path,
    data_dir: str,
    table: LabelTable,
    options: PreprocessOptions,
    load_case: CaseLoader,
    src_root: Path | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    image, label, affine = load_case(case, table, options.affine_atol)
    source_shape = list(image.shape)
    if options.spacing is not None:
        image, label, affine = resample_to_spacing(image, label, affine, options.spacing)
    kind = options.intensity["kind"]
    if kind == "reference":
        norm_record: dict[str, Any] = {}
    else:
        image, norm_record = normalize(image, options.intensity, source=str(case.image))

    rng = _case_rng(options.seed, case.case_id)
    starts = block_starts(image.shape, options.block_size, options.sampler, options.blocks_per_volume, rng)
    entries: list[dict[str, Any]] = []
    skipped: list[list[int]] = []
    for k, start in enumerate(starts):
        label_block = extract_block(label, start, options.block_size, 0)
        if options.skip_background and not label_block.any():
            log.info("skip %s block %d at offset %s: labels are all background", case.case_id, k, list(start))
            skipped.append(list(start))
            continue
        block_record: dict[str, Any] = {}
        if kind == "reference":
            raw = extract_block(image, start, options.block_size, np.nan)
            inside = np.isfinite(raw)
            scaled, block_record = normalize(raw[inside], options.intensity, source=str(case.image))
            image_block = np.full(options.block_size, -1.0, dtype=np.float32)
            image_block[inside] = scaled
        else:
            image_block = extract_block(image, start, options.block_size, -1.0)
        block_affine = shift_affine(affine, start)
        block_id = f"{case.case_id}_b{k:03d}"
        rel_image = f"{split}/images/{block_id}.nii.gz"
        rel_label = f"{split}/labels/{block_id}.nii.gz"
        save_nifti(out_root / rel_image, image_block, block_affine, dtype=np.float32)
        save_nifti(out_root / rel_label, label_block.astype(np.uint8), block_affine, dtype=np.uint8)
        entry = {
            "id": block_id,
            "image": f"{data_dir}/{rel_image}",  # relative to DST, where the manifest goes live
            "label": f"{data_dir}/{rel_label}",
            "patient": case.patient,
            "case": case.case_id,
            "split": split,
            "offset": [int(s) for s in start],
            "shape": list(options.block_size),
            "classes_present": [int(v) for v in np.unique(label_block)],
        }
        if block_record:
            entry["intensity_record"] = block_record
        entries.append(entry)
    if not entries:
        log.warning("%s: every block was all background; the case contributes no data", case.case_id)
    record = {
        "patient": case.patient,
        "split": split,
        "source": {
            "image": _relative(case.image, src_root),
            "label": _relative(case.label, src_root) if case.label is not None else None,
            "segments": {k: _relative(p, src_root) for k, p in case.segments.items()},
        },
        "source_shape": source_shape,
        "shape": list(image.shape),
        "voxel_size": [round(v, 6) for v in voxel_size_dhw(affine)],
        "intensity_record": norm_record,
        "blocks": len(entries),
        "skipped": {"all_background": len(skipped), "offsets": skipped},
    }
    return record, entries


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read a manifest JSON; ``DataError`` naming the file if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read manifest ({err})") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("entries"), list):
        raise DataError(f"{path}: manifest has no 'entries' list")
    return manifest
