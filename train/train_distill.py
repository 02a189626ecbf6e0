"""Few-step generation: distil a trained rectified-flow stage-2 model into a 1-4 step student.

``python train/train_distill.py experiment=... model.teacher_ckpt=PATH [overrides]`` or
``python -m train.train_distill``. Composes ``config/distill.yaml`` with the overrides and trains
(:func:`train.run.train`); the student's checkpoints are ordinary stage-2 checkpoints (:mod:`diffusion.distill`).
A user error prints one line and exits with status 2.
"""

from __future__ import annotations

from train.run import hydra_entry

main = hydra_entry("distill")

if __name__ == "__main__":
    main()
