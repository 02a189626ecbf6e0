"""How good are generated label maps? Mask-quality metrics of the ``labels`` stage (SPEC section 11).

    python evaluation/label_metrics.py --fake GEN_LABELS --real TEST_LABELS --train TRAIN_LABELS --out labels.json \
        [--class-names background ...] [--segmenter SEG.pt --fake-images GEN_IMAGES --real-images TEST_IMAGES \
         --data-range -1 1]

Every folder holds integer NIfTI label maps; volumes use each file's own voxel size (its affine). Metrics:

- **volumes**: per foreground class the 1-D Wasserstein distance (mL) between the generated and the real volume
  distributions (``scipy.stats.wasserstein_distance``); multivariate: the Fréchet distance between Gaussians fitted
  to the per-class volume vectors (mL², as FID) and the sliced Wasserstein distance (mL; 256 seeded directions).
- **topology**: per class the mean number of connected components (26-connectivity) and the mean Euler
  characteristic (``skimage.measure.euler_number``, connectivity 3), generated vs real.
- **adjacency**: class pairs that touch (6-neighbourhood) in some generated map but in no real map (violations,
  with the fraction of generated maps showing them), and pairs that touch in every real map but in no generated one.
- **novelty**: for each generated map the mean foreground Dice to its nearest training map; the same for each real
  (test) map is the reference: a generator that copies its training set sits at 1, above test-vs-train. Maps above
  ``--copy-threshold`` are flagged as copies.
- **control**: where ``--fake`` has a run record of ``generate_labels`` (``labels_run.json``) with requested
  attributes, requested vs achieved volume (measured on the file): MAE in mL and Spearman's rho per attribute.
- **coherence** (``evaluation.coherence``): is each generated map one whole anatomy placed as the real ones are
  (large bodies, largest-body share, foreground-area runs along each axis, centroids, containment of one class in
  another)? The share of generated maps that break one of these against every real map, next to the same for each
  real map against the other real ones.
- **adherence** (optional, ``--segmenter``): a segmenter trained on real data (``evaluation/segmentation.py
  train``) segments each generated image; Dice against the map it was generated from, next to the same on real
  test pairs.

Maps of a model trained with a label table (sparse ids) are in the user's ids; the table recorded beside them
(``labels_run.json`` of ``generate_labels``, ``generation.json`` of ``generate --export-real``) reads them back
into classes, and names them where ``--class-names`` is not given.

A JSON report with every number and a Markdown table next to it (``evaluation.report``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dataset import DataError
from dataset.cli import ArgumentParser, check_unique, finite_float, float_in, run_cli
from dataset.dice import mean_dice
from dataset.files import check_output_files, read_run_record
from dataset.label_table import LabelTable, load_class_ids, recorded_label_table
from evaluation.cli_common import HelpFormatter
from evaluation.coherence import summary as coherence_summary
from evaluation.nifti_io import list_nifti
from evaluation.report import header, report_paths, write_report

logger = logging.getLogger(__name__)

RUN_RECORD = "labels_run.json"


@dataclass
class LabelMap:
    """One label map: integer (D, H, W) array and its voxel volume in mL."""

    id: str
    label: np.ndarray
    voxel_ml: float


def load_maps(folder: Path, num_classes: int, table: LabelTable | None = None) -> list[LabelMap]:
    """Every NIfTI label map in ``folder``: class ids checked against ``num_classes``, or the user's ids read
    through ``table`` (the label table recorded beside the maps: generated maps are in those ids)."""
    maps = []
    for stem, path in list_nifti(Path(folder)).items():
        label, affine = load_class_ids(path, num_classes, table)
        maps.append(LabelMap(stem, label.astype(np.int64), float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0))
    return maps


# ---------------------------------------------------------------------- per-map measurements
def class_volumes(label: np.ndarray, voxel_ml: float, num_classes: int) -> np.ndarray:
    """(K - 1,) volume in mL of each foreground class."""
    return np.bincount(label.ravel(), minlength=num_classes)[1:num_classes].astype(np.float64) * voxel_ml


def topology(label: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(components, Euler characteristic), each (K - 1,), of every foreground class (26-connectivity)."""
    from scipy import ndimage
    from skimage.measure import euler_number

    structure = np.ones((3, 3, 3), dtype=bool)
    comps, euler = [], []
    for c in range(1, num_classes):
        mask = label == c
        comps.append(ndimage.label(mask, structure=structure)[1])
        euler.append(euler_number(mask, connectivity=3) if mask.any() else 0)
    return np.asarray(comps, dtype=np.float64), np.asarray(euler, dtype=np.float64)


