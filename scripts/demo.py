"""The whole Med-LSDM pipeline on an embedded dataset (MNI152 MR or an abdominal CT), on the CPU, in one command.

    python scripts/demo.py [--dataset mni152|ct_abdomen] [--out runs/demo] [--vqgan-minutes 4]
        [--diffusion-minutes 5] [--diffusion-steps 1000] [--overwrite]

``--dataset`` picks the embedded dataset and its CPU experiments ``<dataset>_*_cpu`` (named mni152 below). With
``ct_abdomen`` images are exported and generated in HU, and figures use the dataset config's ``display_window``
(W400/L40 soft tissue). Without the package index, give ct_abdomen its source archive:
``--extra dataset.datamodule.dataset.source=FILE.tar.gz`` (see config/dataset/ct_abdomen.yaml).

Stages (each is the command a user would type, run as a subprocess and logged in the report):
  1. train the VQ-GAN            python -m train.train_vqgan experiment=mni152_vqgan_spade_cpu ...
  2. train the diffusion model   python -m train.train_diffusion experiment=mni152_diffusion_cpu
                                   model=diffusion_rflow_tiny ... (rectified flow; --objective ddpm: the paper's)
  3. export the held-out (test) subjects as NIfTI images and label maps
  4. generate from the test label maps   python -m scripts.generate --labels <test labels> ...
  5. evaluate                     python -m evaluation.compute_metrics --real ... --fake ... --labels ...
                                  python -m evaluation.class_intensity ... (per-class median, real vs synthetic)
  6. report: <out>/report/ with the metrics table (README.md, metrics.json), real | label | synthetic montages
     (PNG) and GIFs.
Labels stage (new label maps and pairs; ``--no-labels`` skips it). L1-L2 need only the data, so they run in a
background thread beside 1-2 (every training is single-threaded; a 2-core machine runs two at once), their output
in <out>/label_generator.log; L3-L5 follow 5:
  L1. train the label autoencoder   python -m train.train_label_ae experiment=mni152_labels_ae_cpu ...
  L2. train the label diffusion     python -m train.train_label_diffusion experiment=mni152_labels_diffusion_cpu ...
  L3. new pairs                     python -m scripts.generate_pairs ... --condition-from <test labels>
      (new maps asked for the volumes of the held-out subjects, then an image for each)
  L4. mask quality                  python -m evaluation.label_metrics --fake ... --real ... --train ...
  L5. a small utility experiment    python -m evaluation.utility ... --regimes 2 4 --seeds 0 1
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from dataset.cli import ArgumentParser, check_unique, float_in, nonnegative_int, positive_int, run_cli
from dataset.files import atomic_write_json, atomic_write_text, claim_run_folder
from evaluation.parallel import usable_cores

log = logging.getLogger("demo")
#: The demo's run record: marks its output folder as ours, so ``--overwrite`` never deletes anything else.
DEMO_RECORD = "demo.json"
MNI152_NOTE = ("mni152 subjects are deformations of one template, so novelty and utility measured here are a lower "
               "bound of what real, varied anatomy needs.")  # fmt: skip
#: The embedded datasets the demo runs (each has experiments ``<name>_*_cpu``) and the caveat of their subjects.
DATASET_NOTES = {
    "mni152": MNI152_NOTE,
    "ct_abdomen": "ct_abdomen subjects are deformations of one abdominal CT slab, so novelty and utility measured "
    "here are a lower bound of what real, varied anatomy needs.",
}


def build_parser() -> argparse.ArgumentParser:
    """The demo's options (numbers checked while parsing: ``dataset.cli``)."""
    minutes = float_in(0, None, lo_open=True)
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="everything goes under this folder")
    p.add_argument(
        "--dataset", choices=tuple(DATASET_NOTES), default="mni152", help="embedded dataset (experiments <name>_*_cpu)"
    )
    p.add_argument("--data-dir", type=Path, default=None, help="embedded dataset cache (default: <out>/data_cache)")
    p.add_argument("--vqgan-minutes", type=minutes, default=4.0, help="wall-clock training budget of stage 1")
    p.add_argument("--diffusion-minutes", type=minutes, default=5.0, help="wall-clock training budget of stage 2")
    p.add_argument(
        "--diffusion-steps",
        type=positive_int,
        default=1000,
        help="step cap of stage 2 (whichever of steps and minutes comes first), so that a fast CPU trains the same "
        "model as a slow one; with 16 training subjects the DDPM objective's validation sample PSNR peaked near 900 "
        "steps and then fell (rflow was still rising slowly at 1000)",
    )
    p.add_argument(
        "--decoder",
        choices=("spade", "normal"),
        default="spade",
        help="stage-1 decoder: spade (the label map also conditions decoding; the paper's best) or normal",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="intra-op threads per stage (on the 2-core CI machine one thread trains 2x faster than two)",
    )
    p.add_argument(
        "--objective",
        choices=("rflow", "ddpm"),
        default="rflow",
        help="stage-2 objective: rflow (rectified flow, 30 Euler steps; model=diffusion_rflow_tiny) or ddpm (the "
        "paper's, sampled with DDIM). At the demo budget rflow-30 reached SSIM 0.91 against 0.80 for DDIM-25 and 0.90 "
        "for 500 ancestral DDPM steps, 10x faster than the latter (README, Stage 2 samplers)",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="sampler steps (default: the checkpoint's, 30 for rflow, 25 for DDIM)",
    )
    p.add_argument(
        "--seg-steps", type=positive_int, default=150, help="training steps of each Dice-protocol segmenter"
    )
    p.add_argument("--metrics", default=None, help="metrics for compute_metrics (default: those whose weights exist)")
    p.add_argument("--extra", nargs="*", default=[], help="extra Hydra overrides for both training stages")
    p.add_argument("--no-labels", action="store_true", help="skip the labels stage (new label maps and pairs)")
    # the label autoencoder is the labels stage's bottleneck at this budget (it must learn every class before the
    # diffusion can place it), so it gets the larger share
    p.add_argument("--label-ae-minutes", type=minutes, default=1.5, help="training budget of the label autoencoder")
    p.add_argument("--label-diffusion-minutes", type=minutes, default=1.0, help="budget of the label diffusion")
    p.add_argument("--label-maps", type=positive_int, default=8, help="new (label, image) pairs generated")
    p.add_argument(
        "--utility-regimes", nargs="+", type=positive_int, default=[2, 4], help="real subjects per utility regime"
    )
    p.add_argument(
        "--utility-seeds", nargs="+", type=nonnegative_int, default=[0, 1], help="seeds of the utility experiment"
    )
    p.add_argument("--utility-steps", type=positive_int, default=40, help="segmenter steps in the utility experiment")
    p.add_argument(
        "--overwrite", action="store_true", help="replace what an earlier demo run wrote in --out (nothing else)"
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed options (a bad value: one line, exit status 2)."""
    return build_parser().parse_args(argv)


def max_time(minutes: float) -> str:
    """Lightning's ``trainer.max_time`` (DD:HH:MM:SS) of a budget in minutes."""
    total = max(1, int(round(minutes * 60)))
    return f"00:{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def best_checkpoint(folder: Path) -> Path:
    """The checkpoint with the best validation loss (``best-<step>.ckpt``), else ``last.ckpt``.

    A latent diffusion builds on the best reconstruction, since it cannot do better than its decoder. Stage 1: in
    the short demo budget the GAN phase, which starts at batch 500, did not beat the validation PSNR reached before
    it. The labels stage: with 16 training maps both the label autoencoder and the label diffusion overfit (their
    validation losses rise after a few hundred steps; the label diffusion's later steps give maps closer to the
    training maps than real held-out maps are), so the label diffusion takes the best autoencoder and generation
    the best label diffusion (README, Paired generation).
    """
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    return best[-1] if best else folder / "last.ckpt"


class StageFailed(RuntimeError):
    """A stage's subprocess exited non-zero: reported in one line by :func:`report_failure`, not a traceback."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def report_failure(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a driver's ``main``: a failed stage is one line (its own error is already above it) and its exit status."""

    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except StageFailed as err:
            log.error("%s", err)
            return err.code
        finally:  # a stage still running beside the failed one (or after SIGTERM) dies with the driver
            stop_children()

    return wrapped


#: Stage processes running now (the main stage and a background one), so the driver can stop them all.
_CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()


def stop_children(grace_s: float = 10.0) -> None:
    """Terminate every running stage (SIGTERM, then SIGKILL after ``grace_s``) and wait for it.

    A stage's own children (e.g. data-loader workers) share its process group, which is signalled as a whole.
    """
    with _CHILDREN_LOCK:
        children = list(_CHILDREN)
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def run(cmd: list[str], commands: list[str], output: Path | None = None) -> None:
    """Run one stage; its command line goes into the report so every number can be reproduced.

    ``output``: append the stage's stdout and stderr to this file instead of the console (a stage run beside
    another one, whose console output would interleave).
    """
    shown = shlex.join(cmd).replace(sys.executable, "python")
    commands.append(shown)
    log.info("$ %s%s", shown, f"  (output: {output})" if output else "")
    t0 = time.time()
    with contextlib.ExitStack() as stack:
        sink = None
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            sink = stack.enter_context(output.open("a"))
        # its own process group, so that stop_children() reaches the stage's children too
        child = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT if sink else None, start_new_session=True)
        with _CHILDREN_LOCK:
            _CHILDREN.add(child)
        try:
            code = child.wait()
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.discard(child)
    if code != 0:
        where = f"; its output is in {output}" if output else " (its own error is above)"
        raise StageFailed(f"stage failed with exit status {code}: {shown}{where}", code)
    log.info("stage finished in %.0f s: %s", time.time() - t0, shown.split(" ")[2])


