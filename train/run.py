"""The one training routine behind every entry point: compose → validate → instantiate → fit.

It holds no model logic: everything a run builds comes from a Hydra ``_target_`` node of the composed config (our
own YAML files and the command line, never a file a run reads), so a new model, dataset, logger or callback is a
new YAML file, not an ``if`` here. What makes a run safe to interrupt is added here, whatever the config says:
checkpoints are written atomically (:class:`train.checkpointing.AtomicCheckpointIO`), the RNG states are saved with
them (:class:`train.callbacks.ResumeRNGState`), and ``ckpt_path=last`` resumes from the newest checkpoint that
loads (:func:`train.checkpointing.find_resume_checkpoint`).

:func:`hydra_entry` builds the command-line entry points: a user error (bad value, missing file, bad data) prints
one line and exits with status 2; a traceback means a bug.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf

from dataset.contract import DataError
from train.callbacks import ResumeRNGState
from train.checkpointing import AtomicCheckpointIO, find_resume_checkpoint

log = logging.getLogger(__name__)

#: The project's config folder (``config/`` beside ``train/``).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


class ConfigError(ValueError):
    """The composed configuration cannot produce a run (reported before any training starts)."""


#: Exceptions that are the user's to fix (exit status 2, one line); anything else is a bug (traceback).
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataError, FileNotFoundError)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_values(cfg: DictConfig) -> None:
    """Type and range checks of the values a run needs, so a bad override fails here and not deep inside fit."""
    trainer = cfg.get("trainer") or {}
    for key, lowest in (("max_steps", -1), ("max_epochs", -1), ("accumulate_grad_batches", 1)):
        value = trainer.get(key)
        if value is not None and (not _is_int(value) or value < lowest):
            raise ConfigError(f"trainer.{key}={value!r}: expected an integer >= {lowest}")
    if not _is_int(cfg.get("seed", 0)):
        raise ConfigError(f"seed={cfg.get('seed')!r}: expected an integer")
    _check_finite(cfg)
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (not isinstance(clip, int | float) or isinstance(clip, bool) or clip < 0):
        raise ConfigError(f"trainer.gradient_clip_val={clip!r}: expected a number >= 0")
    _check_max_time(trainer.get("max_time"))
    model = cfg.get("model") or {}
    for key in ("lr", "learning_rate"):
        lr = model.get(key)
        if lr is not None and (not isinstance(lr, int | float) or isinstance(lr, bool) or lr <= 0):
            raise ConfigError(f"model.{key}={lr!r}: expected a number > 0")
    ds = cfg.get("dataset")
    if ds is None:
        return
    voxel = ds.get("voxel_size")
    if voxel is not None and (
        not isinstance(voxel, ListConfig)
        or len(voxel) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in voxel)
    ):
        raise ConfigError(f"dataset.voxel_size={_plain(voxel)}: expected 3 positive numbers [D, H, W] in mm")
    dm = ds.get("datamodule") or {}
    for key, lowest in (("batch_size", 1), ("num_workers", 0)):
        value = dm.get(key)
        if value is not None and (not _is_int(value) or value < lowest):
            raise ConfigError(f"dataset.datamodule.{key}={value!r}: expected an integer >= {lowest}")
    label_nc = ds.get("label_nc")
    if label_nc is not None and (not _is_int(label_nc) or label_nc < 2):
        raise ConfigError(f"dataset.label_nc={label_nc!r}: expected an integer >= 2 (classes including background)")
    names = ds.get("class_names")
    if label_nc is not None and isinstance(names, ListConfig) and len(names) != label_nc:
        raise ConfigError(f"dataset.label_nc={label_nc} but dataset.class_names has {len(names)} names")
    block = ds.get("block_size")
    if block is not None:
        if not isinstance(block, ListConfig) or len(block) != 3 or not all(_is_int(b) and b > 0 for b in block):
            raise ConfigError(f"dataset.block_size={_plain(block)}: expected 3 positive integers [D, H, W]")
        factor = (cfg.get("model") or {}).get("downsample")
        if isinstance(factor, ListConfig) and len(factor) == 3 and all(_is_int(f) and f > 0 for f in factor):
            if any(b % f for b, f in zip(block, factor)):
                raise ConfigError(
                    f"dataset.block_size={_plain(block)} is not divisible by model.downsample={_plain(factor)}"
                )


def _check_finite(node: object, key: str = "") -> None:
    """No NaN or inf anywhere in the composed config (a NaN learning rate trains NaN weights without a word)."""
    if isinstance(node, DictConfig):
        for k in node.keys():
            try:
                child = node[k]
            except Exception:  # unresolvable here (a ${hydra:...} interpolation): validate_config reports those
                continue
            _check_finite(child, f"{key}.{k}" if key else str(k))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            try:
                child = node[i]
            except Exception:
                continue
            _check_finite(child, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}={node}: not a finite number")


def _check_max_time(value: object) -> None:
    """``trainer.max_time``: ``DD:HH:MM:SS``, a dict of days/hours/minutes/seconds, or None."""
    if value is None or isinstance(value, DictConfig):
        return
    parts = str(value).split(":")
    if not isinstance(value, str) or len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise ConfigError(f"trainer.max_time={value!r}: expected DD:HH:MM:SS (e.g. 00:01:30:00)")


#: The training stage each entry point's config writes, and the checkpoints its model options name.
STAGE_OF_CONFIG = {
    "vqgan": "vqgan",
    "diffusion": "diffusion",
    "label_ae": "label_ae",
    "label_diffusion": "label_diffusion",
    "distill": "diffusion",  # the student's checkpoints are ordinary stage-2 checkpoints
}
STAGE_INPUTS = {
    "model.first_stage_ckpt": "vqgan",
    "model.label_ae_ckpt": "label_ae",
    "model.teacher_ckpt": "diffusion",
}


class LinkedRunFolder(BaseException):
    """The run folder Hydra is about to create and write its ``.hydra/`` files into is a symbolic link.

    Raised while Hydra resolves ``hydra.run.dir`` (:func:`checked_run_dir`), which is before it writes anything.
    A ``BaseException`` because OmegaConf and Hydra turn every ``Exception`` of a resolver into their own multi-line
    report; :func:`hydra_entry` prints this one as one line with exit status 2.
    """


def checked_run_dir(path: object) -> str:
    """Resolver ``med_lsdm_run_dir`` of ``config/hydra/default.yaml``: the run folder, refused when it is a link."""
    from dataset.files import check_not_link

    try:
        check_not_link(Path(str(path)), "paths.output_dir")
    except DataError as err:
        raise LinkedRunFolder(str(err)) from None
    return str(path)


OmegaConf.register_new_resolver("med_lsdm_run_dir", checked_run_dir, replace=True)


def check_checkpoints(cfg: DictConfig, config_name: str) -> None:
    """A run folder that is a symbolic link, or a ``ckpt_path`` (resume) or input checkpoint of the wrong stage.

    Raises:
        ConfigError: the file is unreadable or of another stage.
    """
    from dataset.cli import read_stage_checkpoint
    from dataset.files import check_not_link

    output_dir = OmegaConf.select(cfg, "paths.output_dir", default=None)
    if isinstance(output_dir, str):
        try:
            check_not_link(Path(output_dir), "paths.output_dir")
        except DataError as err:
            raise ConfigError(str(err)) from None
    checks = [("ckpt_path", cfg.get("ckpt_path"), STAGE_OF_CONFIG.get(config_name))]
    for key, stage in STAGE_INPUTS.items():
        checks.append((key, OmegaConf.select(cfg, key, default=None), stage))
    for key, path, stage in checks:
        if stage is None or path in (None, "last") or not isinstance(path, str) or not Path(path).is_file():
            continue
        try:
            read_stage_checkpoint(path, stage, what=key)
        except DataError as err:
            raise ConfigError(str(err)) from None


def _plain(value: object) -> object:
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


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
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"invalid configuration: {first}{hint}") from err
    ckpt = cfg.get("ckpt_path")
    if ckpt not in (None, "last") and not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path={ckpt}: no such checkpoint file")
    _check_values(cfg)


def check_overrides(config_name: str, overrides: list[str]) -> None:
    """Compose ``config/<config_name>.yaml`` with ``overrides`` and check its values, without running anything.

    For drivers (the demo) that pass overrides on to a training they start later: a bad override is refused
    before the driver claims its folder or trains the first stage.

    Raises:
        ConfigError: the overrides do not compose or give a bad value (one line).
    """
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    except HydraException as err:
        raise ConfigError(f"{config_name}: {' '.join(str(err).split())}") from None
    _check_values(cfg)


def check_machine(cfg: DictConfig) -> None:
    """Refuse a run this machine cannot do (a GPU trainer without a GPU), before anything is built.

    Separate from :func:`validate_config`: a GPU config is valid, it only cannot run here.
    """
    accelerator = str((cfg.get("trainer") or {}).get("accelerator", "auto")).lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator}: no CUDA GPU is available here (use trainer=cpu)")


def instantiate_nodes(node: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` child of a group node (callbacks, loggers); ``None`` gives an empty list."""
    if not node:
        return []
    return [
        hydra.utils.instantiate(child, _convert_="all") for child in node.values() if child and "_target_" in child
    ]


