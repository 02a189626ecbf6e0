"""Duke Breast Cancer MRI: breast, fibroglandular (dense) tissue and vessels, merged from segmentation files.

Raw layout (MR and 3D Slicer segmentations converted to NIfTI, e.g. with dcm2niix and Slicer/SimpleITK)::

    SRC/<patient>/mr.nii.gz                  the MR series the segmentations were drawn on
    SRC/<patient>/breast.nii.gz              breast segmentation (3-D label map, or 4-D with one layer/segment)
    SRC/<patient>/dense_and_vessels.nii.gz   dense tissue + vessels (3-D label map or 4-D layers)

The segmentation file names are the keys of ``segmentation_files`` in dataset/label_tables/duke.yaml, which
also says which value (3-D) or layer and value (4-D) is which class. Classes: 0 background, 1 breast,
2 fibroglandular/dense tissue, 3 vessels; painted in the table's priority order. Every segment that exists
in the files survives: 4-D files are merged layer by layer (the reference crashed on them and lost dense
tissue), and an unlisted value or layer is an error, never dropped. Image and segmentations must share one
grid (shape and affine), and both are permuted to (D, H, W) the same way (the reference transposed them
differently per training stage).

Preprocess: ``python scripts/preprocess_duke.py --src RAW --dst DATA/duke`` (MR percentiles -> [-1, 1]).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dataset.contract import DataError
from dataset.label_table import LabelTable, load_label_table
from dataset.nifti import check_same_geometry, ijk_to_dhw, label_array_to_int, load_image, read_nifti
from dataset.nifti_pairs import PreprocessedDataset
from dataset.preprocess import Case, PreprocessOptions, preprocess

NAME = "duke"
LABEL_NC = 4
MODALITY = "mr"
DEFAULT_INTENSITY: dict[str, Any] = {"kind": "percentile", "lower": 0.5, "upper": 99.5}
IMAGE_NAME = "mr.nii.gz"


def segmentation_spec(table: LabelTable) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The table's ``segmentation_files`` and ``priority``, checked against its classes.

    Raises:
        ValueError: a malformed Duke table.
    """
    files = table.extra.get("segmentation_files")
    priority = list(table.extra.get("priority", []))
    if not isinstance(files, dict) or not files:
        raise ValueError(f"label table {table.name!r} needs a 'segmentation_files' section")
    named = set()
    for key, spec in files.items():
        for value_map in [spec.get("values", {}), *spec.get("layers", {}).values()]:
            for value, class_name in value_map.items():
                if int(value) <= 0:
                    raise ValueError(f"label table {table.name!r}, file {key!r}: value {value} must be > 0")
                table.class_id(class_name)
                named.add(class_name)
    missing = named - set(priority)
    if missing or any(name not in table.class_names for name in priority):
        raise ValueError(f"label table {table.name!r}: priority {priority} must list exactly the classes in use")
    return files, priority


def merge_segmentations(
    files: Mapping[str, Path],
    table: LabelTable,
    reference_path: Path,
    reference_shape_dhw: tuple[int, int, int],
    reference_affine: np.ndarray,
    affine_atol: float,
) -> np.ndarray:
    """Merge a patient's segmentation files into one class-id map.

    Args:
        files: ``{segmentation_files key: path}``.
        table: Duke label table.
        reference_path: the MR file (quoted in geometry errors).
        reference_shape_dhw: (D, H, W) of the MR.
        reference_affine: affine of the MR.
        affine_atol: tolerance of the affine comparison.

    Returns:
        (D, H, W) int64 class ids.

    Raises:
        DataError: geometry mismatch, non-integer values, or a value/layer the table does not list.
    """
    spec_files, priority = segmentation_spec(table)
    d, h, w = reference_shape_dhw
    shape_ijk = (h, w, d)  # the files' stored (I, J, K) order
    masks = {name: np.zeros(shape_ijk, dtype=bool) for name in priority}
    for key, spec in spec_files.items():
        path = Path(files[key])
        array, affine = read_nifti(path, allow_4d=True)
        check_same_geometry(reference_path, shape_ijk, reference_affine, path, array.shape[:3], affine, affine_atol)
        array = label_array_to_int(array, str(path))
        if array.ndim == 3:
            layers = {None: spec.get("values", {})}
        else:
            layer_maps = {int(k): v for k, v in spec.get("layers", {}).items()}
            for layer in range(array.shape[3]):
                if layer not in layer_maps and array[..., layer].any():
                    raise DataError(
                        f"{path}: layer {layer} holds a segment that the {table.name!r} table does not list"
                    )
            layers = {k: v for k, v in layer_maps.items() if k < array.shape[3]}
        for layer, value_map in layers.items():
            data = array if layer is None else array[..., layer]
            value_map = {int(v): c for v, c in value_map.items()}
            unknown = [int(v) for v in np.unique(data) if v != 0 and int(v) not in value_map]
            if unknown:
                where = "" if layer is None else f"layer {layer}: "
                raise DataError(f"{path}: {where}values {unknown} are not listed in the {table.name!r} label table")
            for value, class_name in value_map.items():
                masks[class_name] |= data == value
    label = np.zeros(shape_ijk, dtype=np.int64)
    for class_name in priority:  # later classes are painted over earlier ones
        label[masks[class_name]] = table.class_id(class_name)
    return ijk_to_dhw(label)


def load_duke_case(case: Case, table: LabelTable, affine_atol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:data:`dataset.preprocess.CaseLoader` for Duke: the MR plus merged segmentations."""
    image, affine = load_image(case.image)
    label = merge_segmentations(case.segments, table, case.image, image.shape, affine, affine_atol)
    return image, label, affine


def discover_duke(src: str | Path, table: LabelTable) -> list[Case]:
    """List the patients of a raw Duke folder (layout in the module docstring).

    Raises:
        DataError: no patients, or a patient without its MR or one of the segmentation files.
    """
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: raw Duke folder not found")
    spec_files, _ = segmentation_spec(table)
    cases = []
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        mr = folder / IMAGE_NAME
        if not mr.is_file():
            raise DataError(f"{mr}: MR image not found in patient folder {folder}")
        segments = {}
        for key in spec_files:
            path = folder / f"{key}.nii.gz"
            if not path.is_file():
                raise DataError(f"{path}: segmentation partner {key!r} of {mr} not found")
            segments[key] = path
        cases.append(Case(case_id=folder.name, patient=folder.name, image=mr, label=None, segments=segments))
    if not cases:
        raise DataError(f"{src}: no patient folders with {IMAGE_NAME}")
    return cases


def preprocess_duke(
    src: str | Path,
    dst: str | Path,
    options: PreprocessOptions | None = None,
    table: str | Path | LabelTable = NAME,
) -> dict[str, Any]:
    """Discover, merge labels, split, block and write Duke (see :func:`dataset.preprocess.preprocess`).

    Args:
        src: raw folder (module docstring).
        dst: output folder.
        options: run settings; default: paper block size and MR percentile scaling.
        table: label table name, YAML path or object.
    """
    options = options or PreprocessOptions(intensity=dict(DEFAULT_INTENSITY))
    label_table = load_label_table(table)
    cases = discover_duke(src, label_table)
    return preprocess(
        NAME, cases, dst, label_table, options, load_case=load_duke_case, src_root=src, modality=MODALITY
    )


class DukeDataset(PreprocessedDataset):
    """Preprocessed Duke MR blocks (``root`` = the ``--dst`` of preprocessing).

    Arguments as :class:`~dataset.nifti_pairs.PreprocessedDataset`; ``label_nc`` must be 4.
    """

    NAME = NAME
    LABEL_NC = LABEL_NC