def train_label_generator(
    out: Path,
    ae_minutes: float,
    diffusion_minutes: float,
    common: list[str],
    commands: list[str],
    output: Path | None = None,
    dataset: str = "mni152",
) -> None:
    """The label autoencoder, then the label diffusion on its best checkpoint, into ``out/label_{ae,diffusion}``.

    ``common``: Hydra overrides for both (data folder, extra settings); ``output`` as for :func:`run`; ``dataset``:
    the embedded dataset whose experiments ``<dataset>_labels_{ae,diffusion}_cpu`` run.
    """
    py = sys.executable
    run([py, "-m", "train.train_label_ae", f"experiment={dataset}_labels_ae_cpu",
         f"paths.output_dir={out / 'label_ae'}", f"trainer.max_time={max_time(ae_minutes)}", *common],
        commands, output)  # fmt: skip
    run([py, "-m", "train.train_label_diffusion", f"experiment={dataset}_labels_diffusion_cpu",
         f"model.label_ae_ckpt={best_checkpoint(out / 'label_ae' / 'checkpoints')}",
         f"paths.output_dir={out / 'label_diffusion'}", f"trainer.max_time={max_time(diffusion_minutes)}",
         *common], commands, output)  # fmt: skip


class Background:
    """A function run in a thread beside the main stages; :meth:`wait` re-raises what it raised."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.error: BaseException | None = None

        def target() -> None:
            try:
                fn()
            except BaseException as err:  # handed to wait(), in the main thread
                self.error = err

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def wait(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


def dataset_config(data_dir: Path, dataset: str = "mni152") -> DictConfig:
    """The embedded dataset's config, as the training stages compose it."""
    from hydra import compose, initialize_config_dir

    config_dir = str(Path(__file__).resolve().parents[1] / "config")
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose("vqgan", overrides=[f"dataset={dataset}", f"paths.data_dir={data_dir}"])
    return cfg.dataset


