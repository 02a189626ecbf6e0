"""The one training routine behind both entry points: compose → validate → instantiate → fit.

It holds no model logic: everything a run builds comes from a Hydra ``_target_`` node, so a new model, dataset,
logger or callback is a new YAML file, not an ``if`` here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """The composed configuration cannot produce a run (reported before any training starts)."""


def validate_config(cfg: DictConfig) -> None:
    """Fail fast on configuration errors: unresolved mandatory keys (``???``), bad interpolations, bad resume paths.

    Raises:
        ConfigError: naming the key and what to pass on the command line.
    """
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as err:  # omegaconf raises several error types; all mean "this config is unusable"
        key = getattr(err, "full_key", None)
        hint = f" (set it on the command line: {key}=...)" if key else ""
        raise ConfigError(f"invalid configuration: {err}{hint}") from err
    ckpt = cfg.get("ckpt_path")
    if ckpt not in (None, "last") and not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path={ckpt}: no such checkpoint file")


def instantiate_nodes(node: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` child of a group node (callbacks, loggers); ``None`` gives an empty list."""
    if not node:
        return []
    return [
        hydra.utils.instantiate(child, _convert_="all") for child in node.values() if child and "_target_" in child
    ]


def resolve_resume_path(ckpt_path: str | None, output_dir: str | os.PathLike) -> str | None:
    """Map ``ckpt_path`` to a file to resume from.

    ``"last"`` picks the newest of ``<output_dir>/checkpoints/last.ckpt`` and Lightning's Slurm requeue checkpoints
    ``<output_dir>/hpc_ckpt_N.ckpt`` (written on SIGUSR1 before a requeue); ``None`` when there is none yet, so the
    same command starts a run and resumes it.
    """
    if ckpt_path != "last":
        return ckpt_path
    out = Path(output_dir)
    candidates = [p for p in [out / "checkpoints" / "last.ckpt", *out.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    if not candidates:
        return None
    return str(max(candidates, key=lambda p: p.stat().st_mtime))


def train(cfg: DictConfig) -> dict[str, float]:
    """Train the model described by ``cfg`` and return the final logged metrics (floats)."""
    validate_config(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.dataset.datamodule, _convert_="all")
    model: pl.LightningModule = hydra.utils.instantiate(cfg.model, _convert_="all")
    callbacks = instantiate_nodes(cfg.get("callbacks"))
    loggers = instantiate_nodes(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # the full composed config, per run

    resume = resolve_resume_path(cfg.get("ckpt_path"), output_dir)
    if resume:
        log.info("resuming from %s", resume)
    trainer.fit(model=model, datamodule=datamodule, ckpt_path=resume)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for cb in callbacks:
        if isinstance(cb, pl.callbacks.ModelCheckpoint) and trainer.is_global_zero:
            log.info("best checkpoint: %s, last: %s", cb.best_model_path, cb.last_model_path)
    return metrics
