"""Labels stage, part 1: train the label autoencoder (one-hot label map -> KL latent -> class logits).

``python train/train_label_ae.py experiment=mni152_labels_ae_cpu [overrides]`` or ``python -m train.train_label_ae``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from train.run import train


@hydra.main(version_base="1.3", config_path="../config", config_name="label_ae")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose ``config/label_ae.yaml`` with the command-line overrides and train."""
    train(cfg)


if __name__ == "__main__":
    main()
