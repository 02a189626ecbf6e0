"""Noise schedules, targets and samplers: closed forms and the exact DDIM/DDPM relation."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler

from diffusion.schedulers import AlignedDDIMScheduler, NoiseSchedule, split_prediction


def _cosine_abar(T: int, s: float = 0.008) -> torch.Tensor:
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([f(t + 1) / f(0) for t in range(T)], dtype=torch.float64)


def test_cosine_alphas_cumprod_closed_form() -> None:
    sched = NoiseSchedule(num_train_timesteps=500)
    abar = sched.alphas_cumprod.double()
    expected = _cosine_abar(500)
    # all but the last step: the last beta is clipped at 0.999 (pure noise either way)
    torch.testing.assert_close(abar[:-1], expected[:-1], rtol=2e-4, atol=1e-6)
    assert abar[-1] < 1e-6 and abar[0] > 0.9999
    assert torch.all(abar[1:] < abar[:-1]), "alphas_cumprod must decrease strictly"


def test_add_noise_at_t0_is_almost_identity() -> None:
    sched = NoiseSchedule(num_train_timesteps=500)
    x = torch.randn(2, 4, 2, 4, 4)
    x_t = sched.add_noise(x, torch.randn_like(x), torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(x_t, x, atol=0.05, rtol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_target_inverts_to_x0(prediction_type: str) -> None:
    sched = NoiseSchedule(num_train_timesteps=100, prediction_type=prediction_type)
    x0, noise = torch.randn(4, 3, 2, 4, 4), torch.randn(4, 3, 2, 4, 4)
    t = torch.tensor([0, 10, 50, 90])
    x_t = sched.add_noise(x0, noise, t)
    torch.testing.assert_close(sched.predict_x0(sched.target(x0, noise, t), x_t, t), x0, atol=1e-4, rtol=1e-4)


def test_v_target_algebra() -> None:
    sched = NoiseSchedule(num_train_timesteps=100, prediction_type="v_prediction")
    x0, eps = torch.randn(3, 2, 2, 4, 4), torch.randn(3, 2, 2, 4, 4)
    t = torch.tensor([5, 40, 80])
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    v = sched.target(x0, eps, t)
    torch.testing.assert_close(v, abar.sqrt() * eps - (1 - abar).sqrt() * x0)
    x_t = sched.add_noise(x0, eps, t)
    x0_hat, eps_hat = split_prediction("v_prediction", v, abar, x_t)
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eps_hat, eps, atol=1e-5, rtol=1e-5)


def test_rflow_path_and_euler_sampler_are_exact_on_a_straight_line() -> None:
    sched = NoiseSchedule("rflow", num_train_timesteps=1000, prediction_type="v_prediction")
    x0, noise = torch.randn(2, 2, 2, 4, 4), torch.randn(2, 2, 2, 4, 4)
    torch.testing.assert_close(sched.add_noise(x0, noise, torch.zeros(2, dtype=torch.long)), x0)
    torch.testing.assert_close(sched.add_noise(x0, noise, torch.full((2,), 1000)), noise)
    velocity = sched.target(x0, noise, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(velocity, x0 - noise)
    # the oracle velocity of a straight path is constant: Euler integration lands on x0 for any step count
    out = sched.sample(lambda x, t: velocity, noise, "rflow", steps=7)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)


def test_aligned_ddim_lands_on_the_next_listed_noise_level() -> None:
    """With the true noise as model output and eta=0, one step must give exactly add_noise(x0, eps, t_next)."""
    T, n = 500, 10
    x0, eps = torch.randn(1, 2, 2, 4, 4), torch.randn(1, 2, 2, 4, 4)
    ours = AlignedDDIMScheduler(T, "cosine", clip_sample=False)
    ours.set_timesteps(n)
    t, t_next = int(ours.timesteps[2]), int(ours.timesteps[3])  # away from t≈T, where x0 = (x_t − …)/√ᾱ is ill-posed
    x_t = ours.add_noise(x0, eps, torch.tensor([t]))
    expected = ours.add_noise(x0, eps, torch.tensor([t_next]))
    torch.testing.assert_close(ours.step(eps, t, x_t)[0], expected, atol=1e-5, rtol=1e-5)
    # MONAI 1.6.1's DDIM steps to t - T // n instead: another noise level (why AlignedDDIMScheduler exists)
    monai = DDIMScheduler(T, "cosine", clip_sample=False)
    monai.set_timesteps(n)
    assert not torch.allclose(monai.step(eps, t, x_t)[0], expected, atol=1e-3)


def test_aligned_ddim_equals_monai_ddim_with_unit_stride() -> None:
    ours, monai = AlignedDDIMScheduler(50, "cosine"), DDIMScheduler(50, "cosine")
    ours.set_timesteps(50)
    monai.set_timesteps(50)
    x, out = torch.randn(2, 2, 2, 4, 4), torch.randn(2, 2, 2, 4, 4)
    for t in (49, 20, 0):
        gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        a = ours.step(out, t, x, eta=0.7, generator=gen_a)
        b = monai.step(out, t, x, eta=0.7, generator=gen_b)
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])


def _toy_denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed, deterministic, t-dependent 'network'."""
    return 0.3 * x + 0.02 * t.float().view(-1, 1, 1, 1, 1) * torch.sin(x)


