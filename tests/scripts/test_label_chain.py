"""The whole labels chain at tiny size: label generator -> new label maps -> their images -> mask metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dataset.nifti import load_image, load_label, save_nifti
from dataset.synthetic import SyntheticPhantomDataset
from evaluation import label_metrics
from evaluation.intensity import IntensityRange
from evaluation.segmenter import SegConfig, load_cases, save_checkpoint, train_segmenter
from scripts import generate_pairs
from tests.tiny_checkpoints import TinyLabelModel


def export(split: str, out: Path, n: int) -> None:
    """Real synthetic-dataset pairs as NIfTI, as a user would have them on disk."""
    ds = SyntheticPhantomDataset(split=split, num_samples=n, size=(16, 16, 16), label_nc=4, seed=0)
    for i in range(n):
        s = ds[i]
        save_nifti(out / "images" / f"{s['id']}.nii.gz", s["image"], s["affine"])
        save_nifti(out / "labels" / f"{s['id']}.nii.gz", s["label"], s["affine"])


def test_label_generator_to_images_to_metrics(tiny_label_model: TinyLabelModel, tiny_model, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs"
    rc = generate_pairs.main(["--label-ckpt", str(tiny_label_model.label_diffusion), "--image-ckpt",
                              str(tiny_model.diffusion), "--num-samples", "2", "--out", str(pairs), "--seed", "3",
                              "--condition", "outer=600", "--image-steps", "2"])  # fmt: skip
    assert rc == 0
    ids = ["map0000", "map0001"]
    for vid in ids:
        label, la = load_label(pairs / "labels" / f"{vid}.nii.gz", 4)
        image, ia = load_image(pairs / "images" / f"{vid}_s0.nii.gz")
        assert label.shape == image.shape == (16, 16, 16) and np.allclose(la, ia)  # a pair shares its grid
        assert np.isfinite(image).all()

    real, train = tmp_path / "real", tmp_path / "train"
    export("test", real, 3)
    export("train", train, 3)
    cases = load_cases(train / "images", train / "labels", 4, IntensityRange(-1.0, 1.0))
    cfg = SegConfig(num_classes=4, steps=2, seed=0)
    net, info = train_segmenter(cases, cfg, progress=False)
    seg = tmp_path / "seg.pt"
    save_checkpoint(seg, net, cfg, info)

    out = tmp_path / "report" / "labels.json"
    rc = label_metrics.main(["--fake", str(pairs / "labels"), "--real", str(real / "labels"), "--train",
                             str(train / "labels"), "--out", str(out), "--segmenter", str(seg), "--fake-images",
                             str(pairs / "images"), "--real-images", str(real / "images"), "--data-range", "-1",
                             "1"])  # fmt: skip
    assert rc == 0
    r = json.loads(out.read_text())["results"]
    assert r["n_fake"] == 2 and r["n_real"] == 3 and r["n_train"] == 3
    assert set(r["volumes"]["wasserstein_ml"]) == {"outer", "middle", "inner"}
    assert r["control"]["n_conditioned"] == 2 and r["control"]["mae_ml"] >= 0
    assert r["adherence"]["fake"]["n_volumes"] == 2 and r["adherence"]["real"]["n_volumes"] == 3
    assert "novelty" in r and len(r["novelty"]["per_map"]) == 2
    assert "Label-map quality" in out.with_suffix(".md").read_text()
