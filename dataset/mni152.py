"""Embedded MNI152 dataset (SPEC 4.3): N distinct subjects from the template nilearn ships, no download.

Source: the MNI ICBM152 2009 T1 template and its grey/white-matter probability maps inside the nilearn wheel
(``load_mni152_template``, ``load_mni152_gm_template``, ``load_mni152_wm_template``; offline), 1 mm RAS.
Note: the T1 nilearn ships is **skull-stripped** (its docstring says so): there is no scalp or skull in it.

Label map (derived from the shipped maps on a 2 mm grid, a 2x2x2 average of the 1 mm maps):

- head mask = template T1 > 2 % of its maximum, closed and hole-filled (``scipy.ndimage``);
- brain mask = (GM + WM probability, Gaussian-smoothed with sigma 1 voxel) > 0.5, closed, hole-filled,
  within the head mask;
- 0 ``background``: outside the head mask;
- 1 ``other_head_tissue``: inside the head mask, outside the brain mask. Because the template is skull-stripped
  this is the thin extra-cerebral rim the stripping kept (outer CSF, meninges, sinuses), not scalp or bone;
  at 32^3 it appears as scattered voxels on the head outline;
- 2 ``csf_other_brain``: inside the brain mask with GM + WM < 0.5 (ventricles, deep sulci, other);
- 3 ``grey_matter`` / 4 ``white_matter``: inside the brain mask with GM + WM >= 0.5, by the larger probability.

Subjects: the template and its labels are cropped to the head's bounding box (plus ``margin_mm``) and
resampled to ``size`` (image: Gaussian anti-aliasing + linear; labels: nearest), so the head fills the block;
D is the superior-inferior axis (NIfTI K), and the affine keeps real millimetres (voxel size = box extent /
size, so voxels may be anisotropic). Subject ``i`` then gets a TorchIO augmentation seeded by
``(seed, i)``: random affine and elastic deformation applied identically to image and labels (labels with
nearest-neighbour interpolation), then bias field, gamma and noise on the image only; finally the image is
scaled by its 0.5/99.5 percentiles to [-1, 1]. Subjects are split into disjoint train/val/test sets by a
seeded permutation of their indices.

Cache: ``root/<config hash>/`` holds the NIfTI files and a manifest (the :mod:`dataset.nifti_pairs` format
plus the config). A directory per configuration means a changed config builds a new cache and never
overwrites an old one. The first user builds it under a file lock into a temporary folder renamed into place,
so concurrent DDP ranks build it once and never see a half-written cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from dataset.embedded import EmbeddedConfig, EmbeddedPairs, ensure_built, write_manifest, write_subject
from dataset.intensity import percentile_normalize
from dataset.nifti import ijk_to_dhw
from dataset.resample import box, index_map, resample
from dataset.splits import split_by_count

NAME = "mni152"
CLASS_NAMES = ("background", "other_head_tissue", "csf_other_brain", "grey_matter", "white_matter")
LABEL_NC = len(CLASS_NAMES)
#: Bump when the build procedure changes, so old caches are not reused.
BUILD_VERSION = 1


@dataclass(frozen=True)
class MNI152Config(EmbeddedConfig):
    """Everything that determines the cached subjects (its hash names the cache folder): the fields of
    :class:`dataset.embedded.EmbeddedConfig`, then the augmentation's.

    Args:
        degrees, scales, translation_mm: RandomAffine ranges.
        elastic_control_points, elastic_max_displacement_mm: RandomElasticDeformation settings.
        bias_coefficients, log_gamma, noise_std: RandomBiasField / RandomGamma / RandomNoise ranges.
    """

    degrees: float = 8.0
    scales: float = 0.08
    translation_mm: float = 4.0
    elastic_control_points: int = 7
    elastic_max_displacement_mm: float = 7.0
    bias_coefficients: float = 0.2
    log_gamma: float = 0.25
    noise_std: tuple[float, float] = (0.005, 0.02)

    def digest(self) -> str:
        """Hash of the config, the build version and the nilearn version (the template's provenance)."""
        payload = {**asdict(self), "build_version": BUILD_VERSION, "nilearn": metadata.version("nilearn")}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- template
def load_template() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The shipped 1 mm T1 (scaled to [0, 1]), GM and WM probability maps, (I, J, K) RAS, and their affine."""
    # Imported here: nilearn.datasets pulls in scikit-learn (seconds), needed only when a cache is built.
    from nilearn.datasets import load_mni152_gm_template, load_mni152_template, load_mni152_wm_template

    t1_img = load_mni152_template(resolution=1)
    maps = [
        np.asarray(f(resolution=1).get_fdata(), dtype=np.float32)
        for f in (load_mni152_gm_template, load_mni152_wm_template)
    ]
    return np.asarray(t1_img.get_fdata(), dtype=np.float32), maps[0], maps[1], np.asarray(t1_img.affine)


def downsample2(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average 2x2x2 voxel groups (exact anti-aliased halving); odd trailing voxels are dropped.

    Returns:
        ``(volume, affine)`` of the half-resolution grid: new voxel i covers old voxels 2i and 2i + 1.
    """
    i, j, k = (n // 2 * 2 for n in volume.shape)
    v = volume[:i, :j, :k].reshape(i // 2, 2, j // 2, 2, k // 2, 2).mean(axis=(1, 3, 5))
    index_map = np.diag([2.0, 2.0, 2.0, 1.0])
    index_map[:3, 3] = 0.5
    return v.astype(np.float32), affine @ index_map


def template_labels(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Five-class label map from the template (definitions in the module docstring).

    Args:
        t1, gm, wm: (I, J, K) arrays on one grid (T1 in [0, 1], probabilities in [0, 1]).

    Returns:
        (I, J, K) uint8 labels in [0, 5).
    """
    closing = ndi.generate_binary_structure(3, 1)
    head = ndi.binary_fill_holes(ndi.binary_closing(t1 > 0.02 * t1.max(), closing, iterations=2))
    tissue = gm + wm
    brain = ndi.binary_fill_holes(ndi.binary_closing(ndi.gaussian_filter(tissue, 1.0) > 0.5, closing, iterations=2))
    brain &= head
    label = np.zeros(t1.shape, dtype=np.uint8)
    label[head] = 1
    label[brain] = 2
    matter = brain & (tissue >= 0.5)
    label[matter & (gm >= wm)] = 3
    label[matter & (wm > gm)] = 4
    return label


@functools.lru_cache(maxsize=1)
def template_2mm() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template T1, its 5-class labels and their affine on the 2 mm grid (cached per process; read-only)."""
    t1, gm, wm, affine = load_template()
    t1_2, affine_2 = downsample2(t1, affine)
    gm_2, _ = downsample2(gm, affine)
    wm_2, _ = downsample2(wm, affine)
    label_2 = template_labels(t1_2, gm_2, wm_2)
    for array in (t1_2, label_2, affine_2):
        array.flags.writeable = False
    return t1_2, label_2, affine_2


def crop_and_resample(
    image: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    size_dhw: Sequence[int],
    margin_mm: float | Sequence[float],
    cval: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop to the bounding box of the non-zero labels (+ margin) and resample to ``size_dhw``.

    An axis whose box (with margin 0) spans exactly as many voxels as its output size is copied unchanged
    (scale 1, no smoothing): ``dataset.ct_abdomen`` keeps its 3 mm slices that way.

    Args:
        image: (I, J, K) float32.
        label: (I, J, K) uint8; its non-zero voxels define the box (the head, the body).
        affine: (4, 4) of both.
        size_dhw: output (D, H, W) = (K, I, J) sizes.
        margin_mm: margin added on every side of the box: one value, or one per (I, J, K) axis.
        cval: image value outside the source grid (0 for the template, air for CT).

    Returns:
        ``(image, label, affine)`` on the output (I, J, K) grid.
    """
    d, h, w = size_dhw
    out_shape = np.array([h, w, d])
    voxel = np.linalg.norm(affine[:3, :3], axis=0)
    margin = np.broadcast_to(np.asarray(margin_mm, dtype=np.float64), (3,))
    nonzero = np.argwhere(label > 0)
    lo = nonzero.min(0) - margin / voxel
    hi = nonzero.max(0) + 1 + margin / voxel  # box edges in voxel-edge coordinates
    grids = [box(lo[a], hi[a], int(out_shape[a])) for a in range(3)]
    out_image = resample(image, grids, order=1, mode="constant", cval=cval, antialias=True).astype(np.float32)
    out_label = resample(label, grids, order=0, mode="constant").astype(np.uint8)
    return out_image, out_label, affine @ index_map(grids)


def augment_subject(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray, config: MNI152Config, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """One TorchIO-augmented subject (same grid and affine as the input).

    Args:
        image, label: (I, J, K) arrays.
        affine: their (4, 4) affine (TorchIO works in millimetres).
        config: augmentation ranges.
        seed: this subject's seed.

    Returns:
        ``(image, label)`` (I, J, K) float32 / uint8.
    """
    import torchio as tio  # imported lazily: only cache builds need it

    transform = tio.Compose(
        [
            # Spatial: RandomAffine and RandomElasticDeformation composed into one resampling (less blur), applied to
            # both images; the LabelMap is resampled with nearest neighbour.
            tio.RandomAffineElasticDeformation(
                affine_kwargs={
                    "scales": config.scales,
                    "degrees": config.degrees,
                    "translation": config.translation_mm,
                    "default_pad_value": 0.0,
                    "label_interpolation": "nearest",
                },
                elastic_kwargs={
                    "num_control_points": config.elastic_control_points,
                    "max_displacement": config.elastic_max_displacement_mm,
                    "label_interpolation": "nearest",
                },
            ),
            # Intensity: TorchIO applies these to ScalarImage only.
            tio.RandomBiasField(coefficients=config.bias_coefficients),
            tio.RandomGamma(log_gamma=config.log_gamma),
            tio.RandomNoise(std=config.noise_std),
        ]
    )
    return apply_seeded(transform, image, label, affine, seed)


def apply_seeded(
    transform: Any, image: np.ndarray, label: np.ndarray, affine: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a TorchIO ``transform`` to an image and its label map with torch seeded by ``seed``.

    Args:
        transform: a TorchIO transform (spatial ones resample the LabelMap with nearest neighbour).
        image, label: (I, J, K) arrays on one grid.
        affine: their (4, 4) affine (TorchIO works in millimetres).
        seed: this subject's seed; the caller's global torch RNG is left untouched.

    Returns:
        ``(image, label)`` (I, J, K) float32 / uint8.
    """
    import torchio as tio  # imported lazily: only cache builds need it

    subject = tio.Subject(
        image=tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(image))[None], affine=affine),
        label=tio.LabelMap(tensor=torch.from_numpy(label.astype(np.int64))[None], affine=affine),
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        out = transform(subject)
    return out["image"].data[0].numpy().astype(np.float32), out["label"].data[0].numpy().astype(np.uint8)


def subject_seed(seed: int, index: int) -> int:
    """Per-subject seed derived from the base seed and the subject index."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------------------ cache
def build_subjects(folder: Path, config: MNI152Config) -> dict[str, Any]:
    """Write all subjects and the manifest into ``folder`` (an empty temporary folder).

    Returns:
        The manifest.
    """
    t1_2, label_2, affine_2 = template_2mm()
    base_image, base_label, out_affine = crop_and_resample(t1_2, label_2, affine_2, config.size, config.margin_mm)
    splits = split_by_count(config.num_subjects, config.num_val, config.num_test, config.seed)
    entries = []
    for index in range(config.num_subjects):
        seed = subject_seed(config.seed, index)
        image, label = augment_subject(base_image, base_label, out_affine, config, seed)
        image_dhw, record = percentile_normalize(ijk_to_dhw(image), 0.5, 99.5, source=f"mni152 subject {index}")
        entries.append(write_subject(folder, NAME, index, seed, splits[index], image_dhw, ijk_to_dhw(label),
                                     out_affine, LABEL_NC, {"intensity_record": record}))  # fmt: skip
    intensity = {"kind": "percentile", "lower": 0.5, "upper": 99.5, "invertible": False}
    return write_manifest(folder, NAME, "mr", CLASS_NAMES, intensity, out_affine, config, config.digest(), entries)


def ensure_cache(root: str | Path, config: MNI152Config) -> tuple[Path, bool]:
    """Return the cache folder of ``config`` under ``root``, building it if needed.

    Returns:
        ``(folder, built)``: ``built`` is True when this call built the cache.
    """
    return ensure_built(
        Path(root) / f"{NAME}-{config.digest()}",
        lambda tmp: build_subjects(tmp, config),
        f"MNI152 cache ({config.num_subjects} subjects at {config.size})",
    )


class MNI152Dataset(EmbeddedPairs):
    """N distinct augmented MNI152 subjects with 5-class labels (see module docstring); the arguments are
    :class:`dataset.embedded.EmbeddedPairs`' (``size`` default (32, 32, 32), ``label_nc`` 5, ``margin_mm`` around
    the head box).
    """

    name = NAME
    title = "MNI152"
    config_class = MNI152Config

    def dataset_class_names(self) -> Sequence[str]:
        return CLASS_NAMES

    def ensure_cache(self, root: Path) -> tuple[Path, bool]:
        return ensure_cache(root, self.config)
