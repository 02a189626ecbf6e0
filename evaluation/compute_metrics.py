"""Compare folders of real and synthetic NIfTI volumes: FID, 3D-FID, LPIPS, SSIM, RMSE, PSNR, MS-SSIM, privacy.

Usage::

    python evaluation/compute_metrics.py --real REAL_DIR --fake FAKE_DIR --out results.json \
        [--labels LABEL_DIR] [--train TRAIN_DIR] [--metrics psnr,rmse,ssim,ssim2d,msssim,lpips,fid,fid3d,privacy] \
        [--data-range -1 1 | --real-range -1000 1000 --fake-range -1000 1000] [--clip] \
        [--fid3d-convention project|medicalnet] [--weights-dir DIR] [--device cpu] [--slice-step 1] [--overwrite]

(also ``python -m evaluation.compute_metrics``). Files pair by name (see ``evaluation.pairing``), both sides
are mapped to [0, 1] from their data range (``evaluation.intensity``: stated with ``--data-range``, else the
range recorded with the files by generation or preprocessing, else an error showing the values found), and
the results go to ``--out`` (JSON) and the same name with ``.md`` (Markdown table in the paper's column order,
with the settings that change a value). Without ``--metrics`` every metric whose weights are on this machine
is computed and the others are skipped with a warning. Metric definitions are in ``evaluation.image_metrics``,
``evaluation.frechet``, ``evaluation.inception``, ``evaluation.medicalnet``, ``evaluation.lpips_metric`` and
``evaluation.privacy``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset import DataError
from dataset.cli import ArgumentParser, positive_int, run_cli
from dataset.files import check_output_files, read_run_record
from dataset.nifti import load_image
from evaluation import image_metrics as im
from evaluation import weights as W
from evaluation.cli_common import HelpFormatter, add_range_arguments
from evaluation.frechet import FeatureStats, fid_from_stats, rank_warning
from evaluation.intensity import IntensityRange, resolve_range
from evaluation.medicalnet import FID3D_CONVENTIONS
from evaluation.nifti_io import check_same_grid, list_nifti, read_header
from evaluation.pairing import Pair, group_by_id, pair_folders
from evaluation.report import header, metrics_markdown, report_paths, summarise, write_report

logger = logging.getLogger(__name__)

IMAGE_METRICS = ("psnr", "rmse", "ssim", "ssim2d", "msssim", "lpips", "fid", "fid3d")
ALL_METRICS = IMAGE_METRICS + ("privacy",)
#: Metrics that need a pretrained network, and its weight file.
WEIGHTED_METRICS = {"lpips": W.VGG16, "fid": W.INCEPTION, "fid3d": W.MEDICALNET50}
PAIRING_RULE = "<id>.nii[.gz] (real) <-> <id>.nii[.gz] or <id>_s<k>.nii[.gz] (synthetic)"

DEFINITIONS = {
    "psnr": "10 log10(1 / MSE) in dB over all voxels of [0, 1]-mapped volumes (data range 1); inf if identical",
    "rmse": "sqrt(mean squared difference) over all voxels, [0, 1] units",
    "ssim": "3D SSIM, Gaussian window (sigma 1.5, normalised to 1), K1 0.01, K2 0.03, valid region, data range 1",
    "ssim2d": "2D SSIM of each (H, W) slice along D (same window rule), averaged over slices then volumes",
    "msssim": "3D MS-SSIM (Wang 2003), 2x average pooling, scales/windows/weights chosen for the volume size",
    "lpips": "LPIPS-VGG v0.1 of each (H, W) slice along D, inputs 2x-1 repeated to RGB, mean over slices",
    "fid": "Frechet distance of InceptionV3 pool3 (2048-d) features of slices along D (pytorch-fid convention)",
    "fid3d": "Frechet distance of MedicalNet ResNet-50 (23 datasets) global-pooled 2048-d features of volumes "
    "(input convention in the settings)",
}


@dataclass
class Options:
    """Everything one evaluation run needs (built from the CLI by :func:`options_from_args`)."""

    real_dir: Path
    fake_dir: Path
    out: Path
    metrics: tuple[str, ...] = IMAGE_METRICS
    labels_dir: Path | None = None
    train_dir: Path | None = None
    real_range: tuple[float, float] | None = None
    fake_range: tuple[float, float] | None = None
    clip: bool = False
    fid3d_convention: str = "project"
    weights_dir: Path | None = None
    random_weights: bool = False
    device: str = "cpu"
    slice_step: int = 1
    batch_size: int = 16
    privacy_features: str = "auto"
    privacy_max_reference_pairs: int = 2000
    overwrite: bool = False
    progress: bool = True
    skipped: dict[str, str] = field(default_factory=dict)
    argv: list[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in ALL_METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"unknown metric(s) {unknown or '(none given)'}; choose from {','.join(ALL_METRICS)}")
        if "privacy" in self.metrics and self.train_dir is None:
            raise ValueError("the privacy audit needs --train DIR (the real training volumes)")
        if self.train_dir is not None and "privacy" not in self.metrics:
            raise ValueError("--train is only used by the privacy audit: add 'privacy' to --metrics")
        if self.privacy_features not in ("auto", "medicalnet", "avgpool"):
            raise ValueError(f"--privacy-features must be auto, medicalnet or avgpool, got {self.privacy_features}")
        if self.slice_step < 1 or self.batch_size < 1 or self.privacy_max_reference_pairs < 1:
            raise ValueError("--slice-step, --batch-size and --privacy-max-reference-pairs must be >= 1")
        if self.fid3d_convention not in FID3D_CONVENTIONS:
            raise ValueError(f"--fid3d-convention must be one of {', '.join(FID3D_CONVENTIONS)}")
        for lo_hi in (self.real_range, self.fake_range):
            if lo_hi is not None:
                IntensityRange(*lo_hi)  # raises ValueError unless finite with lo < hi
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device} asked for, but CUDA is not available")


@dataclass
class Networks:
    """Feature networks a run needs, with their weight records."""

    lpips: torch.nn.Module | None = None
    inception: torch.nn.Module | None = None
    medicalnet: torch.nn.Module | None = None
    privacy_medicalnet: bool = False
    records: dict = field(default_factory=dict)


def default_metrics(
    weights_dir: Path | None, random_weights: bool, with_privacy: bool
) -> tuple[tuple[str, ...], dict[str, str]]:
    """The metrics computed when ``--metrics`` is not given: every one whose weights are on this machine.

    Returns:
        (metrics, {skipped metric: reason with the command that fetches its weights}); each skip is logged.
    """
    metrics, skipped = [], {}
    for name in IMAGE_METRICS:
        spec = WEIGHTED_METRICS.get(name)
        if spec is None or random_weights or W.available(spec, weights_dir):
            metrics.append(name)
            continue
        skipped[name] = (
            f"weights {spec.filename} not found in {', '.join(str(d) for d in W.search_dirs(weights_dir))}; "
            f"fetch them with `{W.fetch_command(spec, weights_dir)}`"
        )
        logger.warning("skipping %s: %s", name, skipped[name])
    return tuple(metrics) + (("privacy",) if with_privacy else ()), skipped


def _privacy_uses_medicalnet(opts: Options) -> bool:
    """Whether the privacy audit uses MedicalNet features (:func:`evaluation.privacy.uses_medicalnet`)."""
    from evaluation.privacy import uses_medicalnet

    return "privacy" in opts.metrics and uses_medicalnet(opts.privacy_features, opts.random_weights, opts.weights_dir)


def _build_networks(opts: Options) -> Networks:
    """Build (and so check the weight files of) every network the run needs, before any volume is read."""
    nets = Networks(privacy_medicalnet=_privacy_uses_medicalnet(opts))
    if "lpips" in opts.metrics:
        from evaluation.lpips_metric import build_lpips

        nets.lpips, nets.records["lpips_vgg16"] = build_lpips(opts.weights_dir, opts.random_weights, opts.device)
    if "fid" in opts.metrics:
        from evaluation.inception import build_inception

        nets.inception, nets.records["inception"] = build_inception(opts.weights_dir, opts.random_weights, opts.device)
    if "fid3d" in opts.metrics or nets.privacy_medicalnet:
        from evaluation.medicalnet import build_medicalnet

        nets.medicalnet, nets.records["medicalnet"] = build_medicalnet(
            opts.weights_dir, opts.random_weights, opts.device
        )
    return nets


def _check_labels(pairs: list[Pair], labels_dir: Path) -> int:
    """Every case has a label map on the real volume's grid, and every label map has a case."""
    labels = list_nifti(labels_dir)
    real = {p.id: p.reference for p in pairs}
    missing = sorted(set(real) - set(labels))
    extra = sorted(set(labels) - set(real))
    if missing or extra:
        raise DataError(
            f"label maps in {labels_dir} do not match the real volumes: without label map {missing[:20]}, "
            f"label maps without real volume {extra[:20]}"
        )
    for case_id, path in real.items():
        check_same_grid(read_header(path), read_header(labels[case_id]))
    return len(labels)


