"""Stage 1: train the 3D VQ-GAN.  ``python train/train_vqgan.py [overrides]`` or ``python -m train.train_vqgan``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from train.run import train


@hydra.main(version_base="1.3", config_path="../config", config_name="vqgan")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose ``config/vqgan.yaml`` with the command-line overrides and train."""
    train(cfg)


if __name__ == "__main__":
    main()
