"""EMA of the denoiser and latent normalisation: known answers, persistence, bad arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffusion.ema import EMA
from diffusion.latent_norm import LatentNormalizer


def _set(module: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(value)


def test_ema_copies_during_warmup_then_averages() -> None:
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.5, update_every=2, start_step=4)
    _set(model, 1.0)
    ema.update(model, 1)  # not an update step
    assert not torch.all(ema.module.weight == 1.0)
    ema.update(model, 2)  # warm-up: copy
    assert torch.all(ema.module.weight == 1.0)
    _set(model, 3.0)
    ema.update(model, 4)  # first average after warm-up: AveragedModel copies on its first call
    assert torch.all(ema.module.weight == 3.0)
    _set(model, 5.0)
    ema.update(model, 6)  # 0.5·3 + 0.5·5
    assert torch.all(ema.module.weight == 4.0)


def test_ema_stays_in_eval_and_out_of_autograd() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    ema = EMA(model)
    ema.train()
    assert not ema.module.training
    assert not any(p.requires_grad for p in ema.parameters())
    state = ema.state_dict()
    assert "averaged.n_averaged" in state and "averaged.module.0.weight" in state


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"decay": 1.0}, "decay"), ({"update_every": 0}, "update_every")], ids=["decay", "every"]
)
def test_ema_bad_args_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EMA(nn.Linear(1, 1), **kwargs)


def _latents(g: torch.Generator) -> list[torch.Tensor]:
    mean = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1, 1)
    std = torch.tensor([0.5, 3.0, 1.0]).view(1, 3, 1, 1, 1)
    return [mean + std * torch.randn(4, 3, 4, 6, 6, generator=g) for _ in range(3)]


def test_std_mode_standardises_each_channel() -> None:
    batches = _latents(torch.Generator().manual_seed(0))
    norm = LatentNormalizer(3, "std", per_channel=True)
    assert not norm.is_fitted
    norm.fit_std(batches)
    z = norm.normalize(torch.cat(batches))
    torch.testing.assert_close(z.mean(dim=(0, 2, 3, 4)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3, 4), unbiased=False), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.denormalize(z), torch.cat(batches), atol=1e-5, rtol=1e-5)


def test_std_mode_global_and_all_reduce() -> None:
    batches = _latents(torch.Generator().manual_seed(0))
    norm = LatentNormalizer(3, "std", per_channel=False)
    norm.fit_std(batches, all_reduce=lambda t: 2 * t)  # two identical "ranks": same statistics
    all_z = torch.cat(batches)
    torch.testing.assert_close(norm.shift, all_z.mean().expand(3), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm.scale, all_z.std(unbiased=False).expand(3), atol=1e-5, rtol=1e-5)


def test_codebook_minmax_is_the_reference_formula() -> None:
    codebook = torch.tensor([[-3.0, 1.0], [0.0, 5.0]])
    norm = LatentNormalizer(2, "codebook_minmax")
    norm.fit_codebook(codebook)
    z = torch.randn(2, 2, 1, 2, 2)
    torch.testing.assert_close(norm.normalize(z), 2 * (z + 3.0) / 8.0 - 1)


def test_statistics_persist_in_the_state_dict() -> None:
    norm = LatentNormalizer(3, "std")
    norm.fit_std(_latents(torch.Generator().manual_seed(0)))
    fresh = LatentNormalizer(3, "std")
    fresh.load_state_dict(norm.state_dict())
    assert fresh.is_fitted
    torch.testing.assert_close(fresh.scale, norm.scale)
    assert LatentNormalizer(3, "none").is_fitted


def test_latent_norm_bad_args_raise() -> None:
    with pytest.raises(ValueError, match="latent_norm"):
        LatentNormalizer(3, "minmax")
    with pytest.raises(ValueError, match="fit_codebook"):
        LatentNormalizer(3, "std").fit_codebook(torch.randn(4, 3))
    with pytest.raises(ValueError, match="fit_std"):
        LatentNormalizer(3, "none").fit_std([torch.randn(1, 3, 1, 1, 1)])
    with pytest.raises(ValueError, match="latents must be"):
        LatentNormalizer(3, "std").fit_std([torch.randn(1, 2, 1, 1, 1)])
    with pytest.raises(ValueError, match="no spread"):
        LatentNormalizer(3, "codebook_minmax").fit_codebook(torch.ones(4, 3))
