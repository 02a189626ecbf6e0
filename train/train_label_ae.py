"""Labels stage, part 1: train the label autoencoder (one-hot label map -> KL latent -> class logits).

``python train/train_label_ae.py experiment=mni152_labels_ae_cpu [overrides]`` or ``python -m train.train_label_ae``.
A user error (bad override, missing checkpoint, bad data) prints one line and exits with status 2.
"""

from __future__ import annotations

from train.run import hydra_entry

main = hydra_entry("label_ae")

if __name__ == "__main__":
    main()
