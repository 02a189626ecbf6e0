"""Labels stage, part 2: train the label latent diffusion on a frozen label autoencoder.

``python train/train_label_diffusion.py model.label_ae_ckpt=PATH [overrides]`` or
``python -m train.train_label_diffusion``.
A user error (bad override, missing checkpoint, bad data) prints one line and exits with status 2.
"""

from __future__ import annotations

from train.run import hydra_entry

main = hydra_entry("label_diffusion")

if __name__ == "__main__":
    main()
