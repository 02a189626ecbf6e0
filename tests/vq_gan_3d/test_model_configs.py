"""config/model/vq_gan_*.yaml: composed configs are constructor arguments, paper values, tiny configs run.

The variants inherit from vq_gan_3d.yaml through Hydra defaults lists, so they are composed, not loaded.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.train.helpers import compose_config
from train.run import CONFIG_DIR
from vq_gan_3d.module import VQGANModule

MODEL_DIR = CONFIG_DIR / "model"
NAMES = ["vq_gan_3d", "vq_gan_spade", "vq_gan_3d_tiny", "vq_gan_spade_tiny"]


def _model_cfg(name: str, label_nc: int = 5):
    cfg = compose_config(name, [f"+dataset.label_nc={label_nc}"], MODEL_DIR)
    return OmegaConf.create({"dataset": cfg.dataset, "model": {k: v for k, v in cfg.items() if k != "dataset"}}).model


@pytest.mark.parametrize("name", NAMES)
def test_keys_are_constructor_arguments(name: str) -> None:
    cfg = _model_cfg(name)
    assert cfg._target_ == "vq_gan_3d.module.VQGANModule"
    params = set(inspect.signature(VQGANModule.__init__).parameters) - {"self"}
    assert set(cfg) - {"_target_"} <= params  # nothing unknown (test_config_composition checks every model config)
    assert cfg.label_nc == 5  # interpolated from the dataset group


@pytest.mark.parametrize(
    ("name", "decoder", "start"), [("vq_gan_3d", "normal", 10000), ("vq_gan_spade", "spade", 1000)]
)
def test_paper_settings(name: str, decoder: str, start: int) -> None:
    cfg = _model_cfg(name)
    expected = {
        "decoder": decoder, "n_hiddens": 16, "embedding_dim": 8, "n_codes": 16384, "downsample": [4, 4, 4],
        "l1_weight": 4.0, "perceptual_weight": 4.0, "gan_feat_weight": 4.0, "image_gan_weight": 1.0,
        "volume_gan_weight": 1.0, "lr": 3e-4, "betas": [0.5, 0.9], "discriminator_iter_start": start,
        "gradient_clip_val": 1.0, "disc_loss_type": "hinge", "commitment_cost": 0.25, "ema_decay": 0.99,
        "spade_hidden": 128, "disc_channels": 64, "disc_layers": 3,
    }  # fmt: skip
    assert {k: OmegaConf.to_object(cfg)[k] for k in expected} == expected


@pytest.mark.parametrize("name", ["vq_gan_3d_tiny", "vq_gan_spade_tiny"])
def test_tiny_configs_instantiate_and_reconstruct_32cubed(name: str) -> None:
    model = instantiate(_model_cfg(name, label_nc=5), _convert_="all")
    assert isinstance(model, VQGANModule) and isinstance(model.hparams.downsample, list)
    x = torch.rand(1, 1, 32, 32, 32) * 2 - 1
    seg = None
    if model.decoder_type == "spade":
        seg = torch.nn.functional.one_hot(torch.randint(0, 5, (1, 32, 32, 32)), 5).movedim(-1, 1).float()
    z = model.encode(x)
    assert z.shape == (1, model.embedding_dim, 8, 8, 8)
    assert model.decode(z, seg).shape == x.shape
