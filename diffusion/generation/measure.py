"""Measurements of the sampling path: per-step cost of guided sampling, generation cost per voxel, seam strength.

    python -m diffusion.generation.measure step      # per-step time, today's path vs cached vs shared, paper widths
    python -m diffusion.generation.measure scaling   # time per voxel and seams, single block vs 64x128x128

Both use untrained, seeded networks (timing and seams of the tiling do not depend on training) and CPU time of one
thread, so a loaded machine disturbs them less than wall time; the variants alternate in one process.

Seam metric (:func:`seam_ratio`): along each tiled axis, the mean squared difference between neighbouring image
planes that straddle a window border, divided by the same over all other neighbouring planes. 1.0: the borders
are invisible; a visible seam raises it above 1. Borders are those of the denoising windows (in image voxels).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from diffusion.sampling import window_starts

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


def border_planes(size: int, window: int, overlap: float, factor: int) -> list[int]:
    """Image indices p such that planes p-1 | p straddle a denoising-window edge along one axis (latent units x f)."""
    if window >= size:
        return []
    edges = set()
    for s in window_starts(size, window, overlap):
        edges.update((s * factor, (s + window) * factor))
    return sorted(e for e in edges if 0 < e < size * factor)


def seam_ratio(image: torch.Tensor, borders: Sequence[Sequence[int]]) -> float | None:
    """Gradient energy across window borders / elsewhere (see the module docstring); None without borders.

    Args:
        image: (D, H, W) volume.
        borders: per axis, plane indices p whose difference ``x[p] - x[p-1]`` crosses a border.
    """
    across, inside = [], []
    for axis, planes in enumerate(borders):
        if not planes:
            continue
        diff = image.double().diff(dim=axis) ** 2  # index p-1 holds x[p] - x[p-1]
        energy = diff.mean(dim=[a for a in range(3) if a != axis])
        mask = torch.zeros(energy.numel(), dtype=torch.bool)
        mask[[p - 1 for p in planes]] = True
        across.append(energy[mask])
        inside.append(energy[~mask])
    if not across:
        return None
    return float(torch.cat(across).mean() / torch.cat(inside).mean())


def _cpu_time(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def _compose(name: str, overrides: Sequence[str] = ()) -> dict:
    """Our own ``config/model/<name>.yaml``, composed by Hydra, as constructor arguments (no ``_target_``)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "config" / "model"), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides))
    node = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in node.items() if not k.startswith("_") and k != "dataset"}


def _tiny_model(label_nc: int, block: Sequence[int], seed: int = 0):  # noqa: ANN202 (Lightning imported lazily)
    """The CPU demo's stage 2 (``config/model/diffusion_tiny`` on ``vq_gan_3d_tiny``), untrained and seeded."""
    from diffusion.module import LatentDiffusionModule
    from vq_gan_3d.module import VQGANModule

    torch.manual_seed(seed)
    vq_args = _compose("vq_gan_3d_tiny", [f"+dataset.label_nc={label_nc}"])
    vq = VQGANModule(**{**vq_args, "label_nc": label_nc, "inference_only": True})
    args = _compose("diffusion_tiny", [f"+dataset.label_nc={label_nc}", "+dataset.block_size=null",
                                       "first_stage_ckpt=null"])  # fmt: skip
    args.update(label_nc=label_nc, block_size=list(block), first_stage_hparams=vq.first_stage_state()["hparams"],
                data_info=None, latent_norm="none")  # fmt: skip
    return LatentDiffusionModule(**args).eval()