def resolve_resume_path(ckpt_path: str | None, output_dir: str | os.PathLike) -> str | None:
    """Map ``ckpt_path`` to a file to resume from.

    ``"last"`` picks the newest checkpoint of ``<output_dir>`` that loads: ``checkpoints/last.ckpt``, Lightning's
    Slurm requeue checkpoints ``hpc_ckpt_N.ckpt`` (written on SIGUSR1 before a requeue) or another
    ``checkpoints/*.ckpt``; an unreadable newer one is skipped with a warning
    (:func:`train.checkpointing.find_resume_checkpoint`). ``None`` when there is none yet, so the same command
    starts a run and resumes it.
    """
    if ckpt_path != "last":
        return ckpt_path
    return find_resume_checkpoint(output_dir)


def build_trainer(node: DictConfig, callbacks: list[pl.Callback], loggers: list[Any]) -> pl.Trainer:
    """The Trainer of ``node`` (``cfg.trainer``), always with the atomic checkpoint writer.

    Another ``CheckpointIO`` in the trainer config is refused: it would bring back in-place checkpoint writes.
    """
    plugins = list(hydra.utils.instantiate(node.get("plugins") or [], _convert_="all"))
    if any(isinstance(p, pl.plugins.io.CheckpointIO) and not isinstance(p, AtomicCheckpointIO) for p in plugins):
        raise ConfigError("trainer.plugins: only train.checkpointing.AtomicCheckpointIO may write checkpoints")
    if not any(isinstance(p, AtomicCheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return hydra.utils.instantiate(node, callbacks=callbacks, logger=loggers or False, plugins=plugins)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train the model described by ``cfg`` and return the final logged metrics (floats)."""
    validate_config(cfg)
    check_machine(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resume = resolve_resume_path(cfg.get("ckpt_path"), output_dir)  # before anything is built: it can refuse

    # a stage may wrap the dataset's data module in its own (``datamodule`` node, e.g. the distillation's pairs)
    node = cfg.get("datamodule") or cfg.dataset.datamodule
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(node, _convert_="all")
    model: pl.LightningModule = hydra.utils.instantiate(cfg.model, _convert_="all")
    # first: the RNG states of a checkpoint are back before any other callback sees the first resumed batch
    callbacks = [ResumeRNGState(), *instantiate_nodes(cfg.get("callbacks"))]
    loggers = instantiate_nodes(cfg.get("logger"))
    trainer = build_trainer(cfg.trainer, callbacks, loggers)

    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # the full composed config, per run

    if resume:
        log.info("resuming from %s", resume)
    trainer.fit(model=model, datamodule=datamodule, ckpt_path=resume)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for cb in callbacks:
        if isinstance(cb, pl.callbacks.ModelCheckpoint) and trainer.is_global_zero:
            log.info("best checkpoint: %s, last: %s", cb.best_model_path, cb.last_model_path)
    return metrics


def user_error(err: BaseException) -> BaseException | None:
    """The user error behind ``err`` (itself or a cause, e.g. inside Hydra's ``InstantiationException``), if any."""
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, USER_ERRORS):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def report_user_error(err: BaseException) -> None:
    """Print ``err`` as one line on stderr (what the user has to fix), for the entry points."""
    text = " ".join(str(err).split()) or type(err).__name__  # one line, whatever the message holds
    sys.stderr.write(f"error: {text}\n")


def hydra_entry(config_name: str, task: Callable[[DictConfig], object] = train) -> Callable[[], None]:
    """A command-line entry point: Hydra composes ``config/<config_name>.yaml`` with the overrides, then ``task``.

    User errors (:data:`USER_ERRORS`, also wrapped in another exception) and Hydra's own errors about the command
    line (unknown group option, unparsable override) exit with status 2 after one message; a bug keeps its
    traceback (Hydra's exit status 1).
    """
    started = False

    # the folder from this file, not relative: Hydra resolves a relative config_path against the task's module
    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    def _task(cfg: DictConfig) -> None:
        nonlocal started
        started = True
        try:
            check_checkpoints(cfg, config_name)
            task(cfg)
        except Exception as err:
            found = user_error(err)
            if found is None:
                raise
            report_user_error(found)
            raise SystemExit(2) from None

    def main() -> None:
        nonlocal started
        started = False
        try:
            _task()
        except SystemExit as exit_:
            if exit_.code == 1 and not started:  # Hydra refused the command line (and said why) before the task
                raise SystemExit(2) from None
            raise
        except LinkedRunFolder as err:  # before Hydra wrote into the folder
            report_user_error(err)
            raise SystemExit(2) from None
        except HydraException as err:  # the same refusal with HYDRA_FULL_ERROR=1, which re-raises it
            if started:
                raise
            report_user_error(err)
            raise SystemExit(2) from None

    main.__doc__ = f"Compose ``config/{config_name}.yaml`` with the command-line overrides and run {task.__name__}."
    return main