def adjacent_pairs(label: np.ndarray) -> set[tuple[int, int]]:
    """Class pairs (a < b, background included) with face-adjacent voxels (6-neighbourhood)."""
    pairs: set[tuple[int, int]] = set()
    for axis in range(label.ndim):
        a = np.moveaxis(label, axis, 0)
        x, y = a[:-1].ravel(), a[1:].ravel()
        diff = x != y
        lo, hi = np.minimum(x[diff], y[diff]), np.maximum(x[diff], y[diff])
        pairs |= {(int(p), int(q)) for p, q in set(zip(lo.tolist(), hi.tolist()))}
    return pairs


def nearest_dice(queries: list[LabelMap], train: list[LabelMap], num_classes: int) -> list[tuple[float, str]]:
    """For each query map, (Dice to its nearest training map, that map's id); maps of another shape are skipped."""
    out = []
    for q in queries:
        best = (-1.0, "")
        for t in train:
            if t.label.shape == q.label.shape:
                best = max(best, (mean_dice(torch.from_numpy(q.label), torch.from_numpy(t.label), num_classes), t.id))
        if best[0] < 0:
            raise DataError(f"{q.id}: no training map has its shape {q.label.shape}")
        out.append(best)
    return out


# ---------------------------------------------------------------------- set distances
def volume_distances(fake: np.ndarray, real: np.ndarray, names: list[str], seed: int = 0) -> dict:
    """Distances between volume sets (N, K-1) and (M, K-1) in mL: per-class W1, Fréchet, sliced W1."""
    from scipy.stats import wasserstein_distance

    from evaluation.frechet import frechet_distance

    per_class = {n: float(wasserstein_distance(fake[:, i], real[:, i])) for i, n in enumerate(names)}
    out: dict = {"wasserstein_ml": per_class, "wasserstein_ml_mean": float(np.mean(list(per_class.values())))}
    if len(fake) >= 2 and len(real) >= 2:
        cf, cr = np.atleast_2d(np.cov(fake, rowvar=False)), np.atleast_2d(np.cov(real, rowvar=False))
        out["frechet_ml2"] = max(0.0, frechet_distance(fake.mean(0), cf, real.mean(0), cr))
    else:
        out["frechet_ml2"] = None
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((256, fake.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    out["sliced_wasserstein_ml"] = float(
        np.mean([wasserstein_distance(fake @ d, real @ d) for d in dirs])
    )  # fmt: skip
    out["mean_volume_ml"] = {
        n: {"fake": float(fake[:, i].mean()), "real": float(real[:, i].mean())} for i, n in enumerate(names)
    }
    return out


def topology_summary(fake: list[LabelMap], real: list[LabelMap], names: list[str], k: int) -> dict:
    """Mean components and Euler characteristic per class, generated vs real, and their absolute differences."""
    tf = [topology(m.label, k) for m in fake]
    tr = [topology(m.label, k) for m in real]
    cf, ef = np.mean([t[0] for t in tf], 0), np.mean([t[1] for t in tf], 0)
    cr, er = np.mean([t[0] for t in tr], 0), np.mean([t[1] for t in tr], 0)
    per = {
        n: {"components_fake": cf[i], "components_real": cr[i], "euler_fake": ef[i], "euler_real": er[i]}
        for i, n in enumerate(names)
    }
    return {
        "per_class": {n: {kk: float(v) for kk, v in d.items()} for n, d in per.items()},
        "components_abs_diff_mean": float(np.abs(cf - cr).mean()),
        "euler_abs_diff_mean": float(np.abs(ef - er).mean()),
    }


def adjacency_summary(fake: list[LabelMap], real: list[LabelMap], all_names: list[str]) -> dict:
    """Pairs touching in generated but never in real maps (violations), and pairs always touching in real maps
    but never in generated ones (missing)."""
    pf = [adjacent_pairs(m.label) for m in fake]
    pr = [adjacent_pairs(m.label) for m in real]
    real_any = set().union(*pr) if pr else set()
    real_all = set.intersection(*pr) if pr else set()
    fake_any = set().union(*pf) if pf else set()

    def name(p: tuple[int, int]) -> str:
        return f"{all_names[p[0]]}|{all_names[p[1]]}"

    violations = {name(p): float(np.mean([p in s for s in pf])) for p in sorted(fake_any - real_any)}
    missing = [name(p) for p in sorted(real_all - fake_any)]
    return {
        "violations": violations,
        "maps_with_violation": float(np.mean([bool(s - real_any) for s in pf])) if pf else 0.0,
        "missing": missing,
    }


def control_summary(record: dict | None, fake: list[LabelMap], names: list[str], k: int) -> dict | None:
    """Requested vs achieved volume per attribute (achieved measured on the files), from a generate_labels record."""
    from scipy.stats import spearmanr

    if not record or not record.get("maps"):
        return None
    by_id = {m.id: m for m in fake}
    pairs: dict[str, list[tuple[float, float]]] = {}
    for entry in record["maps"]:
        m = by_id.get(str(entry.get("id")))
        if m is None:
            continue
        vols = dict(zip(names, class_volumes(m.label, m.voxel_ml, k)))
        for attr, value in (entry.get("requested") or {}).items():
            if attr in vols:
                pairs.setdefault(attr, []).append((float(value), float(vols[attr])))
    if not pairs:
        return {"n_conditioned": 0}
    out: dict = {"per_attribute": {}}
    errors = []
    for attr, pv in pairs.items():
        req, ach = np.array(pv).T
        err = np.abs(req - ach)
        errors += err.tolist()
        rho = None
        if len(req) >= 3 and np.ptp(req) > 0 and np.ptp(ach) > 0:
            rho = float(spearmanr(req, ach).statistic)
        out["per_attribute"][attr] = {"n": len(req), "mae_ml": float(err.mean()), "spearman": rho}
    out["mae_ml"] = float(np.mean(errors))
    out["n_conditioned"] = len(errors)
    return out


def adherence(args: argparse.Namespace, names: list[str], table: LabelTable | None = None) -> dict | None:
    """Dice of a real-trained segmenter on generated images vs their maps, and on real test pairs.

    The maps are read through ``table`` (their ids are the user's), the segmenter predicts class ids 0..K-1.
    """
    if args.segmenter is None:
        return None
    from evaluation.dice import summarise_dice
    from evaluation.intensity import IntensityRange
    from evaluation.segmenter import dice_of_cases, load_cases, load_checkpoint

    net, cfg, info = load_checkpoint(args.segmenter)
    window = tuple(info["window"])
    # clipped voxels are counted and reported; a volume entirely outside the range is refused (IntensityRange)
    rng = IntensityRange(*args.data_range, clip=True, source="the command line (--data-range)")
    out: dict = {"segmenter": args.segmenter.name}
    fake_cases = load_cases(args.fake_images, args.fake, len(names), rng, table)
    out["fake"] = summarise_dice(dice_of_cases(net, fake_cases, window, len(names)), names)
    if args.real_images is not None:
        real_cases = load_cases(args.real_images, args.real, len(names), rng, table)
        out["real"] = summarise_dice(dice_of_cases(net, real_cases, window, len(names)), names)
    out["intensity"] = rng.describe()
    if rng.clipped_voxels:
        logger.warning("adherence: %d voxel(s) outside --data-range were clipped (see the report)", rng.clipped_voxels)
    return out


def check_adherence_options(args: argparse.Namespace) -> None:
    """``--segmenter`` needs ``--fake-images`` and ``--data-range``: checked before anything is computed."""
    if args.segmenter is not None and (args.fake_images is None or args.data_range is None):
        raise ValueError("--segmenter needs --fake-images and --data-range LO HI")
    if args.segmenter is None and (args.fake_images is not None or args.real_images is not None):
        raise ValueError("--fake-images and --real-images are used only with --segmenter")


# ---------------------------------------------------------------------- report
def evaluate(
    fake: list[LabelMap],
    real: list[LabelMap],
    train: list[LabelMap],
    class_names: list[str],
    record: dict | None = None,
    copy_threshold: float = 0.95,
) -> dict:
    """All set-level metrics (everything but adherence) as a plain dict."""
    k = len(class_names)
    if not fake or not real:
        raise ValueError("need at least one generated and one real label map")
    names = class_names[1:]
    vf = np.stack([class_volumes(m.label, m.voxel_ml, k) for m in fake])
    vr = np.stack([class_volumes(m.label, m.voxel_ml, k) for m in real])
    result = {
        "n_fake": len(fake),
        "n_real": len(real),
        "n_train": len(train),
        "volumes": volume_distances(vf, vr, names),
        "topology": topology_summary(fake, real, names, k),
        "adjacency": adjacency_summary(fake, real, class_names),
        "coherence": coherence_summary([(m.id, m.label) for m in fake], [(m.id, m.label) for m in real], class_names),
    }
    if train:
        nf, nr = nearest_dice(fake, train, k), nearest_dice(real, train, k)
        result["novelty"] = {
            "copy_threshold": copy_threshold,
            "fake_to_train": {"mean": float(np.mean([d for d, _ in nf])), "max": float(max(d for d, _ in nf))},
            "real_to_train": {"mean": float(np.mean([d for d, _ in nr])), "max": float(max(d for d, _ in nr))},
            "copies": [{"id": m.id, "nearest": t, "dice": d} for m, (d, t) in zip(fake, nf) if d >= copy_threshold],
            "per_map": {m.id: {"nearest": t, "dice": d} for m, (d, t) in zip(fake, nf)},
        }
    result["control"] = control_summary(record, fake, names, k)
    return result


def markdown(report: dict) -> str:
    """The mask-quality table."""
    r = report["results"]
    v, t, a = r["volumes"], r["topology"], r["adjacency"]
    fr = "n/a" if v["frechet_ml2"] is None else f"{v['frechet_ml2']:.4g}"
    lines = [
        "## Label-map quality (generated vs real)",
        "",
        f"{r['n_fake']} generated, {r['n_real']} real, {r['n_train']} training maps.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| volume W1, mean over classes (mL) | {v['wasserstein_ml_mean']:.4g} |",
        f"| volume Fréchet (mL²) | {fr} |",
        f"| volume sliced W1 (mL) | {v['sliced_wasserstein_ml']:.4g} |",
        f"| components, mean abs. diff per class | {t['components_abs_diff_mean']:.3g} |",
        f"| Euler characteristic, mean abs. diff per class | {t['euler_abs_diff_mean']:.3g} |",
        f"| maps with an adjacency violation | {a['maps_with_violation']:.2f} |",
        f"| adjacency pairs missing | {len(a['missing'])} |",
    ]
    co = r["coherence"]
    loo = "n/a" if co["real_leave_one_out_share"] is None else f"{co['real_leave_one_out_share']:.2f}"
    lines.append(f"| incoherent maps: generated / real (leave one out) | {co['incoherent_share']:.2f} / {loo} |")
    if "novelty" in r:
        n = r["novelty"]
        lines += [
            f"| Dice to nearest training map: generated (mean / max) | "
            f"{n['fake_to_train']['mean']:.3f} / {n['fake_to_train']['max']:.3f} |",
            f"| Dice to nearest training map: real test (mean / max) | "
            f"{n['real_to_train']['mean']:.3f} / {n['real_to_train']['max']:.3f} |",
            f"| copies (Dice >= {n['copy_threshold']}) | {len(n['copies'])} |",
        ]
    c = r.get("control")
    if c and c.get("n_conditioned"):
        rhos = [x["spearman"] for x in c["per_attribute"].values() if x["spearman"] is not None]
        rho = f"{np.mean(rhos):.3f}" if rhos else "n/a"
        lines.append(f"| control: volume MAE (mL) / mean Spearman | {c['mae_ml']:.4g} / {rho} |")
    ad = r.get("adherence")
    if ad:
        real = f"{ad['real']['mean']:.3f}" if "real" in ad else "n/a"
        lines.append(
            f"| adherence: segmenter Dice on generated pairs / real test pairs | {ad['fake']['mean']:.3f} / {real} |"
        )
    lines += ["", "Per class (mL): " + ", ".join(
        f"{n} W1 {w:.3g} (mean fake {v['mean_volume_ml'][n]['fake']:.4g}, real {v['mean_volume_ml'][n]['real']:.4g})"
        for n, w in v["wasserstein_ml"].items()
    )]  # fmt: skip
    if co["incoherent"]:
        lines.append("Incoherent generated maps: " + "; ".join(
            f"{i} ({', '.join(co['per_map'][i])})" for i in co["incoherent"]))  # fmt: skip
    if a["violations"]:
        lines.append("Adjacency violations (fraction of generated maps): " + ", ".join(
            f"{p} {f:.2f}" for p, f in a["violations"].items()))  # fmt: skip
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--fake", required=True, type=Path, help="generated label maps (folder)")
    p.add_argument("--real", required=True, type=Path, help="real (test) label maps (folder)")
    p.add_argument("--train", type=Path, default=None, help="training label maps (folder), for novelty")
    p.add_argument("--out", required=True, type=Path, help="JSON report (Markdown next to it)")
    p.add_argument("--class-names", nargs="+", default=None, help="K names, background first (default: from the "
                   "run record in --fake)")  # fmt: skip
    p.add_argument(
        "--copy-threshold",
        type=float_in(0, 1, lo_open=True),
        default=0.95,
        help="Dice to a training map that flags a copy",
    )
    p.add_argument("--segmenter", type=Path, default=None, help="real-trained segmenter (segmentation.py train)")
    p.add_argument("--fake-images", type=Path, default=None, help="images generated from the --fake maps")
    p.add_argument("--real-images", type=Path, default=None, help="real test images of the --real maps")
    p.add_argument("--data-range", nargs=2, type=finite_float, default=None, help="image intensity range LO HI")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report of ours")
    p.add_argument("--log-level", default="info", help="logging level")
    return p


def command(args: argparse.Namespace, argv: list[str]) -> dict:
    json_path, md_path = report_paths(args.out)
    check_output_files(
        [json_path, md_path], args.overwrite, ours=lambda _p: read_run_record(json_path) is not None
    )  # fmt: skip
    check_adherence_options(args)
    record = read_run_record(args.fake / RUN_RECORD) if (args.fake / RUN_RECORD).is_file() else None
    # the maps' ids: a label table recorded beside them (generate_labels, generate --export-real), else class ids
    table = recorded_label_table(args.fake, args.real, args.train)
    names = (
        args.class_names
        or (record or {}).get("class_names")
        or (list(table.class_names) if table is not None else None)
    )
    if not names:
        raise ValueError(f"--class-names is needed: {args.fake} has no {RUN_RECORD} naming the classes")
    names = check_unique([str(n) for n in names], "--class-names")
    if len(names) < 2:
        raise ValueError("--class-names needs background and at least one class")
    if not 0.0 < args.copy_threshold <= 1.0:
        raise ValueError(f"--copy-threshold must be in (0, 1], got {args.copy_threshold}")
    k = len(names)
    if table is not None and table.label_nc != k:
        raise ValueError(f"--class-names gives {k} classes, the recorded label table {table.label_nc}")
    fake, real = load_maps(args.fake, k, table), load_maps(args.real, k, table)
    train = load_maps(args.train, k, table) if args.train is not None else []
    results = evaluate(fake, real, train, names, record, args.copy_threshold)
    results["adherence"] = adherence(args, names, table)
    report = {
        **header("label_metrics", argv),
        # as the user typed them (reports are shared: no resolved absolute paths)
        "inputs": {"fake": str(args.fake), "real": str(args.real), "train": str(args.train) if args.train else None},
        "class_names": names,
        "results": results,
    }
    write_report(args.out, report, markdown(report))
    logger.info("wrote %s and %s", json_path, md_path)
    return report


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
