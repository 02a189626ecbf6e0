"""Feature networks: architecture fidelity, weight loading from local files, missing-weight errors, LPIPS."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torchvision

from dataset.files import file_sha256
from evaluation import weights as W
from evaluation.inception import build_inception, fid_inception_structure
from evaluation.lpips_metric import build_lpips, lpips_slices
from evaluation.medicalnet import build_medicalnet, medicalnet_structure, volume_features


def _bn(prefix: str, c: int) -> dict:
    return {f"{prefix}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()
    }


def medicalnet_resnet50_layout() -> dict[str, tuple]:
    """State-dict layout of Tencent MedicalNet's ResNet-50 (models/resnet.py, shortcut B), head excluded."""
    layout = {"conv1.weight": (64, 1, 7, 7, 7)} | _bn("bn1", 64)
    inplanes = 64
    for li, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(blocks):
            p, cin = f"layer{li}.{b}", inplanes if b == 0 else planes * 4
            layout[f"{p}.conv1.weight"] = (planes, cin, 1, 1, 1)
            layout[f"{p}.conv2.weight"] = (planes, planes, 3, 3, 3)
            layout[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1, 1)
            layout |= _bn(f"{p}.bn1", planes) | _bn(f"{p}.bn2", planes) | _bn(f"{p}.bn3", planes * 4)
            if b == 0:
                layout[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1, 1)
                layout |= _bn(f"{p}.downsample.1", planes * 4)
        inplanes = planes * 4
    return layout


def test_medicalnet_structure_matches_medicalnet_layout_and_dilation():
    with torch.device("meta"):
        net = medicalnet_structure()
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got == medicalnet_resnet50_layout()
    # MedicalNet: layer2 downsamples, layer3/4 keep resolution with dilation 2/4.
    assert net.layer2[0].conv2.stride == (2, 2, 2)
    for name, d in (("layer3", 2), ("layer4", 4)):
        for block in getattr(net, name):
            assert (block.conv2.stride, block.conv2.dilation, block.conv2.padding) == ((1,) * 3, (d,) * 3, (d,) * 3)
        assert getattr(net, name)[0].downsample[0].stride == (1, 1, 1)


def test_medicalnet_loads_a_medicalnet_style_checkpoint(tmp_path, monkeypatch):
    source, _ = build_medicalnet(None, random_weights=True)
    # MedicalNet files carry a segmentation head (the "module." prefixes are load_state_dict's job, tested below).
    state = dict(source.state_dict()) | {"conv_seg.0.weight": torch.zeros(2048, 32, 2, 2, 2)}
    (tmp_path / W.MEDICALNET50.filename).write_bytes(b"placeholder")  # found by resolve()
    monkeypatch.setattr(W, "load_state_dict", lambda spec, path: (state, {"file": spec.filename, "random": False}))
    net, record = build_medicalnet(tmp_path)
    assert record["dropped_keys"] == ["conv_seg.0.weight"]
    x = torch.rand(16, 16, 16)
    assert torch.equal(volume_features(net, x), volume_features(source, x))
    feats = volume_features(net, x)
    assert feats.shape == (1, 2048) and torch.isfinite(feats).all()


def test_state_dict_file_unwrapping(tmp_path):
    spec = W.WeightSpec(key="t", filename="t.pth", url="u", used_by="x")
    path = tmp_path / "t.pth"
    torch.save({"state_dict": {"module.a.weight": torch.ones(2)}}, path)
    state, record = W.load_state_dict(spec, path)
    assert list(state) == ["a.weight"]
    assert record["sha256"] == file_sha256(path) and len(record["sha256"]) == 64


def test_inception_structure_equals_pytorch_fid_builder(tmp_path, monkeypatch):
    from pytorch_fid import inception as pfi

    ours = W.seeded(fid_inception_structure)
    state = ours.state_dict()
    # pytorch-fid's own builder, fed our state dict instead of its download, loads it strictly.
    with mock.patch.object(pfi, "load_state_dict_from_url", return_value=state):
        reference = pfi.fid_inception_v3()
    assert {k: v.shape for k, v in reference.state_dict().items()} == {k: v.shape for k, v in state.items()}
    # Local-file path: the trunk gets exactly the file's tensors.
    (tmp_path / W.INCEPTION.filename).write_bytes(b"placeholder")
    monkeypatch.setattr(W, "load_state_dict", lambda spec, path: (state, {"file": spec.filename, "random": False}))
    model, record = build_inception(tmp_path)
    loaded = dict(model.named_parameters())
    assert torch.equal(loaded["blocks.3.2.branch_pool.conv.weight"], state["Mixed_7c.branch_pool.conv.weight"])
    assert not model.training and record["network"].startswith("pytorch_fid")


def test_corrupt_weight_file_is_rejected_by_hash_prefix(tmp_path):
    (tmp_path / W.INCEPTION.filename).write_bytes(b"an html error page, not weights")
    with pytest.raises(ValueError, match="does not start with 6726825d"):
        build_inception(tmp_path)


@pytest.mark.parametrize(
    ("builder", "spec"),
    [(build_inception, W.INCEPTION), (build_lpips, W.VGG16), (build_medicalnet, W.MEDICALNET50)],
    ids=["inception", "vgg16", "medicalnet"],
)
def test_missing_weights_error_names_file_place_and_source(tmp_path, monkeypatch, builder, spec):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(W.MissingWeightsError) as err:
        builder(tmp_path / "weights")
    msg = str(err.value)
    assert spec.filename in msg
    assert str(tmp_path / "weights") in msg and str(tmp_path / "torch_home" / "hub" / "checkpoints") in msg
    assert spec.url.split()[0] in msg and "--metrics" in msg


def test_lpips_random_weights_identity_and_difference():
    model, record = build_lpips(None, random_weights=True)
    assert record["random"] and record["lpips_linear_layers"]["sha256"]
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 16, 16, generator=gen), torch.rand(3, 16, 16, generator=gen)
    assert torch.equal(lpips_slices(model, x, x), torch.zeros(3, dtype=torch.float64))
    assert (lpips_slices(model, x, y) > 0).all()
    with pytest.raises(ValueError, match="at least 16x16"):
        lpips_slices(model, torch.rand(2, 8, 16), torch.rand(2, 8, 16))


def test_lpips_loads_torchvision_vgg16_features(tmp_path, monkeypatch):
    vgg = W.seeded(lambda: torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"]))  # VGG16 features
    state = {f"features.{k}": v for k, v in vgg.state_dict().items()}
    (tmp_path / W.VGG16.filename).write_bytes(b"placeholder")
    monkeypatch.setattr(W, "load_state_dict", lambda spec, path: (state, {"file": spec.filename, "random": False}))
    model, _ = build_lpips(tmp_path)
    modules = dict(model.net.named_modules())  # lpips keeps torchvision's feature indices as module names
    assert torch.equal(modules["slice1.0"].weight, vgg[0].weight)
    assert torch.equal(modules["slice5.28"].bias, vgg[28].bias)
    assert torch.allclose(model.scaling_layer.shift.flatten(), torch.tensor([-0.030, -0.088, -0.188]))
