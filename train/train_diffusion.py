"""Stage 2: train the semantic latent diffusion model on a frozen VQ-GAN.

``python train/train_diffusion.py model.first_stage_ckpt=PATH [overrides]`` or ``python -m train.train_diffusion``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from train.run import train


@hydra.main(version_base="1.3", config_path="../config", config_name="diffusion")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose ``config/diffusion.yaml`` with the command-line overrides and train."""
    train(cfg)


if __name__ == "__main__":
    main()
