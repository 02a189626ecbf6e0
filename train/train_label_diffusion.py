"""Labels stage, part 2: train the label latent diffusion on a frozen label autoencoder.

``python train/train_label_diffusion.py model.label_ae_ckpt=PATH [overrides]`` or
``python -m train.train_label_diffusion``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from train.run import train


@hydra.main(version_base="1.3", config_path="../config", config_name="label_diffusion")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose ``config/label_diffusion.yaml`` with the command-line overrides and train."""
    train(cfg)


if __name__ == "__main__":
    main()