def figure_window(dataset_cfg: DictConfig) -> tuple[float, float]:
    """Grey-level window of the demo's figures: the config's ``display_window``, else that of the exported units."""
    from dataset.visualization import display_window
    from diffusion.generation.pipeline import output_units

    if dataset_cfg.get("display_window") is not None:
        lo, hi = (float(v) for v in dataset_cfg.display_window)
        return lo, hi
    intensity = dataset_cfg.get("intensity")
    units = "data" if output_units(intensity)["units"] != "model" else "model"
    return display_window(intensity, units)


def export_split(dataset_cfg: DictConfig, out: Path, split: str) -> list[str]:
    """The split's real images and label maps as ``out/images`` and ``out/labels`` (what a user would have on
    disk), through the one exporter :func:`evaluation.export.export_split`; returns the ids."""
    from omegaconf import OmegaConf

    from dataset.registry import build_split, plain_data_info
    from evaluation.export import export_split as export

    # Built from the fixed dataset table, like generation's split=..., never by instantiating a config node.
    info = plain_data_info(OmegaConf.to_container(dataset_cfg, resolve=True))
    return export(build_split(info, split), split, out / "images", out / "labels", info.get("intensity"),
                  record={"command": "demo export"}, what="--out")  # fmt: skip


#: The demo's edit at 32^3 (voxels of about 5 x 5 x 6 mm): CSF grown by 6 mm and grey matter shrunk by 5 mm, about a
#: voxel each (the 2 mm / 1 mm of a 1 mm grid would change no voxel here, and an empty edit is refused).
DEMO_EDITS = ["--grow", "2:6", "--shrink", "3:5"]


