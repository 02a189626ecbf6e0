"""Models and the Lightning ``Trainer``, composed from the project's own ``config/`` tree (never from a file read
at run time: what is built is named by our configs, SPEC section 10)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scripts.bench.common import ModelSpec, size_str

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
# what every benchmark Trainer leaves out: no logger, no checkpoints, no validation, no progress bar
TRAINER_OVERRIDES = (
    "logger=none",
    "callbacks=none",
    "trainer.max_epochs=1",
    "trainer.max_steps=-1",
    "trainer.enable_progress_bar=false",
    "trainer.limit_val_batches=0",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
)


@functools.cache
def compose_config(primary: str, overrides: tuple[str, ...] = ()) -> Any:
    """Compose ``config/<primary>.yaml`` with Hydra overrides (cached: callers only read the result)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(primary, overrides=list(overrides))


def compose_model_config(primary: str, model: str, overrides: tuple[str, ...] = ()) -> Any:
    """``config/<primary>.yaml`` with ``model=<model>`` and the embedded mni152 dataset (label_nc 5)."""
    return compose_config(primary, (f"model={model}", "dataset=mni152", *overrides))


def trainer_overrides(device: torch.device, precision: str, root: Path) -> tuple[str, ...]:
    """Hydra overrides selecting ``config/trainer/{cpu,gpu}.yaml`` for one fit of a benchmark."""
    return (
        f"trainer={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"trainer.precision={precision}",
        f"paths.output_dir={root}",
        *TRAINER_OVERRIDES,
    )


def build_trainer(device: torch.device, precision: str, root: Path, callbacks: Sequence[Any]) -> Any:
    """A ``pytorch_lightning.Trainer`` from ``config/trainer`` (one epoch, no logger, no checkpoints).

    Args:
        device: CPU, or a CUDA device (its index becomes ``devices``).
        precision: Lightning precision, e.g. ``32-true``, ``bf16-mixed``.
        root: ``default_root_dir`` (nothing is written there with logging and checkpoints off).
        callbacks: Lightning callbacks (the step timer).
    """
    import hydra

    cfg = compose_config("vqgan", trainer_overrides(device, precision, root))
    extra: dict[str, Any] = {"enable_checkpointing": False, "enable_model_summary": False}
    if device.type == "cuda":
        extra["devices"] = [device.index or 0]
    return hydra.utils.instantiate(cfg.trainer, callbacks=list(callbacks), logger=False, **extra)


def vgg_weights_missing() -> bool:
    """True when the pretrained VGG16 file for LPIPS is not on this machine."""
    from vq_gan_3d.perceptual import default_vgg16_path

    return not default_vgg16_path().is_file()


def build_vqgan(config: str, **kwargs: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A VQGANModule from its config, with the GAN terms on from the first batch; returns it and the changes."""
    import hydra

    cfg = compose_model_config("vqgan", config)
    changes: dict[str, Any] = {"discriminator_iter_start": 0}  # measure the full step (GAN on), not the warm-up
    if cfg.model.perceptual_weight > 0 and not cfg.model.perceptual_random_weights and vgg_weights_missing():
        changes["perceptual_random_weights"] = True  # same cost; the pretrained VGG16 file is not on this machine
    changes.update(kwargs)
    return hydra.utils.instantiate(cfg.model, _convert_="all", **changes), changes


def build_diffusion(
    config: str, first_stage: str, block: Sequence[int], label_nc: int | None = None, **kwargs: Any
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A LatentDiffusionModule from its config on an *untrained* first stage built from a VQ-GAN config.

    ``label_nc``: classes of both stages (default: the embedded dataset's, 5).
    """
    import hydra

    from diffusion.first_stage import architecture_hparams

    classes: dict[str, Any] = {} if label_nc is None else {"label_nc": label_nc}
    vq, _ = build_vqgan(first_stage, inference_only=True, **classes)
    if label_nc is not None:  # not the embedded dataset's classes: its data_info (class names) does not apply
        kwargs = {"data_info": None, **classes, **kwargs}
    cfg = compose_model_config("diffusion", config, ("model.first_stage_ckpt=null",))
    changes: dict[str, Any] = {"block_size": list(block), "latent_stats_batches": 1, **kwargs}
    model = hydra.utils.instantiate(
        cfg.model, _convert_="all", first_stage_hparams=architecture_hparams(vq), **changes
    )
    changes["first_stage"] = f"{first_stage} (untrained)"
    return model, changes


def build_model(
    spec: ModelSpec, size: Sequence[int], compile: bool = False, seed: int = 0, **kwargs: Any
) -> tuple[torch.nn.Module, dict]:
    """The model of ``spec`` with seeded weights (a fast path and its fp32 baseline start from the same ones)."""
    torch.manual_seed(seed)
    if spec.stage == "vqgan":
        return build_vqgan(spec.config, **kwargs)
    return build_diffusion(spec.config, spec.first_stage or "vq_gan_3d_tiny", size, compile=compile, **kwargs)


def validity_error(model: torch.nn.Module, spec: ModelSpec, size: Sequence[int]) -> str | None:
    """Why ``size`` cannot be trained with ``model`` (None when it can), known before running."""
    factor = tuple(model.latent_factor)
    if any(s % f for s, f in zip(size, factor)):
        return f"image size {size_str(size)} is not divisible by the latent factor {size_str(factor)}"
    if spec.stage == "diffusion":
        latent = [s // f for s, f in zip(size, factor)]
        mults = model.hparams.denoiser_kwargs.get("dim_mults", [1])
        div = 2 ** (len(mults) - 1)
        axes = latent if model.hparams.denoiser == "monai_spade" else latent[1:]
        if any(a % div for a in axes):
            return f"latent {size_str(latent)}: the downsampled axes must be divisible by {div} (dim_mults {mults})"
    return None


def trainable_params(model: torch.nn.Module, spec: ModelSpec) -> int:
    """Parameters a step updates: the VQ-GAN with its discriminators, or the diffusion model's denoiser."""
    if spec.stage == "diffusion":
        return sum(p.numel() for p in model.denoiser.parameters())
    return sum(p.numel() for p in model.parameters())


def latent_shape(spec: ModelSpec, model: torch.nn.Module, size: Sequence[int]) -> list[int]:
    """(E, d, h, w) latent of an image of ``size``."""
    factor = model.latent_factor
    channels = model.first_stage.embedding_dim if spec.stage == "diffusion" else model.embedding_dim
    return [int(channels), *(int(s) // int(f) for s, f in zip(size, factor))]


def fit_random_statistics(model: torch.nn.Module, block: Sequence[int], seed: int = 0) -> None:
    """Latent statistics of a stage-2 model from one random volume through its (untrained) first stage.

    For time and memory measurements of sampling on random weights: nothing trains the model, so nothing else
    measures them.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = torch.rand((1, 1, *block), generator=gen) * 2 - 1
        model.latent_norm.fit_std([model.first_stage.encode(x)])
