"""Labels-stage training through the real entry points: exact resume, statistics kept, configs compose."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tiny_checkpoints import TinyLabelModel
from tests.train.helpers import TINY_LABELS, compose_config, run_entry


def diffusion_run(model: TinyLabelModel, out: Path, steps: int) -> dict:
    run_entry(
        "train_label_diffusion",
        [*TINY_LABELS, "model=label_diffusion_tiny", f"trainer.max_steps={steps}", "model.stats_batches=2",
         "trainer.check_val_every_n_epoch=1", f"model.label_ae_ckpt={model.label_ae}", f"paths.output_dir={out}",
         f"paths.data_dir={model.data_dir}", "seed=3"],
    )  # fmt: skip
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.slow  # end to end (a full training resumed / every metric through the CLI): run by .ci/run's slow stage
def test_label_diffusion_resumes_exactly(tiny_label_model: TinyLabelModel, tmp_path: Path) -> None:
    straight = diffusion_run(tiny_label_model, tmp_path / "straight", 6)
    first = diffusion_run(tiny_label_model, tmp_path / "resumed", 2)
    resumed = diffusion_run(tiny_label_model, tmp_path / "resumed", 6)  # same folder: ckpt_path=last resumes
    assert resumed["global_step"] == straight["global_step"] == 6
    sd_s, sd_r, sd_f = straight["state_dict"], resumed["state_dict"], first["state_dict"]
    # statistics are measured once and carried by the checkpoint, never re-measured on resume
    for key in ("attr_mean", "attr_std", "voxel_size_dhw", "latent_norm.shift", "latent_norm.scale"):
        assert torch.equal(sd_r[key], sd_f[key])
    # the frozen label autoencoder is stored with it and never trained
    assert any(k.startswith("label_ae.") for k in sd_r)
    assert all(torch.equal(sd_r[k], sd_f[k]) for k in sd_r if k.startswith("label_ae."))
    mismatched = [k for k in sd_s if not torch.equal(sd_s[k], sd_r[k])]
    assert not mismatched, f"resumed run differs from the uninterrupted one in {mismatched[:5]}"


@pytest.mark.parametrize(
    "entry,overrides",
    [
        ("train_label_ae", ["experiment=duke_labels_ae"]),
        ("train_label_diffusion", ["experiment=autopet_labels_diffusion", "model.label_ae_ckpt=x.ckpt"]),
        ("train_label_diffusion", ["experiment=synthrad2023_labels_diffusion", "model.label_ae_ckpt=x.ckpt"]),
        ("train_label_ae", ["experiment=mni152_labels_ae_cpu"]),
    ],
)
def test_experiment_configs_compose(entry: str, overrides: list[str]) -> None:
    from omegaconf import OmegaConf

    name = "label_ae" if entry == "train_label_ae" else "label_diffusion"
    cfg = compose_config(name, overrides)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert model["label_nc"] == len(model["class_names"]) == cfg.dataset.label_nc
    assert model["_target_"].endswith("LabelAutoencoder" if name == "label_ae" else "LabelLatentDiffusion")


def test_validation_montages_name_the_classes(tmp_path: Path) -> None:
    """The volume logger draws the dataset's class names as the montage legend (issue 23: montages name classes)."""
    from types import SimpleNamespace

    from PIL import Image

    from train.callbacks import VolumeLogger

    label = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    label[0, 0, 2:6, 2:6, 2:6] = 2
    module = SimpleNamespace(log_volumes=lambda batch: {"label": label, "image": torch.zeros(1, 1, 8, 8, 8)})
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, global_step=1, loggers=[])
    heights = {}
    composed = compose_config("label_ae", ["dataset=synthetic"]).callbacks.volume_logger
    assert list(composed.class_names) == ["background", "outer", "middle", "inner"]  # from the dataset config
    for kind, names in (("plain", None), ("named", list(composed.class_names))):
        logger = VolumeLogger(str(tmp_path / kind), label_nc=4, class_names=names)
        logger.on_validation_epoch_start(trainer, module)
        logger.on_validation_batch_end(trainer, module, None, {}, 0)
        (png,) = (tmp_path / kind).rglob("montage_0.png")
        heights[kind] = Image.open(png).height
    assert heights["named"] > heights["plain"]  # the legend row below the grid
