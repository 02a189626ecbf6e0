"""Models, the Lightning ``Trainer`` and a dataset's training volumes, composed from the project's ``config/`` tree
(and the user's ``--config-dir`` on Hydra's search path, as the training entry points take it); nothing read from a
checkpoint names what is built (SPEC section 10)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scripts.bench.common import ModelSpec, size_str

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
# what every benchmark Trainer leaves out: no logger, no checkpoints, no validation, no progress bar
TRAINER_OVERRIDES = (
    "logger=none", "callbacks=none", "trainer.max_epochs=1", "trainer.max_steps=-1",
    "trainer.enable_progress_bar=false", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1", "+trainer.enable_checkpointing=false", "+trainer.enable_model_summary=false",
)  # fmt: skip


@dataclass(frozen=True)
class Data:
    """The dataset config the models are composed with: Hydra overrides, and the user's config folder."""

    overrides: tuple[str, ...] = ("dataset=mni152",)
    config_dir: str | None = None


EMBEDDED = Data()


@functools.cache
def compose_config(primary: str, overrides: tuple[str, ...] = (), config_dir: str | None = None) -> Any:
    """``config/<primary>.yaml`` with overrides, ``config_dir`` on the search path (cached: callers only read)."""
    from hydra import compose, initialize_config_dir

    search = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(primary, overrides=[*search, *overrides])


def build_trainer(device: torch.device, precision: str, root: Path, callbacks: Sequence[Any]) -> Any:
    """A ``pytorch_lightning.Trainer`` from ``config/trainer/{cpu,gpu}.yaml`` (one epoch, no logger, no checkpoints)
    with ``precision`` (e.g. ``32-true``, ``bf16-mixed``) and ``callbacks`` (the step timer), rooted at ``root``."""
    from train.run import build_trainer as trainer_of_config

    kind = ("trainer=gpu", f"trainer.devices=[{device.index or 0}]") if device.type == "cuda" else ("trainer=cpu",)
    overrides = (*kind, f"trainer.precision={precision}", f"paths.output_dir={root}", *TRAINER_OVERRIDES)
    return trainer_of_config(compose_config("vqgan", overrides).trainer, list(callbacks), [])


def build_vqgan(config: str, data: Data = EMBEDDED, **kwargs: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A VQGANModule from its config, with the GAN terms on from the first batch; returns it and the changes."""
    import hydra

    from vq_gan_3d.perceptual import default_vgg16_path

    cfg = compose_config("vqgan", (f"model={config}", *data.overrides), data.config_dir)
    changes: dict[str, Any] = {"discriminator_iter_start": 0}  # measure the full step (GAN on), not the warm-up
    if cfg.model.perceptual_weight > 0 and not cfg.model.perceptual_random_weights:
        if not default_vgg16_path().is_file():  # same cost; the pretrained VGG16 file is not on this machine
            changes["perceptual_random_weights"] = True
    changes.update(kwargs)
    return hydra.utils.instantiate(cfg.model, _convert_="all", **changes), changes


def build_diffusion(
    config: str, first_stage: str, block: Sequence[int], data: Data = EMBEDDED, label_nc: int | None = None,
    **kwargs: Any,
) -> tuple[torch.nn.Module, dict[str, Any]]:  # fmt: skip
    """A LatentDiffusionModule from its config on an *untrained* first stage built from a VQ-GAN config (the cost
    of a step does not depend on the weights). ``label_nc``: classes of both stages instead of the dataset's."""
    import hydra

    from diffusion.first_stage import architecture_hparams

    classes: dict[str, Any] = {} if label_nc is None else {"label_nc": label_nc}
    vq, _ = build_vqgan(first_stage, data, inference_only=True, **classes)
    if label_nc is not None:  # not the dataset's classes: its data_info (class names) does not apply
        kwargs = {"data_info": None, **classes, **kwargs}
    overrides = (f"model={config}", *data.overrides, "model.first_stage_ckpt=null")
    cfg = compose_config("diffusion", overrides, data.config_dir)
    changes: dict[str, Any] = {"block_size": list(block), "latent_stats_batches": 1, **kwargs}
    model = hydra.utils.instantiate(
        cfg.model, _convert_="all", first_stage_hparams=architecture_hparams(vq), **changes
    )
    return model, {**changes, "first_stage": f"{first_stage} (untrained)"}


def validity_error(model: torch.nn.Module, spec: ModelSpec, size: Sequence[int]) -> str | None:
    """Why ``size`` cannot be trained with ``model`` (None when it can), known before running: each axis a multiple
    of the latent factor and, for stage 2, of it times the denoiser's down-sampling (``size_multiple``)."""
    multiple = tuple(model.latent_factor)
    if spec.stage == "diffusion":
        multiple = tuple(f * m for f, m in zip(multiple, model.denoiser.size_multiple))
    if any(s % m for s, m in zip(size, multiple)):
        return f"image size {size_str(size)} is not a multiple of {size_str(multiple)}"
    return None


def describe(model: torch.nn.Module, spec: ModelSpec, size: Sequence[int]) -> dict[str, Any]:
    """The (E, d, h, w) latent of an image of ``size`` and the parameters a step updates (the VQ-GAN with its
    discriminators, or the denoiser), in millions."""
    stage2 = spec.stage == "diffusion"
    channels = model.first_stage.embedding_dim if stage2 else model.embedding_dim
    params = sum(p.numel() for p in (model.denoiser if stage2 else model).parameters())
    latent = [int(channels), *(int(s) // int(f) for s, f in zip(size, model.latent_factor))]
    return {"latent": size_str(latent), "params_m": round(params / 1e6, 3)}


def fit_random_statistics(model: torch.nn.Module, block: Sequence[int], seed: int = 0) -> torch.nn.Module:
    """Latent statistics of an untrained stage-2 model from one random volume through its first stage, so that
    sampling runs (time and memory do not depend on the weights)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.latent_norm.fit_std([model.first_stage.encode(torch.rand((1, 1, *block), generator=gen) * 2 - 1)])
    return model


def class_table_data(dataset: str, config_dir: str | None, table: str) -> Data:
    """``dataset=<dataset>`` as configured (``table``), or ``raw``: no label table, every raw id (up to the
    table's largest) a one-hot channel, used or not. DataError when the dataset config has no label table."""
    from dataset.contract import DataError
    from dataset.label_table import resolve_label_table

    data = Data((f"dataset={dataset}",), config_dir)
    found = resolve_label_table(compose_config("vqgan", data.overrides, config_dir).dataset.get("label_table"))
    if table == "table":
        return data
    if found is None:
        raise DataError(f"--dataset {dataset}: its config has no label_table (scripts/inspect_dataset.py writes one)")
    raw_nc = max(found.remap) + 1
    names = ",".join(["background", *[f"id_{k}" for k in range(1, raw_nc)]])
    return Data((*data.overrides, "dataset.label_table=null", f"dataset.label_nc={raw_nc}",
                 f"dataset.class_names=[{names}]"), config_dir)  # fmt: skip


def dataset_samples(data: Data) -> list[dict[str, Any]]:
    """Every training sample of the dataset config (loaded once: the timed steps read no files)."""
    import hydra

    datamodule = hydra.utils.instantiate(compose_config("vqgan", data.overrides, data.config_dir).dataset.datamodule,
                                         _convert_="all")  # fmt: skip
    datamodule.setup("fit")
    ds = datamodule.train_dataloader().dataset
    return [ds[i] for i in range(len(ds))]
