"""Few-step generation by distillation (SPEC section 14): a student that samples in 1-4 denoiser passes.

A trained rectified-flow stage-2 model (the *teacher*, 30 Euler steps with classifier-free guidance, i.e. 60 network
passes per window) is distilled into a *student* that takes one network pass per step, guidance folded in: the
student learns the guided teacher's trajectories and samples with ``guidance = 1`` (the conditional branch only,
:class:`~diffusion.guidance.GuidedDenoiser` then runs one pass).

The student is an ordinary stage-2 model: :class:`DistillationModule` *is* a
:class:`~diffusion.module.LatentDiffusionModule` (same networks, EMA, first stage and latent statistics, copied from
the teacher at the start), and its checkpoints carry the stage-2 hyperparameters only (the distillation settings
ride under their own key), so ``scripts/generate.py``, validation and editing load it unchanged and sample it with
``--steps 1..4``.

Two methods (``method``):

* ``"reflow"`` (Liu et al. 2022, https://arxiv.org/abs/2209.03003, "2-rectified flow"): the teacher maps noise to
  latents through :meth:`LatentDiffusionModule.sample_images` (the one sampling path); the student is trained with the
  ordinary rectified-flow loss on those *coupled* (noise, latent) pairs instead of independent ones, which
  straightens the flow so that few Euler steps suffice. The pairs are made once, before training, and cached in the
  run folder (:class:`TeacherPairs`, one file per training label map, written atomically): a killed run resumes
  the cache where it stopped.
* ``"progressive"`` (Salimans & Ho 2022, https://arxiv.org/abs/2202.00512, on the rectified-flow Euler grid): in
  round r the student learns to cover with one Euler step what its teacher covers with two; the teacher of round 0
  is the guided teacher at ``progressive_start_steps``, each later round's teacher the student of the round before
  (guidance already folded). ``log2(progressive_start_steps / student_steps)`` rounds of ``steps_per_round``
  optimiser steps; no pairs, real training latents.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from dataset.contract import DataError, one_hot
from dataset.datamodule import VolumeDataModule
from dataset.files import atomic_torch_save, atomic_write_json, file_sha256, read_checkpoint
from diffusion.guidance import GuidedDenoiser
from diffusion.module import LatentDiffusionModule, load_checkpoint

log = logging.getLogger(__name__)

METHODS = ("reflow", "progressive")
#: Checkpoint key of the distillation's own state (method, round, the round's teacher); not a stage-2 key.
CKPT_KEY = "distillation"


def stage2_hparams(model: LatentDiffusionModule) -> dict[str, Any]:
    """The hyperparameters of ``model`` that are :class:`LatentDiffusionModule` constructor arguments (plain data)."""
    import inspect

    keys = set(inspect.signature(LatentDiffusionModule.__init__).parameters) - {"self"}
    return {k: copy.deepcopy(v) for k, v in dict(model.hparams).items() if k in keys}


def pair_seed(seed: int, index: int, j: int, per_map: int) -> int:
    """Seed of the j-th teacher pair of training label map ``index`` (distinct for every (index, j))."""
    return seed * 1_000_003 + index * per_map + j


@torch.no_grad()
def teacher_pairs(
    teacher: LatentDiffusionModule,
    labels: torch.Tensor,
    seeds: Sequence[int],
    steps: int,
    guidance: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The guided teacher's (noise, latent) pairs for label maps, from the one sampling path.

    Args:
        teacher: trained rectified-flow stage-2 model.
        labels: (B, D, H, W) integer label maps.
        seeds: B seeds, one per pair: the sampling run of item i starts from the noise of ``seeds[i]``.
        steps: teacher Euler steps.
        guidance: teacher guidance weight (None: the teacher's own).

    Returns:
        noise and latent, both (B, E, d, h, w) float32 in the teacher's normalised latent space.
    """
    from diffusion.sampling import initial_noise

    device = teacher.device

    def gens() -> list[torch.Generator]:
        return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    settings = teacher.sampler_defaults.resolve("rflow", steps, guidance)
    z = teacher.sample_images(labels.to(device), gens(), settings, return_latents=True)
    latent = teacher.latent_norm.normalize(z.float())
    noise = initial_noise(latent.shape[1:], gens(), device)  # the draw sample_images started from, again
    return noise, latent