def edit_stage(out: Path, stage2: Path, ids: list[str], test: Path, report: Path, commands: list[str]) -> list[str]:
    """``scripts/edit.py`` on the first test subject, ``evaluation.edit_metrics`` on all; the report's lines."""
    py = sys.executable
    first = [str(test / sub / f"{ids[0]}.nii.gz") for sub in ("images", "labels")]
    run([py, "-m", "scripts.edit", "--ckpt", str(stage2), "--image", first[0], "--labels", first[1], *DEMO_EDITS,
         "--out", str(out / "edit"), "--png"], commands)  # fmt: skip
    run([py, "-m", "evaluation.edit_metrics", "--ckpt", str(stage2), "--images", str(test / "images"), "--labels",
         str(test / "labels"), "--radii-mm", "15", "--structure", "2", "--seeds", "0", "--segmenter",
         str(out / "segmenter" / "real.pt"), *DEMO_EDITS, "--out", str(report / "edit.json")], commands)  # fmt: skip
    return [(report / "edit.md").read_text(), "",
            f"Edited test subject {ids[0]} ({' '.join(DEMO_EDITS)}; rows: original | edited | |difference| | label "
            "change):", "", "![edit](../edit/montage.png)", ""]  # fmt: skip


def available_metrics() -> str:
    """Image metrics always; LPIPS / FID / 3D-FID only when their pretrained weights are on this machine."""
    from evaluation.weights import INCEPTION, MEDICALNET50, VGG16, MissingWeightsError, resolve

    metrics = ["psnr", "rmse", "ssim", "ssim2d", "msssim"]
    for name, spec in (("lpips", VGG16), ("fid", INCEPTION), ("fid3d", MEDICALNET50)):
        try:
            resolve(spec, None)
        except MissingWeightsError as err:
            log.warning("skipping %s: %s", name, err)
        else:
            metrics.append(name)
    return ",".join(metrics)


def montages(
    out: Path,
    ids: list[str],
    label_nc: int,
    class_names: list[str] | None = None,
    window: tuple[float, float] = (-1.0, 1.0),
) -> list[str]:
    """Per-subject montages and GIFs, one summary figure and the training curves; returns the report's lines.

    ``window``: the grey-level window of every image (:func:`figure_window`).
    """
    import torch

    from dataset.nifti import load_image, load_label
    from dataset.visualization import Subject, save_gif, save_montage, save_summary_figure
    from train.curves import write_curves

    report = out / "report"
    subjects = []
    for vid in ids:
        real, affine = load_image(out / "data" / "test" / "images" / f"{vid}.nii.gz")
        label, _ = load_label(out / "data" / "test" / "labels" / f"{vid}.nii.gz")
        fake, _ = load_image(out / "synthetic" / f"{vid}_s0.nii.gz")
        rows = [
            ("real", torch.from_numpy(real)),
            ("label", torch.from_numpy(label)),
            ("synthetic", torch.from_numpy(fake)),
        ]
        save_montage(report / f"{vid}_montage.png", rows, num_slices=8, label_nc=label_nc, affine=affine,
                     class_names=class_names, window=window)  # fmt: skip
        for name, vol in (("real", real), ("synthetic", fake)):
            save_gif(report / f"{vid}_{name}.gif", torch.from_numpy(vol)[None], label=torch.from_numpy(label)[None],
                     affine=affine, window=window)  # fmt: skip
        subjects.append(Subject(vid, real, label, fake, affine))
    save_summary_figure(report / "summary.png", subjects, num_slices=6, label_nc=label_nc, class_names=class_names,
                        window=window)  # fmt: skip
    lines = ["## Summary (every test subject: real | label | synthetic)", "", "![summary](summary.png)", "",
             "## Training curves", ""]  # fmt: skip
    for stage in ("vqgan", "diffusion"):
        csv_log = out / stage / "csv" / "metrics.csv"
        if csv_log.is_file():
            pngs = write_curves(csv_log, report / stage, title=stage)
            lines += [f"![{stage} {png.stem}]({stage}/{png.name})" for png in pngs]
    return lines + [""]