class _Accumulator:
    """Per-pair values and feature statistics collected during the pass over the volumes."""

    def __init__(self, opts: Options, nets: Networks) -> None:
        self.opts, self.nets = opts, nets
        self.per_pair: list[dict] = []
        self.settings: dict[str, dict[str, dict]] = {"ssim": {}, "ssim2d": {}, "msssim": {}}
        self.fid = {s: FeatureStats(2048) for s in ("real", "fake")} if nets.inception is not None else None
        self.fid3d = {s: FeatureStats(2048) for s in ("real", "fake")} if "fid3d" in opts.metrics else None
        self.fake_features3d: dict[Path, np.ndarray] = {}

    def _slices(self, vol: torch.Tensor) -> torch.Tensor:
        return vol[im.slice_indices(vol.shape[0], self.opts.slice_step)]

    def add_real(self, vol: torch.Tensor, path: Path) -> None:
        self._add_features("real", vol, path)

    def _add_features(self, side: str, vol: torch.Tensor, path: Path) -> None:
        if self.fid is not None:
            from evaluation.inception import slice_features

            self.fid[side].update(slice_features(self.nets.inception, self._slices(vol), self.opts.batch_size))
        if self.fid3d is not None or (self.nets.privacy_medicalnet and side == "fake"):
            from evaluation.medicalnet import volume_features

            feats = volume_features(self.nets.medicalnet, vol, self.opts.fid3d_convention, str(path))
            if self.fid3d is not None:
                self.fid3d[side].update(feats)
            if self.nets.privacy_medicalnet and side == "fake":  # reused by the privacy audit
                self.fake_features3d[path] = feats[0].double().numpy()

    def add_pair(self, pair: Pair, real: torch.Tensor, fake: torch.Tensor) -> None:
        shape = "x".join(str(s) for s in real.shape)
        row: dict = {"id": pair.id, "sample": pair.sample, "real": pair.reference.name, "fake": pair.synthetic.name}
        metrics = self.opts.metrics
        if "psnr" in metrics:
            row["psnr"] = im.psnr(fake, real)
        if "rmse" in metrics:
            row["rmse"] = im.rmse(fake, real)
        if "ssim" in metrics:
            row["ssim"], window = im.ssim3d(fake, real)
            self.settings["ssim"][shape] = {"window": list(window), "sigma": im.SSIM_SIGMA}
        if "ssim2d" in metrics:
            row["ssim2d"], window = im.ssim2d_slices(fake, real)
            self.settings["ssim2d"][shape] = {"window": list(window), "sigma": im.SSIM_SIGMA, "slices": real.shape[0]}
        if "msssim" in metrics:
            row["msssim"], ms = im.msssim(fake, real)
            self.settings["msssim"][shape] = ms.describe() | {"sigma": im.SSIM_SIGMA}
        if self.nets.lpips is not None:
            from evaluation.lpips_metric import lpips_slices

            values = lpips_slices(self.nets.lpips, self._slices(fake), self._slices(real), self.opts.batch_size)
            row["lpips"] = float(values.mean())
        self._add_features("fake", fake, pair.synthetic)
        self.per_pair.append(row)


