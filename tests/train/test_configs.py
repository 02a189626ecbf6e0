"""Every primary config and every experiment composes; the objects they name instantiate."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

from tests.train.helpers import compose_config
from train.run import CONFIG_DIR, ConfigError, resolve_resume_path, validate_config

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml"))


def _compose(primary: str, overrides: list[str], tmp_path: Path):
    return compose_config(primary, [*overrides, f"paths.output_dir={tmp_path}/out", f"paths.data_dir={tmp_path}/data"])


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_model_instantiates(name: str, tmp_path: Path) -> None:
    # experiment name -> (primary config, the checkpoint of an earlier stage it cannot run without)
    primary, needs = ("diffusion", "first_stage_ckpt") if "diffusion" in name else ("vqgan", None)
    if "labels_ae" in name:
        primary, needs = "label_ae", None
    elif "labels_diffusion" in name:
        primary, needs = "label_diffusion", "label_ae_ckpt"
    elif "distill" in name:
        primary, needs = "distill", "teacher_ckpt"
    cfg = _compose(primary, [f"experiment={name}"], tmp_path)
    assert cfg.trainer.default_root_dir == f"{tmp_path}/out"
    if needs:
        # The earlier stage's checkpoint is mandatory: the config must refuse to run without it.
        with pytest.raises(ConfigError, match=needs):
            validate_config(cfg)
    else:
        validate_config(cfg)
        model = hydra.utils.instantiate(cfg.model, _convert_="all")
        assert model.label_nc == cfg.dataset.label_nc or model.hparams.get("decoder") == "normal"


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_configs_have_the_contract_keys(name: str, tmp_path: Path) -> None:
    cfg = _compose("vqgan", [f"dataset={name}"], tmp_path)
    ds = cfg.dataset
    for key in ("name", "modality", "label_nc", "class_names", "voxel_size", "block_size", "intensity", "datamodule"):
        assert key in ds, f"config/dataset/{name}.yaml lacks {key}"
    assert len(ds.class_names) == ds.label_nc
    assert ds.modality in ("ct", "mr")
    assert ds.datamodule.label_nc == ds.label_nc
    assert "/" not in str(OmegaConf.to_container(ds, resolve=False).get("root", ""))[:1]  # never absolute


def test_basic_overrides_reach_the_objects(tmp_path: Path) -> None:
    cfg = _compose(
        "vqgan", ["dataset=synthetic", "trainer.max_steps=7", "trainer.accelerator=cpu", "seed=11"], tmp_path
    )
    assert (cfg.dataset.name, cfg.trainer.max_steps, cfg.trainer.accelerator, cfg.seed) == ("synthetic", 7, "cpu", 11)
    for node in cfg.logger.values():
        assert str(node.save_dir).startswith(f"{tmp_path}/out")
    assert str(cfg.callbacks.model_checkpoint.dirpath).startswith(f"{tmp_path}/out")


def test_resume_path_resolution(tmp_path: Path) -> None:
    import os
    import time

    import torch

    assert resolve_resume_path("last", tmp_path) is None
    assert resolve_resume_path(None, tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}, "global_step": 1}, last)
    assert resolve_resume_path("last", tmp_path) == str(last)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    torch.save({"state_dict": {}, "global_step": 2}, hpc)
    os.utime(hpc, (time.time() + 10, time.time() + 10))  # the requeue checkpoint is newer: it wins
    assert resolve_resume_path("last", tmp_path) == str(hpc)


def test_bad_ckpt_path_is_reported_before_training(tmp_path: Path) -> None:
    cfg = _compose("vqgan", ["dataset=synthetic", f"ckpt_path={tmp_path}/nope.ckpt"], tmp_path)
    with pytest.raises(ConfigError, match="no such checkpoint"):
        validate_config(cfg)