def labels_stage(
    args: argparse.Namespace,
    out: Path,
    stage2: Path,
    class_names: list[str],
    commands: list[str],
    data_range: tuple[float, float] = (-1.0, 1.0),
    window: tuple[float, float] = (-1.0, 1.0),
) -> tuple[list[str], list[str]]:
    """The labels stage after its training (:func:`train_label_generator`): new pairs, mask quality, utility.

    ``data_range``: the intensity range of the exported and generated images (HU for CT); ``window``: the figures'.

    Returns:
        (Markdown tables, Markdown lines of the (label | image) montages) for the report.
    """
    py = sys.executable
    test, train, report = out / "data" / "test", out / "data" / "train", out / "report"
    pairs = out / "pairs"
    # new maps asked for the class volumes of the held-out subjects (varied requests: the control check), no repair
    run([py, "-m", "scripts.generate_pairs", "--label-ckpt",
         str(best_checkpoint(out / "label_diffusion" / "checkpoints")), "--image-ckpt", str(stage2),
         "--num-samples", str(args.label_maps), "--out", str(pairs), "--seed", "0", "--batch-size", "4",
         "--condition-from", str(test / "labels")], commands)  # fmt: skip
    run([py, "-m", "evaluation.label_metrics", "--fake", str(pairs / "labels"), "--real", str(test / "labels"),
         "--train", str(train / "labels"), "--segmenter", str(out / "segmenter" / "real.pt"), "--fake-images",
         str(pairs / "images"), "--real-images", str(test / "images"), "--data-range", *map(str, data_range),
         "--out", str(report / "labels.json")], commands)  # fmt: skip
    run([py, "-m", "evaluation.utility", "--train-images", str(train / "images"), "--train-labels",
         str(train / "labels"), "--test-images", str(test / "images"), "--test-labels", str(test / "labels"),
         "--synth-images", str(out / "synthetic_train"), "--new-images", str(pairs / "images"), "--new-labels",
         str(pairs / "labels"), "--class-names", *class_names, "--data-range", *map(str, data_range),
         "--regimes", *map(str, args.utility_regimes), "--seeds", *map(str, args.utility_seeds),
         "--steps", str(args.utility_steps), "--jobs", str(usable_cores()),
         "--out", str(report / "utility.json")], commands)  # fmt: skip
    tables = [(report / f"{name}.md").read_text() for name in ("labels", "utility")]
    note = DATASET_NOTES[getattr(args, "dataset", "mni152")]
    montage_lines = ["", "## New (label | image) pairs (rows: generated label map | its synthetic image)", "",
                     note, "", *pair_montages(pairs, report, class_names, window=window)]  # fmt: skip
    return [*tables, note + "\n"], montage_lines


def pair_montages(
    pairs: Path, report: Path, class_names: list[str], count: int = 4, window: tuple[float, float] = (-1.0, 1.0)
) -> list[str]:
    """(label | image) montages of the first ``count`` generated pairs in ``pairs/{labels,images}``.

    Returns:
        the report's Markdown lines, one image each.
    """
    import torch

    from dataset.nifti import load_image, load_label
    from dataset.visualization import save_montage

    shown = []
    for path in sorted((pairs / "labels").glob("*.nii.gz"))[:count]:
        vid = path.name[: -len(".nii.gz")]
        label, affine = load_label(path)
        image, _ = load_image(pairs / "images" / f"{vid}_s0.nii.gz")
        rows = [("new label", torch.from_numpy(label)), ("synthetic", torch.from_numpy(image))]
        save_montage(report / f"pair_{vid}_montage.png", rows, num_slices=8, label_nc=len(class_names),
                     affine=affine, class_names=class_names, window=window)  # fmt: skip
        shown.append(f"![{vid}](pair_{vid}_montage.png)")
    return shown


#: Everything the demo writes in ``--out`` (its record lists these; ``--overwrite`` replaces exactly them).
DEMO_ENTRIES = ("data_cache", "vqgan", "diffusion", "data", "synthetic", "synthetic_train", "report", "segmenter",
                "label_ae", "label_diffusion", "label_generator.log", "pairs")  # fmt: skip