def _load_unit(path: Path, rng: IntensityRange) -> torch.Tensor:
    data, _ = load_image(path)
    return torch.from_numpy(rng.to_unit(data, str(path)))


def _metric_blocks(acc: _Accumulator, opts: Options, warnings: list[str]) -> dict:
    blocks: dict[str, dict] = {}
    for key in ("psnr", "rmse", "ssim", "ssim2d", "msssim", "lpips"):
        if key not in opts.metrics:
            continue
        block = summarise([row[key] for row in acc.per_pair]) | {"definition": DEFINITIONS[key], "data_range": 1.0}
        if key in acc.settings:
            block["settings_by_shape"] = acc.settings[key]
        if key == "psnr":
            block["unit"] = "dB"
            block["n_identical"] = sum(1 for row in acc.per_pair if row[key] == float("inf"))
        if key == "lpips":
            block |= {"slice_axis": "D", "slice_step": opts.slice_step, "input_range": [-1, 1]}
        blocks[key] = block
    for key, stats, unit in (("fid", acc.fid, "slices"), ("fid3d", acc.fid3d, "volumes")):
        if stats is None:
            continue
        n_real, n_fake = stats["real"].n, stats["fake"].n
        if min(n_real, n_fake) < 2:
            raise ValueError(f"{key}: needs at least 2 {unit} per set, got {n_real} real and {n_fake} synthetic")
        warning = rank_warning(key, n_real, n_fake, 2048)
        if warning:
            warnings.append(warning)
            logger.warning(warning)
        value, method = fid_from_stats(stats["real"], stats["fake"])
        blocks[key] = {
            "value": value,
            f"n_real_{unit}": n_real,
            f"n_fake_{unit}": n_fake,
            "feature_dim": 2048,
            "definition": DEFINITIONS[key],
            "covariance": "unbiased (n - 1), float64",
            "frechet_method": method,
            "frechet_methods": "sqrtm: scipy sqrtm of S1 S2 (eps 1e-6 diagonal fallback); nuclear-norm: exact trace "
            "of the root from the vectors, used when both sets have <= 2048 vectors",
        }
        if key == "fid3d":
            from evaluation.medicalnet import CONVENTION_TEXT

            blocks[key] |= {
                "input_convention": opts.fid3d_convention,
                "input": CONVENTION_TEXT[opts.fid3d_convention],
            }
        if key == "fid":
            blocks[key] |= {
                "slice_axis": "D",
                "slice_step": opts.slice_step,
                "input": "[0, 1] grey slice repeated to 3 channels, bilinear resize to 299x299",
            }
    return blocks


