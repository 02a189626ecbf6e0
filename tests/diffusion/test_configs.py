"""Every config/model/diffusion*.yaml composes and instantiates a LatentDiffusionModule (keys = constructor args)."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

from diffusion.module import LatentDiffusionModule
from tests.diffusion.helpers import IMAGE, LABEL_NC
from tests.train.helpers import compose_config
from train.run import CONFIG_DIR

MODEL_DIR = CONFIG_DIR / "model"
CONFIGS = sorted(p.stem for p in MODEL_DIR.glob("diffusion*.yaml"))


def test_all_expected_configs_exist() -> None:
    expected = {"diffusion", "diffusion_tiny", "diffusion_rflow", "diffusion_rflow_tiny", "diffusion_monai_spade"}
    assert expected <= set(CONFIGS)


def test_first_stage_ckpt_is_mandatory() -> None:
    cfg = compose_config("diffusion", [f"+dataset.label_nc={LABEL_NC}", "+dataset.block_size=null"], MODEL_DIR)
    assert cfg._get_node("first_stage_ckpt")._is_missing()


@pytest.mark.parametrize("name", CONFIGS)
def test_config_instantiates(name: str, vq_ckpt: Path) -> None:
    overrides = [f"+dataset.label_nc={LABEL_NC}", f"+dataset.block_size=[{','.join(map(str, IMAGE))}]",
                 "+dataset.datamodule._target_=dataset.datamodule.VolumeDataModule",
                 f"first_stage_ckpt={vq_ckpt}"]  # fmt: skip
    if not name.endswith("_tiny"):
        overrides.append("denoiser_kwargs.dim=32")  # same keys, a smaller net: the test checks wiring, not size
    cfg = compose_config(name, overrides, MODEL_DIR)
    node = OmegaConf.to_container(cfg, resolve=True)
    node.pop("dataset")  # only there to resolve ${dataset.*}; in a run it is a sibling of model
    model = hydra.utils.instantiate(node, _convert_="all")
    assert isinstance(model, LatentDiffusionModule)
    assert model.hparams.sampler in model.schedule.samplers
    if "rflow" in name:  # the rectified-flow configs change the objective, not just the default sampler
        assert (model.hparams.objective, model.hparams.sampler) == ("rflow", "rflow")
    assert model.hparams.first_stage_hparams["embedding_dim"] == 4
    # the dataset config is recorded as plain data: its datamodule node (with _target_) is dropped, never called
    assert "datamodule" not in model.hparams.data_info
    assert model.hparams.data_info["label_nc"] == LABEL_NC