class TeacherPairs(Dataset):
    """The cached teacher pairs of a run folder: one file per training label map, ``pair_NNNNN.pt``.

    Each file holds ``{"label": (1, D, H, W) uint8, "noise": (k, E, d, h, w), "latent": (k, E, d, h, w)}``; items are
    ``{"label": (1, D, H, W) int64, "noise": (E, d, h, w), "latent": (E, d, h, w)}``, map-major. ``pairs.json``
    records what made them (teacher sha256, steps, guidance, seed, k): a cache made otherwise is refused, not mixed.

    Args:
        folder: the cache folder (``<run>/teacher_pairs``).
        settings: the record the cache must match.
    """

    def __init__(self, folder: str | Path, settings: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.settings = dict(settings)
        self._items: list[dict[str, torch.Tensor]] | None = None

    def path(self, index: int) -> Path:
        """File of training label map ``index``."""
        return self.folder / f"pair_{index:05d}.pt"

    def check_record(self) -> None:
        """Write ``pairs.json`` on first use; refuse a folder whose record differs (another teacher or settings)."""
        record = self.folder / "pairs.json"
        if record.is_file():
            stored = json.loads(record.read_text())
            if stored != self.settings:
                raise DataError(
                    f"{self.folder}: teacher pairs made with other settings ({stored}); use a new run folder"
                )
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(record, self.settings)

    def missing(self) -> list[int]:
        """Label-map indices without a complete file (an interrupted run left them, or none ran yet)."""
        return [i for i in range(int(self.settings["maps"])) if not self.path(i).is_file()]

    @torch.no_grad()
    def fill(self, teacher: LatentDiffusionModule, maps: Dataset) -> int:
        """Make the missing files with ``teacher`` from the label maps of ``maps`` (items with "label" (1, D, H, W)).

        Returns:
            how many files were made (0: the cache was complete).
        """
        self.check_record()
        s = self.settings
        todo = self.missing()
        for n, i in enumerate(todo):
            label = maps[i]["label"]  # (1, D, H, W)
            k = int(s["per_map"])
            seeds = [pair_seed(int(s["seed"]), i, j, k) for j in range(k)]
            noise, latent = teacher_pairs(teacher, label.expand(k, *label.shape[1:]), seeds, s["steps"], s["guidance"])
            item = {"label": label.to(torch.uint8).cpu(), "noise": noise.cpu(), "latent": latent.cpu()}
            atomic_torch_save(self.path(i), item)
            log.info("teacher pairs: map %d (%d/%d)", i, n + 1, len(todo))
        return len(todo)

    def _load(self) -> list[dict[str, torch.Tensor]]:
        if self._items is None:
            missing = self.missing()
            if missing:
                raise DataError(f"{self.folder}: teacher pairs of {len(missing)} label map(s) are missing")
            items = []
            for i in range(int(self.settings["maps"])):
                data = read_checkpoint(self.path(i))
                for j in range(data["noise"].shape[0]):
                    items.append({"label": data["label"].long(), "noise": data["noise"][j].clone(),
                                  "latent": data["latent"][j].clone()})  # fmt: skip
            self._items = items
        return self._items

    def __len__(self) -> int:
        return int(self.settings["maps"]) * int(self.settings["per_map"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self._load()[index]


class DistillDataModule(VolumeDataModule):
    """The dataset's data module, with the training split replaced by the teacher's pairs for ``method="reflow"``.

    Validation and test splits are the dataset's (the student is validated like any stage-2 model); the training
    order is the same resumable stream (:class:`~dataset.datamodule.ResumableSampler`) over the pairs. The pairs are
    made in :meth:`prepare_data`, which Lightning runs on global rank 0 only, the other ranks waiting.

    Args:
        source: the dataset's :class:`~dataset.datamodule.VolumeDataModule` (``${dataset.datamodule}``).
        method: "reflow" (train on cached pairs) or "progressive" (train on the dataset's volumes).
        teacher_ckpt: the teacher's stage-2 checkpoint.
        cache_dir: folder of the pairs (in the run folder).
        per_map: pairs per training label map.
        maps: training label maps used (None: all of the training split).
        teacher_steps: teacher Euler steps.
        teacher_guidance: teacher guidance (None: the teacher's).
        seed: seed of the pairs' noise.
    """

    prepare_data_per_node = False  # one writer of the cache, whatever the number of nodes

    def __init__(
        self,
        source: VolumeDataModule,
        method: str,
        teacher_ckpt: str,
        cache_dir: str,
        per_map: int = 2,
        maps: int | None = None,
        teacher_steps: int = 30,
        teacher_guidance: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            source.dataset_factory, source.batch_size, source.num_workers, source.label_nc, source.val_batch_size,
            source.pin_memory, source.seed,
        )  # fmt: skip
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if per_map < 1 or (maps is not None and maps < 1) or teacher_steps < 1:
            raise ValueError(f"per_map, maps and teacher_steps must be >= 1, got {per_map}, {maps}, {teacher_steps}")
        # the source module is an object, not a hyperparameter (the checkpoint holds plain data only)
        self.save_hyperparameters(ignore=["source"])
        self.method = method
        self.teacher_ckpt = teacher_ckpt
        self.cache_dir = Path(cache_dir)
        self.per_map, self.maps, self.pair_seed = per_map, maps, seed
        self.steps, self.guidance = teacher_steps, teacher_guidance
        self._pairs: TeacherPairs | None = None

    def pairs(self) -> TeacherPairs:
        """The pair cache of this run (its record names the teacher by sha256)."""
        if self._pairs is None:
            n = len(super().dataset("train"))  # type: ignore[arg-type]
            settings = {"teacher_sha256": file_sha256(self.teacher_ckpt), "steps": self.steps,
                        "guidance": self.guidance, "seed": self.pair_seed, "per_map": self.per_map,
                        "maps": min(n, self.maps or n)}  # fmt: skip
            self._pairs = TeacherPairs(self.cache_dir, settings)
        return self._pairs

    def prepare_data(self) -> None:
        """Make the missing teacher pairs (reflow); nothing to do for progressive distillation."""
        if self.method != "reflow":
            return
        pairs = self.pairs()
        if not pairs.missing():
            log.info("teacher pairs: %d cached in %s", len(pairs), pairs.folder)
            pairs.check_record()
            return
        teacher = load_checkpoint(self.teacher_ckpt, "cuda" if torch.cuda.is_available() else "cpu")
        made = pairs.fill(teacher, super().dataset("train"))
        log.info("teacher pairs: made %d of %d label maps in %s", made, int(pairs.settings["maps"]), pairs.folder)

    def dataset(self, split: str) -> Dataset:
        """The dataset's split; for reflow the training split is the pairs (after :meth:`prepare_data`)."""
        if split == "train" and self.method == "reflow":
            if "pairs" not in self.datasets:
                pairs = self.pairs()
                pairs.check_record()
                self.datasets["pairs"] = pairs
            return self.datasets["pairs"]
        return super().dataset(split)


class DistillationModule(LatentDiffusionModule):
    """A stage-2 student distilled from a rectified-flow teacher; see the module docstring.

    Built from the teacher's checkpoint: the student's hyperparameters are the teacher's with the sampling defaults
    of a few-step model (``sampler="rflow"``, ``sample_steps=val_sample_steps=student_steps``, ``guidance=1``,
    ``p_uncond=0``) and the optimisation settings below; its weights start as the teacher's.

    Args:
        teacher_ckpt: the teacher's stage-2 checkpoint (objective "rflow").
        method: "reflow" or "progressive".
        student_steps: Euler steps the student is made for (its default ``sample_steps``).
        teacher_steps: teacher Euler steps of the reflow pairs (recorded; the pairs are made by the data module).
        teacher_guidance: guidance folded into the student (None: the teacher's own ``guidance``).
        progressive_start_steps: steps of the round-0 teacher (progressive); ``student_steps·2^k``.
        steps_per_round: optimiser steps of each progressive round (the last round runs on until the end).
        lr, ema_decay, ema_update_every, ema_start_step, loss_type: the student's optimisation (stage-2 meaning).
        val_sample_every_n: sample in every n-th validation run (stage-2 meaning).
        compile: ``torch.compile`` the student.
    """

    def __init__(
        self,
        teacher_ckpt: str,
        method: str = "reflow",
        student_steps: int = 4,
        teacher_steps: int = 30,
        teacher_guidance: float | None = None,
        progressive_start_steps: int = 32,
        steps_per_round: int = 100,
        lr: float = 1.0e-4,
        ema_decay: float = 0.99,
        ema_update_every: int = 1,
        ema_start_step: int = 0,
        loss_type: str | None = None,
        val_sample_every_n: int = 1,
        compile: bool = False,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if student_steps < 1 or teacher_steps < 1 or steps_per_round < 1:
            raise ValueError("student_steps, teacher_steps and steps_per_round must be >= 1")
        rounds = math.log2(progressive_start_steps / student_steps) if progressive_start_steps > 0 else -1.0
        if method == "progressive" and (rounds < 1 or rounds != int(rounds)):
            raise ValueError(
                f"progressive_start_steps={progressive_start_steps} must be student_steps={student_steps} times 2^k"
            )
        teacher = load_checkpoint(teacher_ckpt)  # untrusted data: weights_only, no call targets
        if teacher.schedule.objective != "rflow":
            raise DataError(f"{teacher_ckpt}: the teacher must be a rectified-flow model (objective rflow)")
        if teacher.inpaint_inputs:
            raise DataError(f"{teacher_ckpt}: distilling a model trained with inpaint_inputs is not supported")
        hp = stage2_hparams(teacher)
        # Lightning's save_hyperparameters also reads this frame's arguments (they win over the stage-2 ones of the
        # same name): resolve them here so both agree
        loss_type = loss_type or hp.get("loss_type", "l1")
        hp.update(sampler="rflow", sample_steps=student_steps, val_sample_steps=student_steps, guidance=1.0,
                  p_uncond=0.0, lr=lr, ema_decay=ema_decay, ema_update_every=ema_update_every,
                  ema_start_step=ema_start_step, val_sample_every_n=val_sample_every_n, compile=compile,
                  loss_type=loss_type)  # fmt: skip
        super().__init__(**hp)
        # the student starts as the teacher (denoiser, EMA, first stage, latent statistics)
        self.load_state_dict(teacher.state_dict())
        self.method = method
        self.teacher_guidance = float(teacher.hparams.guidance if teacher_guidance is None else teacher_guidance)
        self.distill = {
            "method": method, "teacher_ckpt": str(teacher_ckpt), "teacher_steps": teacher_steps,
            "teacher_guidance": self.teacher_guidance, "student_steps": student_steps,
            "progressive_start_steps": progressive_start_steps, "steps_per_round": steps_per_round,
        }  # fmt: skip
        self.rounds = int(rounds) if method == "progressive" else 0
        # The round's teacher network is held outside the module tree: it is not part of the student's state dict
        # (the checkpoint stays an ordinary stage-2 one); rounds > 0 store it under CKPT_KEY for exact resume.
        self._teacher: list[torch.nn.Module] = [teacher.ema.module.eval()] if method == "progressive" else []
        for p in self._teacher[0].parameters() if self._teacher else ():
            p.requires_grad_(False)
        self._teacher_round = 0

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Write the stage-2 hyperparameters only (the file is an ordinary stage-2 checkpoint) plus our own key."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["hyper_parameters"] = stage2_hparams(self)
        state: dict[str, Any] = {**self.distill, "teacher_round": self._teacher_round}
        if self._teacher_round > 0:  # a student-made teacher exists nowhere else
            state["teacher_state"] = {k: v.detach().cpu().clone() for k, v in self._teacher[0].state_dict().items()}
        checkpoint[CKPT_KEY] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get(CKPT_KEY) or {}
        if state.get("method", self.method) != self.method:
            raise DataError(f"this run folder was distilled with method {state['method']!r}, not {self.method!r}")
        if int(state.get("teacher_round", 0)) > 0:
            self._teacher[0].load_state_dict(state["teacher_state"])
            self._teacher_round = int(state["teacher_round"])

    # ------------------------------------------------------------------ training
    def _round(self) -> int:
        return min(self.global_step // self.distill["steps_per_round"], self.rounds - 1)

    def _next_teacher(self) -> torch.nn.Module:
        """The teacher of the current progressive round: at a round change, a frozen copy of the student."""
        r = self._round()
        if r != self._teacher_round:
            net = self._teacher[0]
            net.load_state_dict(self.ema.module.state_dict())
            self._teacher_round = r
            log.info("progressive distillation: round %d/%d (student %d steps)", r + 1, self.rounds,
                     self.distill["progressive_start_steps"] >> (r + 1))  # fmt: skip
        return self._teacher[0].to(self.device)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Reflow: rectified-flow loss on teacher pairs ``{"label", "noise", "latent"}``; progressive: see below."""
        if self.method == "reflow":
            seg = one_hot(batch["label"], self.label_nc)
            loss = self._loss(self.denoiser, batch["latent"].float(), (seg,), None, noise=batch["noise"].float())
        else:
            loss = self._progressive_loss(batch)
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=batch["label"].shape[0])
        return loss

    def _progressive_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One student Euler step against two teacher Euler steps, on the student's own timestep grid.

        x_t is a real latent noised to a grid timestep t of the student's sampler; the teacher (guided in round 0)
        goes t → t_mid → t_next, and the student's velocity target is the one that makes that trip in one step.
        """
        teacher = self._next_teacher()
        r = self._teacher_round
        z0 = self.encode(batch["image"])
        seg = one_hot(batch["label"], self.label_nc)
        b, big_t = z0.shape[0], self.schedule.num_train_timesteps
        steps = self.distill["progressive_start_steps"] >> (r + 1)
        grid = torch.tensor(self.schedule.inference_timesteps("rflow", steps, int(z0[0, 0].numel())),
                            device=z0.device)  # fmt: skip
        k = torch.randint(0, grid.shape[0], (b,), device=z0.device)
        t, t_next = grid[k, 0], grid[k, 1]
        t_mid = torch.div(t + t_next, 2, rounding_mode="floor")
        noise = torch.randn(z0.shape, device=z0.device)
        x = self.schedule.add_noise(z0, noise, t)
        shape = (b, 1, 1, 1, 1)
        with torch.no_grad():
            guided = GuidedDenoiser(teacher, seg, self.teacher_guidance if r == 0 else 1.0)
            x_mid = x + guided(x, t).float() * ((t - t_mid).float() / big_t).view(shape)
            x_end = x_mid + guided(x_mid, t_mid).float() * ((t_mid - t_next).float() / big_t).view(shape)
            target = (x_end - x) * (big_t / (t - t_next).float()).view(shape)
        pred = self.denoiser(x, t, seg).float()
        return self._distance(pred, target)