def _privacy(
    opts: Options,
    pairs: list[Pair],
    nets: Networks,
    acc: _Accumulator,
    fake_rng: IntensityRange,
    train_rng: IntensityRange,
) -> dict:
    """The privacy audit of the synthetic volumes against ``--train`` (:func:`evaluation.privacy.audit_folders`)."""
    from evaluation.privacy import audit_folders

    return audit_folders(
        [p.synthetic for p in pairs],
        list(list_nifti(opts.train_dir).values()),
        IntensityRange(fake_rng.lo, fake_rng.hi, clip=opts.clip, source=fake_rng.source),
        train_rng,
        medicalnet=nets.medicalnet if nets.privacy_medicalnet else None,
        fid3d_convention=opts.fid3d_convention,
        random_weights=opts.random_weights,
        fake_features=acc.fake_features3d if nets.privacy_medicalnet else None,
        max_reference_pairs=opts.privacy_max_reference_pairs,
        progress=opts.progress,
    )


def _is_our_report(json_path: Path) -> Callable[[Path], bool]:
    """``--overwrite`` predicate: the JSON twin of the report is one of ours (its ``producer`` field)."""
    return lambda _path: read_run_record(json_path) is not None


def evaluate(opts: Options) -> dict:
    """Run the evaluation and write the JSON and Markdown reports.

    Order: outputs, pairing, grids, label maps, data ranges and weight files are all checked before the
    first volume is read for a metric.

    Returns:
        The report dict (as written to JSON, before JSON conversion).

    Raises:
        FileExistsError: an output exists and ``overwrite`` is False.
        DataError: output, pairing, grid, range or file problems (each naming the file).
        MissingWeightsError: a pretrained weight file is absent.
    """
    json_path, md_path = report_paths(opts.out)
    check_output_files([json_path, md_path], opts.overwrite, ours=_is_our_report(json_path))
    pairs = pair_folders(opts.real_dir, opts.fake_dir)
    for pair in pairs:  # geometry of every pair first: fail before hours of feature extraction
        check_same_grid(read_header(pair.reference), read_header(pair.synthetic))
    n_labels = _check_labels(pairs, opts.labels_dir) if opts.labels_dir is not None else None
    warnings: list[str] = []
    real_files = sorted({p.reference for p in pairs})
    real_rng = resolve_range(
        opts.real_dir, opts.real_range, ("--data-range", "--real-range"), "--real", real_files, opts.clip, warnings
    )
    fake_rng = resolve_range(
        opts.fake_dir,
        opts.fake_range,
        ("--data-range", "--fake-range"),
        "--fake",
        [p.synthetic for p in pairs],
        opts.clip,
        warnings,
    )
    train_rng = None
    if "privacy" in opts.metrics:
        train_files = list(list_nifti(opts.train_dir).values())
        train_rng = resolve_range(
            opts.train_dir,
            opts.real_range,
            ("--data-range", "--real-range"),
            "--train",
            train_files,
            opts.clip,
            warnings,
        )
    nets = _build_networks(opts)
    acc = _Accumulator(opts, nets)
    groups = group_by_id(pairs)
    with tqdm(total=len(pairs), desc="volume pairs", disable=None if opts.progress else True) as bar:
        for group in groups.values():
            real = _load_unit(group[0].reference, real_rng)
            acc.add_real(real, group[0].reference)
            for pair in group:
                acc.add_pair(pair, real, _load_unit(pair.synthetic, fake_rng))
                bar.update(1)
    report = header("evaluation.compute_metrics", opts.argv)
    report |= {
        "inputs": {
            "real_dir": opts.real_dir,
            "fake_dir": opts.fake_dir,
            "labels_dir": opts.labels_dir,
            "n_labels_checked": n_labels,
            "n_real": len(groups),
            "n_pairs": len(pairs),
            "pairing_rule": PAIRING_RULE,
        },
        "intensity": {"real": real_rng.describe(), "fake": fake_rng.describe()},
        "random_weights": opts.random_weights,
        "weights": nets.records,
        "device": opts.device,
        "fid3d_convention": opts.fid3d_convention if "fid3d" in opts.metrics else None,
        "skipped_metrics": dict(opts.skipped),
        "metrics": _metric_blocks(acc, opts, warnings),
        "per_pair": acc.per_pair,
    }
    for name, reason in opts.skipped.items():
        warnings.append(f"{name} skipped: {reason}")
    if opts.random_weights:
        warnings.append("--random-weights: networks are randomly initialised; FID, 3D-FID and LPIPS are meaningless")
    if real_rng.clipped_voxels or fake_rng.clipped_voxels:
        warnings.append(f"clipped voxels: real {real_rng.clipped_voxels}, fake {fake_rng.clipped_voxels} (--clip)")
    if train_rng is not None:
        report["privacy"] = _privacy(opts, pairs, nets, acc, fake_rng, train_rng)
    report["warnings"] = warnings
    write_report(opts.out, report, metrics_markdown(report))
    logger.info("wrote %s and %s", json_path, md_path)
    return report


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = ArgumentParser(
        prog="compute_metrics",
        formatter_class=HelpFormatter,
        description="Metrics of synthetic vs real NIfTI volumes (paired by file name). Writes --out (JSON) and "
        "the same name with .md (Markdown table: FID | 3D-FID | LPIPS | SSIM | RMSE | PSNR | MS-SSIM | SSIM-2D, "
        "and the settings that change a value).",
    )
    p.add_argument("--real", type=Path, required=True, help="folder of real volumes <id>.nii[.gz]")
    p.add_argument("--fake", type=Path, required=True, help="folder of synthetic volumes <id>[_s<k>].nii[.gz]")
    p.add_argument("--labels", type=Path, help="folder of label maps <id>.nii[.gz]; checked against the real grid")
    p.add_argument("--train", type=Path, help="folder of real training volumes (privacy audit)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="JSON report path; the Markdown goes next to it with .md (an --out ending in .md names the Markdown "
        "and the JSON gets .json)",
    )
    p.add_argument(
        "--metrics",
        default=None,
        help=f"comma-separated subset of {','.join(ALL_METRICS)}; a metric named here whose weights are missing "
        "is an error. Default: every image metric whose weights are on this machine (the others are skipped "
        "with a warning), plus privacy when --train is given",
    )
    add_range_arguments(p, "--real/--train", "--fake only")
    p.add_argument(
        "--fid3d-convention",
        default="project",
        choices=FID3D_CONVENTIONS,
        help="3D-FID input: 'project' = [0, 1] volume in (D, H, W) order (this project's numbers); 'medicalnet' "
        "= MedicalNet's own: z-score of the foreground, nibabel (I, J, K) order (comparable with WDM-3D, HA-GAN)",
    )
    p.add_argument(
        "--weights-dir",
        type=Path,
        help="folder with weight files, searched before the torch hub cache (scripts/fetch_weights.py --dest)",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="PLUMBING TEST ONLY: randomly initialised networks, numbers meaningless (recorded in the report)",
    )
    p.add_argument("--device", default="cpu", help="torch device for the networks (cpu, cuda, cuda:1)")
    p.add_argument("--slice-step", type=positive_int, default=1, help="use every N-th slice for LPIPS and 2D FID")
    p.add_argument("--batch-size", type=positive_int, default=16, help="slices per network forward pass")
    p.add_argument(
        "--privacy-features",
        default="auto",
        choices=("auto", "medicalnet", "avgpool"),
        help="privacy audit features: MedicalNet (auto: when its weights are there) or the 8^3 avg-pool fallback",
    )
    p.add_argument(
        "--privacy-max-reference-pairs",
        type=positive_int,
        default=2000,
        help="training pairs used for the SSIM copy threshold (a seeded subset when there are more)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing reports written by this tool")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ERROR)")
    return p


