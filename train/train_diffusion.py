"""Stage 2: train the semantic latent diffusion model on a frozen VQ-GAN.

``python train/train_diffusion.py model.first_stage_ckpt=PATH [overrides]`` or ``python -m train.train_diffusion``.
Composes ``config/diffusion.yaml`` with the overrides and trains (:func:`train.run.train`). A user error (bad
override, missing checkpoint, bad data) prints one line and exits with status 2.
"""

from __future__ import annotations

from train.run import hydra_entry

main = hydra_entry("diffusion")

if __name__ == "__main__":
    main()