def measure_scaling(
    block: Sequence[int] = (32, 32, 32),
    volume: Sequence[int] = (64, 128, 128),
    steps: int = 10,
    overlap: float = 0.5,
    label_nc: int = 5,
) -> dict:
    """CPU time per voxel of generating a single block vs a larger volume, both window modes, with seam ratios."""
    from diffusion import sampling

    torch.set_num_threads(1)
    model = _tiny_model(label_nc, block)
    settings = model.sampler_defaults.resolve("ddim", steps)
    factor = model.latent_factor
    g = torch.Generator().manual_seed(0)
    results: dict = {
        "block_size": list(block),
        "volume": list(volume),
        "steps": steps,
        "overlap": overlap,
        "sampler": "ddim",
        "guidance": settings.guidance,
        "model": "diffusion_tiny + vq_gan_3d_tiny",
    }

    # piecewise-constant label maps: nested boxes, so seams are not hidden by label edges everywhere
    def labels_for(shape: Sequence[int]) -> torch.Tensor:
        lab = torch.zeros((1, *shape), dtype=torch.long)
        for k in range(1, label_nc):
            sl = tuple(slice(int(s * k / (2 * label_nc)), int(s * (1 - k / (2 * label_nc)))) for s in shape)
            lab[(0, *sl)] = k
        return lab

    def run(shape: Sequence[int], mode: str) -> tuple[float, torch.Tensor]:
        lab = labels_for(shape)
        gens = [torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))]
        out: list[torch.Tensor] = []
        t = _cpu_time(lambda: out.append(model.sample_images(lab, gens, settings, train_window=block,
                                                             window_mode=mode, overlap=overlap)))  # fmt: skip
        return t, out[0][0, 0]

    with torch.no_grad():
        run(block, "auto")  # warm-up
        t_block = min(run(block, "auto")[0] for _ in range(2))
        vox_block = float(torch.tensor(block).prod())
        results["single_block_s"] = t_block
        vox = float(torch.tensor(volume).prod())
        latent = [v // f for v, f in zip(volume, factor)]
        train_latent = [b // f for b, f in zip(block, factor)]
        images, borders = {}, {}
        for mode in ("block", "auto"):
            t, images[mode] = run(volume, mode)
            window = sampling.denoise_window(latent, train_latent, mode, multiple=model.denoiser.size_multiple)
            borders[mode] = [border_planes(s, w, overlap, f) for s, w, f in zip(latent, window, factor)]
            results[mode] = {
                "seconds": t,
                "per_voxel_vs_block": (t / vox) / (t_block / vox_block),
                "denoise_window_latent": list(window),
                "windows": len(sampling.windows(tuple(latent), tuple(window), overlap)),
            }
        for mode in ("block", "auto"):  # each result at its own borders and at the other mode's
            results[mode]["seam_ratio"] = {f"at_{m}_borders": seam_ratio(images[mode], borders[m]) for m in borders}
    return results


def measure_step(steps: int = 12, label_nc: int = 37) -> dict:
    """CPU time per guided step at 32x64x64 (latent 8x16x16), paper-width ``Unet3D_SPADE``, guidance 2.5.

    ``today``: both branches as one batch of 2, SPADE recomputed every step; ``cache``: the same batch with SPADE
    scales and shifts cached (bit-identical to today); ``new``: :class:`~diffusion.guidance.GuidedDenoiser` as it
    samples now (cache plus one pass of the label-free encoder for both branches).
    """
    import yaml

    from diffusion.denoiser_factory import build_denoiser
    from diffusion.guidance import GuidedDenoiser
    from diffusion.sampling import spade_cache

    torch.set_num_threads(1)
    torch.manual_seed(0)
    kw = yaml.safe_load((REPO / "config/model/denoiser/unet3d_spade.yaml").read_text())["denoiser_kwargs"]
    net = build_denoiser("unet3d_spade", 8, label_nc, (4, 4, 4), kw).eval()
    labels = torch.randint(0, label_nc, (1, 32, 64, 64), generator=torch.Generator().manual_seed(0))
    seg = torch.nn.functional.one_hot(labels, label_nc).movedim(-1, 1).float()
    guided = GuidedDenoiser(net, seg, 2.5)
    x, t = torch.randn(1, 8, 8, 16, 16), torch.tensor([250])

    def batch_of_two(features: torch.Tensor) -> torch.Tensor:
        c, u = net(torch.cat((x, x)), torch.cat((t, t)), label_features=features).chunk(2)
        return u + 2.5 * (c - u)

    fns = {
        "today": lambda: batch_of_two(torch.cat((guided.cond, guided.uncond))),  # a new tensor: never cached
        "cache": lambda: batch_of_two(guided.both),
        "new": lambda: guided(x, t),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad(), spade_cache(net):
        ref = fns["today"]()
        fns["cache"](), fns["new"]()  # the first calls fill the cache (once per window and run)
        out = {"cache_bit_identical_to_today": bool(torch.equal(fns["cache"](), ref)),
               "new_max_abs_diff_to_today": float((fns["new"]() - ref).abs().max())}  # fmt: skip
        for i in range(steps):
            names = list(fns)[i % 3 :] + list(fns)[: i % 3]  # rotate the order: no variant always runs first
            for name in names:
                times[name].append(_cpu_time(fns[name]))
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    out.update({f"{k}_s_per_step": med[k] for k in fns})
    out.update({f"{k}_vs_today": med[k] / med["today"] for k in ("cache", "new")})
    out["steps"] = steps
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("scaling", "step"))
    p.add_argument("--steps", type=int, default=None, help="sampler steps (scaling: 10) or timed steps (step: 12)")
    args = p.parse_args(argv)
    if args.what == "scaling":
        result = measure_scaling(steps=args.steps or 10)
    else:
        result = measure_step(args.steps or 12)
    sys.stdout.write(json.dumps(result, indent=1) + "\n")  # the result is the program's output, not a log line
    return 0


if __name__ == "__main__":
    sys.exit(main())