def options_from_args(args: argparse.Namespace, argv: list[str] | None = None) -> Options:
    """Options from parsed arguments (validation happens in :class:`Options`)."""
    skipped: dict[str, str] = {}
    if args.metrics is None:
        metrics, skipped = default_metrics(args.weights_dir, args.random_weights, args.train is not None)
    else:
        metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    real_range = args.real_range or args.data_range
    fake_range = args.fake_range or args.data_range
    return Options(
        real_dir=args.real,
        fake_dir=args.fake,
        out=args.out,
        metrics=metrics,
        labels_dir=args.labels,
        train_dir=args.train,
        real_range=tuple(real_range) if real_range else None,
        fake_range=tuple(fake_range) if fake_range else None,
        clip=args.clip,
        fid3d_convention=args.fid3d_convention,
        weights_dir=args.weights_dir,
        random_weights=args.random_weights,
        device=args.device,
        slice_step=args.slice_step,
        batch_size=args.batch_size,
        privacy_features=args.privacy_features,
        privacy_max_reference_pairs=args.privacy_max_reference_pairs,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        skipped=skipped,
        argv=argv,
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for a user or data error, reported in one line)."""
    return run_cli(build_parser(), lambda args, argv: evaluate(options_from_args(args, argv)), argv)


if __name__ == "__main__":
    sys.exit(main())