def command(args: argparse.Namespace, argv: list[str]) -> int:
    """Check every option (the Hydra overrides of ``--extra`` included), claim ``--out``, run the stages."""
    from train.run import check_overrides

    check_unique(args.utility_seeds, "--utility-seeds")
    check_unique(args.utility_regimes, "--utility-regimes")
    vqgan_experiment = f"experiment={'mni152_vqgan_spade_cpu' if args.decoder == 'spade' else 'mni152_vqgan_cpu'}"
    check_overrides("vqgan", [vqgan_experiment, *args.extra])
    check_overrides("diffusion", ["experiment=mni152_diffusion_cpu", *args.extra])
    with claim_run_folder(args.out, args.overwrite, DEMO_RECORD, "scripts/demo.py", DEMO_ENTRIES, {"argv": argv}):
        return run_stages(args)


@report_failure
def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 on success, 2 (one line) on a user error, a failed stage's exit status otherwise."""
    return run_cli(build_parser(), command, argv, log_format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_stages(args: argparse.Namespace) -> int:
    """The stages, in the claimed ``args.out`` (see the module docstring)."""
    out: Path = args.out
    data_dir = args.data_dir or out / "data_cache"
    py = sys.executable
    # Every stage is a subprocess and inherits the thread count (torch reads OMP_NUM_THREADS at start-up).
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    vqgan_experiment = f"experiment={args.dataset}_{'vqgan_spade' if args.decoder == 'spade' else 'vqgan'}_cpu"
    commands: list[str] = []
    t0 = time.time()

    # 1-2. the two training stages, through the real entry points. The label generator (L1-L2) needs only the
    # data, so it trains beside them: each training is single-threaded, and this machine has two cores.
    common = [f"paths.data_dir={data_dir}", *args.extra]
    label_commands: list[str] = []
    # the embedded dataset is built once, under a file lock, by whichever training comes first
    label_training = None if args.no_labels else Background(
        lambda: train_label_generator(out, args.label_ae_minutes, args.label_diffusion_minutes, common,
                                      label_commands, out / "label_generator.log", args.dataset)
    )  # fmt: skip
    run(
        [
            py,
            "-m",
            "train.train_vqgan",
            vqgan_experiment,
            f"paths.output_dir={out / 'vqgan'}",
            f"trainer.max_time={max_time(args.vqgan_minutes)}",
            *common,
        ],
        commands,
    )
    stage1 = best_checkpoint(out / "vqgan" / "checkpoints")
    stage2_model = ["model=diffusion_rflow_tiny"] if args.objective == "rflow" else []
    run(
        [
            py,
            "-m",
            "train.train_diffusion",
            f"experiment={args.dataset}_diffusion_cpu",
            *stage2_model,
            f"model.first_stage_ckpt={stage1}",
            f"paths.output_dir={out / 'diffusion'}",
            f"trainer.max_time={max_time(args.diffusion_minutes)}",
            f"trainer.max_steps={args.diffusion_steps}",
            *common,
        ],
        commands,
    )
    stage2 = out / "diffusion" / "checkpoints" / "last.ckpt"

    # 3. the training and held-out subjects as files (what a user would have on disk)
    from diffusion.generation.pipeline import output_units

    dataset_cfg = dataset_config(data_dir, args.dataset)
    class_names = [str(c) for c in dataset_cfg.class_names]
    data_range = tuple(output_units(dataset_cfg.get("intensity"))["data_range"])
    window = figure_window(dataset_cfg)
    ids = export_split(dataset_cfg, out / "data" / "test", "test")
    train_ids = export_split(dataset_cfg, out / "data" / "train", "train")
    log.info("exported %d test and %d training subjects to %s", len(ids), len(train_ids), out / "data")
    test, train = out / "data" / "test", out / "data" / "train"

    # 4. generation from the held-out label maps (and from the training label maps, for the augmentation test)
    # sampler and steps: the checkpoint's own (sampler, sample_steps of diffusion_rflow_tiny or diffusion_tiny)
    steps = ["--steps", str(args.steps)] if args.steps else []
    gen_opts = [*steps, "--seed", "0", "--batch-size", "4"]
    for split_dir, dest in ((test, "synthetic"), (train, "synthetic_train")):
        labels = str(split_dir / "labels")
        run([py, "-m", "scripts.generate", "--ckpt", str(stage2), "--labels", labels, "--out", str(out / dest),
             *gen_opts], commands)  # fmt: skip

    # 5. evaluation: image metrics + privacy audit, then the Dice protocol and the augmentation experiment
    metrics = (args.metrics or available_metrics()) + ",privacy"
    report = out / "report"
    # every folder's range is read from its run record (evaluation needs a stated or recorded range, never a default)
    run(
        [
            py,
            "-m",
            "evaluation.compute_metrics",
            "--real",
            str(test / "images"),
            "--fake",
            str(out / "synthetic"),
            "--labels",
            str(test / "labels"),
            "--train",
            str(train / "images"),
            "--metrics",
            metrics,
            "--out",
            str(report / "metrics.json"),
        ],
        commands,
    )
    run([py, "-m", "evaluation.class_intensity", "--real", str(test / "images"), "--fake", str(out / "synthetic"),
         "--labels", str(test / "labels"), "--class-names", *class_names,
         "--out", str(report / "class_intensity.json")], commands)  # fmt: skip
    seg = ["--num-classes", str(len(class_names)), "--steps", str(args.seg_steps), "--seed", "0"]
    run(
        [
            py,
            "-m",
            "evaluation.segmentation",
            "train",
            "--images",
            str(train / "images"),
            "--labels",
            str(train / "labels"),
            *seg,
            "--out",
            str(out / "segmenter" / "real.pt"),
        ],
        commands,
    )
    run(
        [
            py,
            "-m",
            "evaluation.segmentation",
            "evaluate",
            "--model",
            str(out / "segmenter" / "real.pt"),
            "--labels",
            str(test / "labels"),
            "--real",
            str(test / "images"),
            "--fake",
            str(out / "synthetic"),
            "--class-names",
            *class_names,
            "--out",
            str(report / "dice.json"),
        ],
        commands,
    )
    run(
        [
            py,
            "-m",
            "evaluation.segmentation",
            "augment",
            "--train-images",
            str(train / "images"),
            "--train-labels",
            str(train / "labels"),
            "--synth-images",
            str(out / "synthetic_train"),
            "--synth-labels",
            str(train / "labels"),
            "--test-images",
            str(test / "images"),
            "--test-labels",
            str(test / "labels"),
            "--class-names",
            *class_names,
            *seg,
            "--out",
            str(report / "augment.json"),
        ],
        commands,
    )

    # 5a. edit a real scan (mni152): one test subject with CSF grown and grey matter shrunk, an atrophy-like change;
    # then the edit metrics on every test subject (in-region fidelity against both baselines, segmenter adherence)
    edit_lines = edit_stage(out, stage2, ids, test, report, commands) if args.dataset == "mni152" else []

    # 5b. the labels stage: new label maps and their images
    label_tables, pair_lines = [], []
    if label_training is not None:
        label_training.wait()
        commands += label_commands
        label_tables, pair_lines = labels_stage(args, out, stage2, class_names, commands, data_range, window)

    # 6. report
    figure_lines = montages(out, ids, label_nc=len(class_names), class_names=list(class_names), window=window)
    tables = [(report / f"{name}.md").read_text() for name in ("metrics", "class_intensity", "dice", "augment")]
    tables += edit_lines + label_tables
    elapsed = time.time() - t0
    lines = [
        f"# Med-LSDM demo report (embedded {args.dataset} dataset, CPU)",
        "",
        f"Total wall time: {elapsed / 60:.1f} min. Test subjects: {len(ids)}, training subjects: {len(train_ids)}.",
        "",
        *tables,
        "",
        *figure_lines,
        "## Commands",
        "",
        "```",
        *commands,
        "```",
        "",
        "## Montages (rows: real | label | synthetic)",
        "",
    ]
    lines += [f"![{vid}]({vid}_montage.png)" for vid in ids]
    lines += pair_lines
    atomic_write_text(report / "README.md", "\n".join(lines) + "\n")
    atomic_write_json(report / "run.json", {"seconds": elapsed, "commands": commands, "ids": ids})
    log.info("done in %.1f min: report in %s", elapsed / 60, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
