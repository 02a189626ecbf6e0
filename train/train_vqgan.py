"""Stage 1: train the 3D VQ-GAN.  ``python train/train_vqgan.py [overrides]`` or ``python -m train.train_vqgan``.

Composes ``config/vqgan.yaml`` with the command-line overrides and trains (:func:`train.run.train`). A user error
(bad override, missing file, bad data) prints one line and exits with status 2.
"""

from __future__ import annotations

from train.run import hydra_entry

main = hydra_entry("vqgan")

if __name__ == "__main__":
    main()
