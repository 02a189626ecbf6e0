"""diffusion.sampling: one sampling path, step-invariant work done once, windows, memory that follows the window."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dataset.contract import one_hot
from diffusion import sampling
from diffusion.module import LatentDiffusionModule
from tests.diffusion.helpers import IMAGE, LABEL_NC, save_tiny_vqgan
from tests.train.helpers import REPO
from vq_gan_3d.spade import SPADE

#: A SPADE U-Net with two resolutions (one in-plane halving), so caching covers several grids.
SPADE_DENOISER = {
    "dim": 8,
    "dim_mults": [1, 2],
    "attn_heads": 2,
    "attn_dim_head": 8,
    "label_channels": 4,
    "label_hidden": [4],
    "spade_hidden": 8,
}


def _model(tmp_path: Path, **kwargs: object) -> LatentDiffusionModule:
    """Untrained tiny model (latent factor 2, block 8x16x16) with fixed latent statistics; random but seeded."""
    torch.manual_seed(0)
    args = {
        "label_nc": LABEL_NC, "first_stage_ckpt": str(save_tiny_vqgan(tmp_path / "vq.ckpt")),
        "block_size": list(IMAGE), "denoiser_kwargs": SPADE_DENOISER, "num_train_timesteps": 50, "sample_steps": 3,
        "guidance": 2.5, **kwargs,
    }  # fmt: skip
    model = LatentDiffusionModule(**args).eval()
    model.latent_norm.fitted.fill_(True)  # identity statistics: sampling needs no training here
    return model


def _labels(shape: tuple[int, ...], batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, LABEL_NC, (batch, *shape), generator=g)


def _gens(n: int, seed: int = 3) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


@pytest.fixture
def model(tmp_path: Path) -> LatentDiffusionModule:
    return _model(tmp_path)


def test_spade_cache_is_bit_identical_and_computes_each_window_once(
    model: LatentDiffusionModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = SPADE.hidden_map

    def counting(self: SPADE, *args: object, **kwargs: object) -> torch.Tensor:
        calls["n"] += 1
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(SPADE, "hidden_map", counting)
    labels = _labels((16, 32, 32))  # 2 x 2 x 2 training blocks: windows along depth (whole plane)
    settings = model.sampler_defaults.resolve("ddim", 4)
    run = {}
    for cache in (False, True):
        calls["n"] = 0
        with monkeypatch.context() as mp:
            if not cache:  # no memory for the cache: the run goes without it
                mp.setattr(sampling, "_cache_budget", lambda device: 0)
            run[cache] = model.sample_images(
                labels, _gens(1), settings, train_window=IMAGE, overlap=0.5, return_latents=True
            )
        run[f"calls_{cache}"] = calls["n"]
    assert torch.equal(run[True], run[False])  # bit for bit
    n_spade = sum(isinstance(m, SPADE) for m in model.ema.module.modules())
    n_windows = 3  # latent depth 8, window 4, overlap 0.5: starts 0, 2, 4
    assert run["calls_False"] == 4 * n_windows * n_spade  # every step recomputes every SPADE
    assert run["calls_True"] == n_windows * n_spade  # once per window (both guidance branches in one tensor)


@pytest.mark.parametrize("name", ["unet3d_spade", "unet3d", "monai_spade"])
def test_both_guidance_branches_share_one_latent_pass(name: str) -> None:
    """Label features of batch 2B for latents of batch B equal the latents repeated (fp32 round-off)."""
    from diffusion.denoiser_factory import build_denoiser

    torch.manual_seed(0)
    kwargs = (
        {"dim": 8, "dim_mults": [1, 2], "attn_heads": 2, "attn_dim_head": 8, "label_channels": 4,
         "label_hidden": [4], "spade_hidden": 8}
        if name != "monai_spade"
        else {"dim": 8, "dim_mults": [1, 2], "attention_levels": [False, False], "attn_dim_head": 8,
              "label_channels": 4, "label_hidden": [4], "resnet_groups": 8, "spade_hidden": 8}
    )  # fmt: skip
    if name == "unet3d":
        kwargs["conditioning"] = "concat"
    net = build_denoiser(name, 4, LABEL_NC, (2, 2, 2), kwargs).eval()
    x, t = torch.randn(2, 4, 4, 8, 8), torch.tensor([3, 7])
    feats = torch.cat([net.encode_labels(one_hot(_labels(IMAGE, 2, seed)[:, None], LABEL_NC)) for seed in (1, 2)])
    with torch.no_grad():
        shared = net(x, t, label_features=feats)
        repeated = net(torch.cat((x, x)), torch.cat((t, t)), label_features=feats)
    assert net.shares_latent == (name == "unet3d_spade")
    assert shared.shape == repeated.shape == (4, 4, 4, 8, 8)
    torch.testing.assert_close(shared, repeated, rtol=1e-5, atol=1e-5)


def test_label_features_are_encoded_once_per_window_not_per_step(
    model: LatentDiffusionModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = model.ema.module.label_encoder
    seen: list[tuple[int, ...]] = []
    monkeypatch.setattr(encoder, "forward", lambda seg, f=encoder.forward: seen.append(tuple(seg.shape)) or f(seg))
    settings = model.sampler_defaults.resolve("ddim", 5)
    model.sample_images(_labels((16, 16, 16)), _gens(1), settings, train_window=IMAGE)
    # 3 depth windows (latent depth 8, window 4, overlap 0.5), conditional + null branch each, for 5 steps
    assert seen == [(1, LABEL_NC, 8, 16, 16)] * 6


def test_module_sample_is_the_shared_path_with_integer_or_one_hot_labels(model: LatentDiffusionModule) -> None:
    labels = _labels(IMAGE, batch=2)
    by_module = model.sample(one_hot(labels[:, None], LABEL_NC), steps=3, generator=torch.Generator().manual_seed(5))
    settings = model.sampler_defaults.resolve(None, 3)
    gen = torch.Generator().manual_seed(5)
    shared = model.sample_images(labels, [gen, gen], settings)  # integer maps, the module's generator use
    assert by_module.shape == (2, 1, *IMAGE)
    assert torch.equal(by_module, shared)


def test_defaults_come_from_the_checkpoint_and_bad_values_are_refused(model: LatentDiffusionModule) -> None:
    s = model.sampler_defaults.resolve()
    assert (s.sampler, s.steps, s.guidance, s.eta, s.use_ema) == ("ddim", 3, 2.5, 0.0, True)
    assert model.sampler_defaults.resolve("ddpm").steps is None  # ancestral: all T
    with pytest.raises(ValueError, match="does not fit"):
        model.sampler_defaults.resolve("rflow")
    with pytest.raises(ValueError, match="guidance and eta"):
        model.sampler_defaults.resolve(guidance=-1.0)


def test_window_choice() -> None:
    # auto: the training depth, the whole plane (rounded to the network's multiple); block: the training window
    assert sampling.denoise_window((16, 32, 40), (8, 16, 16), "auto") == (8, 32, 40)
    assert sampling.denoise_window((16, 33, 40), (8, 16, 16), "auto", multiple=(1, 4, 4)) == (8, 32, 40)
    assert sampling.denoise_window((16, 32, 40), (8, 16, 16), "block") == (8, 16, 16)
    assert sampling.denoise_window((16, 64, 64), (8, 16, 16), "auto", max_plane=1024) == (8, 16, 16)
    assert sampling.denoise_window((4, 8, 8), (8, 16, 16), "auto") == (4, 8, 8)  # clipped to the latent
    with pytest.raises(ValueError, match="window mode"):
        sampling.denoise_window((4, 8, 8), (4, 8, 8), "tiles")


def _label_echo(z: torch.Tensor, seg: torch.Tensor | None) -> torch.Tensor:
    """A decoder that returns the label map (class index) it is given: tests the label plumbing."""
    assert seg is not None and seg.shape[1] == 7
    assert seg.shape[2:] == tuple(2 * s for s in z.shape[2:])  # the image window of this latent window
    return seg.argmax(1, keepdim=True).float() / 3 - 1  # classes 0..6 -> [-1, 1]


def test_windowed_decoding_gives_each_window_its_own_labels() -> None:
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 7, (2, 12, 20, 28), generator=g)
    z = torch.zeros(2, 3, 6, 10, 14)
    whole = sampling.decode_windows(_label_echo, z, labels, 7, (2, 2, 2), None)
    tiled = sampling.decode_windows(_label_echo, z, labels, 7, (2, 2, 2), (4, 4, 4), overlap=0.5)
    assert whole.shape == tiled.shape == (2, 1, 12, 20, 28)
    # a gaussian-weighted mean of windows that all return the same value there is that value
    expected = labels[:, None].float() / 3 - 1
    torch.testing.assert_close(tiled, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(whole, expected, rtol=0, atol=0)


def test_windowed_decoding_without_labels_gives_the_decoder_none() -> None:
    z = torch.randn(1, 3, 6, 10, 14, generator=torch.Generator().manual_seed(2))

    def upsample(zw: torch.Tensor, seg: torch.Tensor | None) -> torch.Tensor:
        assert seg is None
        return torch.nn.functional.interpolate(zw[:, :1], scale_factor=2).tanh()

    whole = sampling.decode_windows(upsample, z, None, 7, (2, 2, 2), None)
    tiled = sampling.decode_windows(upsample, z, None, 7, (2, 2, 2), (4, 4, 4), overlap=0.5)
    # a pointwise decoder: every window agrees with the whole volume where they overlap
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import torch
    from pathlib import Path
    from diffusion.module import LatentDiffusionModule
    from tests.diffusion.helpers import save_tiny_vqgan

    K, SHAPE, HEADROOM = 3000, (16, 64, 64), 450 * 2**20
    torch.manual_seed(0)
    model = LatentDiffusionModule(
        label_nc=K, first_stage_ckpt=str(save_tiny_vqgan(Path(sys.argv[1]))), block_size=[8, 32, 32],
        denoiser="unet3d_spade", num_train_timesteps=20, latent_norm="none",
        denoiser_kwargs={"dim": 8, "dim_mults": [1], "attn_heads": 1, "attn_dim_head": 8, "label_channels": 4,
                         "label_hidden": [4], "spade_hidden": 8},
    ).eval()
    labels = torch.randint(0, K, (1, *SHAPE), generator=torch.Generator().manual_seed(0))
    vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + HEADROOM, vm + HEADROOM))
    full = K * labels.numel() * 4  # the float32 one-hot of the whole map
    try:
        torch.zeros(full // 4)
        sys.exit("the address-space limit does not bind: the test proves nothing")
    except (RuntimeError, MemoryError):
        pass
    settings = model.sampler_defaults.resolve("ddim", 2, guidance=1.0)
    x = model.sample_images(labels, [torch.Generator().manual_seed(1)], settings,
                            train_window=(8, 32, 32), window_mode="block", overlap=0.0)
    assert x.shape == (1, 1, *SHAPE) and bool(torch.isfinite(x).all())
    print(f"ok full_one_hot_gib={full / 2**30:.2f} headroom_gib={HEADROOM / 2**30:.2f}")
    """
)


@pytest.mark.slow  # a fresh interpreter importing Lightning, then 3000-class windows: tens of seconds on 2 cores
def test_memory_follows_the_window_not_volume_times_classes(tmp_path: Path) -> None:
    """3000 classes x 16x64x64: the whole one-hot map (0.73 GiB float32) does not fit the limit; generation runs."""
    env = {"OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path / "vq.ckpt")],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "ok full_one_hot_gib=0.73" in proc.stdout