def test_ddim_eta1_full_steps_equals_ancestral_ddpm() -> None:
    """DDIM with eta=1 over all T steps is ancestral DDPM: same generator, same samples (x0 unclipped)."""
    sched = NoiseSchedule(num_train_timesteps=30, clip_sample=None)
    noise = torch.randn(2, 2, 2, 4, 4)
    ddpm = sched.sample(_toy_denoiser, noise, "ddpm", generator=torch.Generator().manual_seed(3))
    ddim = sched.sample(_toy_denoiser, noise, "ddim", steps=30, eta=1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ddim, ddpm, atol=1e-4, rtol=1e-4)
    # and it is really stochastic: another seed gives another sample
    other = sched.sample(_toy_denoiser, noise, "ddpm", generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(other, ddpm, atol=1e-3)


def test_ddim_eta0_is_deterministic() -> None:
    sched = NoiseSchedule(num_train_timesteps=30)
    noise = torch.randn(1, 2, 2, 4, 4)
    a = sched.sample(_toy_denoiser, noise, "ddim", steps=7, generator=torch.Generator().manual_seed(0))
    b = sched.sample(_toy_denoiser, noise, "ddim", steps=7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_clip_sample_bounds_the_x0_estimate() -> None:
    sched = NoiseSchedule(num_train_timesteps=20, clip_sample=1.0)
    out = sched.sample(lambda x, t: -10 * torch.ones_like(x), torch.randn(1, 1, 1, 2, 2), "ddim", steps=1)
    assert out.abs().max() <= 1.0 + 1e-6


def test_sampler_steps_and_choices_are_checked() -> None:
    sched = NoiseSchedule(num_train_timesteps=20)
    assert len(sched.inference_timesteps("ddim", 5, 64)) == 5
    assert sched.inference_timesteps("ddim", 5, 64)[-1] == (0, -1)
    with pytest.raises(ValueError, match="all 20 steps"):
        sched.inference_timesteps("ddpm", 10, 64)
    with pytest.raises(ValueError, match="does not fit"):
        sched.inference_timesteps("rflow", 10, 64)
    with pytest.raises(ValueError, match="steps must be"):
        sched.inference_timesteps("ddim", 21, 64)
    with pytest.raises(ValueError, match="eta"):
        sched.sample(_toy_denoiser, torch.randn(1, 1, 1, 2, 2), "ddim", steps=2, eta=-1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"objective": "score"}, "objective"),
        ({"prediction_type": "noise"}, "prediction_type"),
        ({"schedule": "quadratic"}, "schedule"),
        ({"num_train_timesteps": 1}, "num_train_timesteps"),
        ({"clip_sample": 0.0}, "clip_sample"),
        ({"objective": "rflow", "prediction_type": "epsilon"}, "velocity"),
        ({"objective": "rflow", "prediction_type": "v_prediction", "rflow_sample_method": "beta"}, "sample_method"),
    ],
    ids=["objective", "prediction", "schedule", "T", "clip", "rflow-pred", "rflow-method"],
)
def test_invalid_schedule_args_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NoiseSchedule(**kwargs)


@pytest.mark.parametrize("objective", ["ddpm", "rflow"])
def test_training_timesteps_are_seeded_and_in_range(objective: str) -> None:
    sched = NoiseSchedule(objective, 50, prediction_type="v_prediction")
    a = sched.sample_timesteps(64, torch.device("cpu"), torch.Generator().manual_seed(5))
    b = sched.sample_timesteps(64, torch.device("cpu"), torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < 50
