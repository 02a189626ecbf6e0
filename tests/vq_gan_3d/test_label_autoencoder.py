"""The label autoencoder: shapes, logits, learning to reconstruct, and its Dice monitor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dataset.contract import one_hot
from dataset.synthetic import SyntheticPhantomDataset
from tests.vq_gan_3d.helpers import LABEL_NAMES as NAMES
from tests.vq_gan_3d.helpers import label_phantoms as phantoms
from tests.vq_gan_3d.helpers import tiny_label_ae as tiny_ae
from vq_gan_3d.label_autoencoder import LabelAutoencoder, architecture_hparams, hard_dice


def test_autoencoder_shapes_and_logits() -> None:
    ae = tiny_ae()
    seg = one_hot(phantoms()["label"], 4)
    z = ae.encode(seg)
    assert z.shape == (2, 4, 4, 4, 4)
    logits = ae.decode(z)
    assert logits.shape == (2, 4, 16, 16, 16)
    assert ae.decode_labels(z).dtype == torch.int64
    with pytest.raises(ValueError, match="one-hot"):
        ae.encode(seg[:, :3])


def test_autoencoder_learns_to_reconstruct() -> None:
    # Overfitting two 8^3 phantoms: CE + Dice must reach a near-perfect hard Dice, which a tanh-bounded output or a
    # broken loss would not.
    torch.manual_seed(0)
    ae = LabelAutoencoder(4, n_hiddens=8, downsample=(2, 2, 2), latent_channels=4, num_groups=8, class_names=NAMES)
    ds = SyntheticPhantomDataset(num_samples=2, size=(8, 8, 8), label_nc=4, seed=0)
    label = torch.stack([ds[i]["label"] for i in range(2)])
    opt = torch.optim.Adam(ae.parameters(), lr=5e-3)
    first = None
    for _ in range(60):
        losses, _ = ae._losses(label, sample=True)
        first = float(losses["loss"].detach()) if first is None else first
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    with torch.no_grad():
        rec = ae.decode_labels(ae.encode(one_hot(label, 4)))
    assert hard_dice(rec[:, 0], label[:, 0], 4) > 0.9
    assert float(losses["loss"]) < 0.3 * first
    assert architecture_hparams(ae)["class_names"] == NAMES


def test_hard_dice_pools_the_batch_and_counts_absent_classes_as_one() -> None:
    target = torch.zeros(2, 4, 4, 4, dtype=torch.int64)
    target[0, :2] = 1  # 32 voxels of class 1, in volume 0 only
    pred = torch.zeros_like(target)
    pred[0, :1] = 1  # 16 of them
    pred[1, :1] = 1  # and 16 false positives in volume 1
    # pooled class 1: 2 * 16 / (32 + 32) = 0.5; class 2 absent from both: 1; mean 0.75
    assert hard_dice(pred, target, 3).item() == pytest.approx(0.75)
    assert np.isclose(hard_dice(target, target, 3).item(), 1.0)


def test_stored_data_info_holds_the_label_table_as_data(tmp_path: Path) -> None:
    # The label stage reads the user's ids back through the table: the checkpoint must carry the table's contents
    # (the file may be gone), and no _target_ of the dataset config.
    table = tmp_path / "mine_labels.yaml"
    table.write_text(f"name: mine\nclasses: {list(NAMES)}\nremap: {{0: 0, 7: 1, 42: 2, 117: 3}}\n")
    info = {"name": "nifti_pairs", "label_nc": 4, "class_names": list(NAMES), "label_table": str(table),
            "root": str(tmp_path), "block_size": [16, 16, 16],
            "datamodule": {"_target_": "dataset.datamodule.VolumeDataModule"}}  # fmt: skip
    ae = LabelAutoencoder(4, n_hiddens=4, latent_channels=2, num_groups=4, class_names=NAMES, data_info=info)
    stored = ae.hparams["data_info"]
    assert stored["label_table"]["remap"] == [[0, 0], [7, 1], [42, 2], [117, 3]]
    assert stored["label_table"]["classes"] == list(NAMES)
    assert "datamodule" not in stored


def test_autoencoder_trains_on_augmented_maps_only_when_asked() -> None:
    batch = phantoms(2)
    losses = {}
    for name, augment in (("plain", None), ("augmented", {"p": 1.0, "degrees": 10.0, "seed": 0})):
        torch.manual_seed(0)
        model = LabelAutoencoder(4, n_hiddens=8, latent_channels=4, class_names=NAMES, label_augment=augment)
        model.log = model.log_dict = lambda *a, **k: None  # no trainer attached
        torch.manual_seed(1)
        losses[name] = float(model.training_step(batch, 0))
        assert architecture_hparams(model).keys() == architecture_hparams(tiny_ae()).keys()  # not architecture
    assert losses["plain"] != losses["augmented"]
