"""Noise schedules, training targets and samplers, on MONAI's schedulers, behind one small class.

:class:`NoiseSchedule` is what the LightningModule talks to; it hides which MONAI scheduler does what:

* objective ``"ddpm"``: ``monai.networks.schedulers.DDPMScheduler`` defines the schedule (cosine by default,
  Nichol & Dhariwal https://arxiv.org/abs/2102.09672; ``alphas_cumprod[t] = f(t+1)/f(0)`` with
  ``f(t) = cos²((t/T + s)/(1 + s)·π/2)``, s = 0.008, betas clipped at 0.999 in MONAI, 0.9999 in the reference:
  only the last, pure-noise step differs), noises latents (``add_noise``), gives v targets (``get_velocity``) and
  runs ancestral sampling (sampler ``"ddpm"``: posterior mean + β̃_t noise over all T steps). Sampler ``"ddim"``
  (Song et al., https://arxiv.org/abs/2010.02502) with any number of steps uses :class:`AlignedDDIMScheduler`.
  Predictions: ``epsilon`` (noise), ``sample`` (x0) or ``v_prediction`` (v = √ᾱ·ε − √(1−ᾱ)·x0).
* objective ``"rflow"``: ``monai.networks.schedulers.RFlowScheduler`` (rectified flow, Liu et al.
  https://arxiv.org/abs/2209.03003): ``x_t = (1 − t/T)·x0 + (t/T)·ε``, the network predicts the velocity
  ``x0 − ε`` and sampler ``"rflow"`` integrates it with Euler steps from t = T to 0.

Exact relation between the samplers (tested): DDIM with η = 1 over all T steps *is* ancestral DDPM (its σ_t is the
posterior standard deviation and its mean the posterior mean), so with the same generator both give the same
samples, provided x0 is not clipped (MONAI's DDIM clips x0 but keeps the unclipped ε, DDPM does not). DDIM with
η = 0 is a different (deterministic) process; it does not equal DDPM's noise-free posterior-mean path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, NoiseSchedules, RFlowScheduler
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

OBJECTIVES = ("ddpm", "rflow")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
SAMPLERS = {"ddpm": ("ddpm", "ddim"), "rflow": ("rflow",)}

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``hook(x, t) -> x``: called on the latent before each denoiser call at timestep t and once after the last step
#: with t = -1 (the clean end); e.g. RePaint-style replacement of known voxels (diffusion.editing.inpaint).
StepHook = Callable[[torch.Tensor, int], torch.Tensor]


def split_prediction(
    prediction_type: str, model_output: torch.Tensor, alpha_prod_t: torch.Tensor, sample: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output into (x0, ε) estimates at cumulative alpha ``alpha_prod_t``.

    Uses ``x_t = √ᾱ·x0 + √(1−ᾱ)·ε`` and ``v = √ᾱ·ε − √(1−ᾱ)·x0`` (so ``x0 = √ᾱ·x_t − √(1−ᾱ)·v`` and
    ``ε = √ᾱ·v + √(1−ᾱ)·x_t``).

    Args:
        prediction_type: "epsilon", "sample" or "v_prediction".
        model_output: (B, C, ...) network output.
        alpha_prod_t: ᾱ_t, a scalar tensor or one broadcastable to ``sample``.
        sample: (B, C, ...) the noisy input x_t.
    """
    a, b = alpha_prod_t**0.5, (1 - alpha_prod_t) ** 0.5
    if prediction_type == "epsilon":
        return (sample - b * model_output) / a, model_output
    if prediction_type == "sample":
        return model_output, (sample - a * model_output) / b
    if prediction_type == "v_prediction":
        return a * sample - b * model_output, a * model_output + b * sample
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


class AlignedDDIMScheduler(DDIMScheduler):
    """MONAI's ``DDIMScheduler`` whose ``step`` goes to the *next timestep in the list*.

    MONAI 1.6.1 (like diffusers, huggingface/diffusers#12633) sets linspace timesteps (``round(linspace(T−1, 0, n))``)
    but steps to ``t − T // n``, which is another noise level whenever n does not divide T − 1 evenly: with T = 500
    and n = 10 the sample after the first step sits at t = 449 while the next step treats it as t = 444. Here the
    previous timestep is read from ``self.timesteps`` (−1 after the last, i.e. ᾱ = 1 with ``set_alpha_to_one``).
    With all T steps both agree exactly. Everything else is MONAI's update, formulas (12) and (16) of the DDIM paper.
    """

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        super().set_timesteps(num_inference_steps, device)
        ts = [int(t) for t in self.timesteps]
        self._prev = dict(zip(ts, ts[1:] + [-1]))

    def previous_timestep(self, timestep: int) -> int:
        """The timestep after ``timestep`` in the current inference schedule (−1 after the last)."""
        try:
            return self._prev[int(timestep)]
        except KeyError:
            raise ValueError(
                f"timestep {int(timestep)} is not in the inference schedule; call set_timesteps"
            ) from None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM update x_t → x_prev.

        Args:
            model_output: network output for ``sample`` at ``timestep``.
            timestep: current timestep (an entry of ``self.timesteps``).
            sample: (B, C, ...) current x_t.
            eta: 0 → deterministic DDIM, 1 → ancestral (DDPM posterior variance).
            generator: RNG for the η > 0 noise, on ``sample``'s device.

        Returns:
            (x_prev, predicted x0).
        """
        prev_t = self.previous_timestep(timestep)
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        x0, eps = split_prediction(self.prediction_type, model_output, alpha_prod_t, sample)
        if self.clip_sample:
            x0 = x0.clamp(*self.clip_sample_values)
        variance = (1 - alpha_prod_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_prev)
        std = eta * variance**0.5
        direction = (1 - alpha_prod_prev - std**2).clamp(min=0) ** 0.5 * eps
        prev = alpha_prod_prev**0.5 * x0 + direction
        if eta > 0:
            noise = torch.randn(
                model_output.shape, dtype=model_output.dtype, generator=generator, device=model_output.device
            )
            prev = prev + std * noise
        return prev, x0


class NoiseSchedule:
    """Training targets and sampling loops for one objective; a plain object (no parameters, nothing to save).

    Args:
        objective: "ddpm" (Gaussian diffusion, samplers "ddpm"/"ddim") or "rflow" (rectified flow, sampler "rflow").
        num_train_timesteps: T (reference: 500 for ddpm; MAISI uses 1000 for rflow).
        schedule: MONAI noise schedule name for ddpm ("cosine", "linear_beta", "scaled_linear_beta", "sigmoid_beta").
        prediction_type: "epsilon", "sample" or "v_prediction" (ddpm only; rflow always predicts the velocity).
        clip_sample: clamp predicted x0 to [−c, c] while sampling (the reference clipped to [−1, 1] on its min/max-
            normalised latents); None disables it (right for std-normalised latents, which are not bounded).
        rflow_sample_method: "uniform" or "logit-normal" training timesteps (rflow).
        rflow_timestep_transform: shift sampling timesteps towards the noisy end for latents larger than
            ``rflow_base_numel`` voxels (MONAI/MAISI resolution-aware transform).
        rflow_base_numel: reference latent size d·h·w of that transform.
    """

    def __init__(
        self,
        objective: str = "ddpm",
        num_train_timesteps: int = 500,
        schedule: str = "cosine",
        prediction_type: str = "epsilon",
        clip_sample: float | None = None,
        rflow_sample_method: str = "uniform",
        rflow_timestep_transform: bool = False,
        rflow_base_numel: int = 32 * 32 * 32,
    ) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
        if clip_sample is not None and clip_sample <= 0:
            raise ValueError(f"clip_sample must be positive or None, got {clip_sample}")
        self.objective = objective
        self.num_train_timesteps = num_train_timesteps
        if objective == "rflow":
            if prediction_type != "v_prediction":
                raise ValueError("rectified flow predicts the velocity x0 − noise: set prediction_type='v_prediction'")
            if rflow_sample_method not in ("uniform", "logit-normal"):
                raise ValueError(
                    f"rflow_sample_method must be 'uniform' or 'logit-normal', got {rflow_sample_method!r}"
                )
            self.prediction_type = prediction_type
            self.rflow = RFlowScheduler(
                num_train_timesteps,
                use_discrete_timesteps=True,
                sample_method=rflow_sample_method,
                use_timestep_transform=rflow_timestep_transform,
                base_img_size_numel=rflow_base_numel,
                spatial_dim=3,
            )
            return
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if schedule not in NoiseSchedules:
            raise ValueError(f"unknown noise schedule {schedule!r}; MONAI has {list(NoiseSchedules.names)}")
        self.prediction_type = prediction_type
        clip = {"clip_sample": clip_sample is not None}
        if clip_sample is not None:
            clip.update(clip_sample_min=-clip_sample, clip_sample_max=clip_sample)
        self.ddpm = DDPMScheduler(
            num_train_timesteps, schedule, variance_type="fixed_small", prediction_type=prediction_type, **clip
        )
        self.ddim = AlignedDDIMScheduler(
            num_train_timesteps, schedule, set_alpha_to_one=True, prediction_type=prediction_type, **clip
        )

    @property
    def samplers(self) -> tuple[str, ...]:
        """Sampler names valid for this objective."""
        return SAMPLERS[self.objective]

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t for t = 0 … T−1 (ddpm objective), float32 on the CPU."""
        return self.ddpm.alphas_cumprod.detach().to("cpu", torch.float32)

    def sample_timesteps(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training timesteps, one per sample: (B,) long in [0, T).

        ``generator`` (on ``device``) makes them reproducible, e.g. for a comparable validation loss.
        """
        if self.objective == "ddpm":
            return torch.randint(0, self.num_train_timesteps, (batch,), device=device, generator=generator)
        # rflow, as RFlowScheduler.sample_timesteps but drawn with our generator
        if self.rflow.sample_method == "uniform":
            u = torch.rand(batch, device=device, generator=generator)
        else:  # logit-normal(0, 1): sigmoid of a standard normal
            u = torch.sigmoid(torch.randn(batch, device=device, generator=generator))
        return (u * self.num_train_timesteps).long()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0, noise: (B, C, d, h, w), t: (B,) → x_t in float32."""
        sched = self.rflow if self.objective == "rflow" else self.ddpm
        # float32 in: MONAI casts its alphas_cumprod to the input dtype and keeps it
        return sched.add_noise(x0.float(), noise.float(), t)

    def renoise(
        self, x: torch.Tensor, t_from: int, t_to: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Forward-noise x from timestep ``t_from`` to the noisier ``t_to``: a draw of q(x_{t_to} | x_{t_from}).

        For x = add_noise(x0, ε, t_from) the result is distributed as add_noise(x0, ε', t_to): ddpm
        ``sqrt(ᾱ_to / ᾱ_from) x + sqrt(1 − ᾱ_to / ᾱ_from) ε``; rflow (x_t = (1 − σ) x0 + σ ε, σ = t / T)
        ``a x + sqrt(σ_to² − a² σ_from²) ε`` with ``a = (1 − σ_to) / (1 − σ_from)``. The clean end (the last
        step's ``t_next``: −1 for ddpm/ddim, 0 for rflow) counts as noise level 0. RePaint's resampling jumps.

        Args:
            x: (B, C, d, h, w) latent at ``t_from``.
            t_from, t_to: timesteps, ``t_to`` at least as noisy as ``t_from``.
            generator: RNG on x's device (None: the global one).
        """
        if self.objective == "rflow":
            s_from, s_to = max(t_from, 0) / self.num_train_timesteps, t_to / self.num_train_timesteps
            if not 0.0 <= s_from <= s_to <= 1.0:
                raise ValueError(f"renoise goes from a timestep to a noisier one, got {t_from} -> {t_to}")
            a = (1.0 - s_to) / (1.0 - s_from) if s_to > s_from else 1.0  # s_to = 1 (t = T): pure noise
            std = max(s_to**2 - (a * s_from) ** 2, 0.0) ** 0.5
        else:
            abar = self.alphas_cumprod
            a_from = 1.0 if t_from < 0 else float(abar[t_from])
            if not t_from <= t_to < self.num_train_timesteps:
                raise ValueError(f"renoise goes from a timestep to a noisier one, got {t_from} -> {t_to}")
            ratio = float(abar[t_to]) / a_from
            a, std = ratio**0.5, max(1.0 - ratio, 0.0) ** 0.5
        noise = torch.randn(x.shape, device=x.device, generator=generator)
        return (a * x.float() + std * noise).float()

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output for x_t = add_noise(x0, noise, t)."""
        if self.objective == "rflow":
            return (x0 - noise).float()
        if self.prediction_type == "epsilon":
            return noise.float()
        if self.prediction_type == "sample":
            return x0.float()
        return self.ddpm.get_velocity(x0.float(), noise.float(), t)

    def predict_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The x0 estimate implied by a network output at (x_t, t); t: (B,)."""
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        if self.objective == "rflow":
            return x_t + model_output * (t.float() / self.num_train_timesteps).view(shape)
        abar = self.ddpm.alphas_cumprod.to(x_t.device, torch.float32)[t].view(shape)
        return split_prediction(self.prediction_type, model_output.float(), abar, x_t.float())[0]

    def inference_timesteps(self, sampler: str, steps: int | None, latent_numel: int) -> list[tuple[int, int]]:
        """(t, t_next) pairs of a sampling run; t_next = −1 (ddpm/ddim) or 0 (rflow) after the last step.

        Args:
            sampler: "ddpm" (all T steps), "ddim" or "rflow".
            steps: number of network evaluations per sample (None → T).
            latent_numel: d·h·w of the latent (used by the rflow timestep transform).
        """
        if sampler not in self.samplers:
            raise ValueError(
                f"sampler {sampler!r} does not fit objective {self.objective!r}; use one of {self.samplers}"
            )
        steps = self.num_train_timesteps if steps is None else int(steps)
        if not 1 <= steps <= self.num_train_timesteps:
            raise ValueError(f"steps must be in [1, {self.num_train_timesteps}], got {steps}")
        if sampler == "ddpm":
            if steps != self.num_train_timesteps:
                # MONAI's DDPM step always goes to t − 1: strided ancestral sampling is DDIM with eta = 1
                raise ValueError(
                    f"ancestral DDPM runs all {self.num_train_timesteps} steps; for fewer steps use sampler='ddim' "
                    "(eta=1 gives strided ancestral sampling)"
                )
            ts = list(range(self.num_train_timesteps - 1, -1, -1))
            return list(zip(ts, ts[1:] + [-1]))
        if sampler == "ddim":
            self.ddim.set_timesteps(steps)
            ts = [int(t) for t in self.ddim.timesteps]
            return list(zip(ts, ts[1:] + [-1]))
        self.rflow.set_timesteps(steps, input_img_size_numel=latent_numel)
        ts = [int(t) for t in self.rflow.timesteps]
        return list(zip(ts, ts[1:] + [0]))

    def sample(
        self,
        denoise: DenoiseFn,
        noise: torch.Tensor,
        sampler: str,
        steps: int | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        progress: bool = False,
        start_t: int | None = None,
        step_hook: StepHook | None = None,
        resample: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Run a sampler from pure noise (or from a partly noised latent) to a clean latent.

        Args:
            denoise: ``denoise(x (B, C, d, h, w), t (B,)) -> model output`` (guidance already folded in).
            noise: (B, C, d, h, w) starting point x_T.
            sampler: "ddpm", "ddim" or "rflow" (must fit the objective).
            steps: network evaluations (None → T; "ddpm" accepts only T).
            eta: DDIM noise scale (0 deterministic, 1 ancestral); ignored by the other samplers.
            generator: RNG for the stochastic samplers, on ``noise``'s device; same generator state, same result.
            progress: show a tqdm bar.
            start_t: ``noise`` is a latent noised to this timestep (SDEdit-style variations): only the inference
                timesteps at or below it are run. None: ``noise`` is pure noise at T.
            step_hook: ``hook(x, t) -> x`` applied before each step at timestep t and after the last with t = -1
                (:data:`StepHook`); None: the plain sampler.
            resample: (jump length j, count r), RePaint's resampling (Lugmayr et al. 2022): the steps run in blocks
                of j; after a block the latent is forward-noised back to the block's first timestep
                (:meth:`renoise`, from ``generator``) and the block is run again, r times in all, so the known
                part imposed by ``step_hook`` and the generated part harmonise. r steps per step: the cost is r
                times the plain run's. None (or r = 1): the plain sampler, bit for bit.

        Returns:
            (B, C, d, h, w) float32 latent.
        """
        if generator is not None and generator.device.type != noise.device.type:
            raise ValueError(f"generator is on {generator.device}, the sampling runs on {noise.device}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        pairs = self.inference_timesteps(sampler, steps, int(noise[0, 0].numel()))
        if start_t is not None:
            pairs = [(t, tn) for t, tn in pairs if t <= start_t]
        # each step: (t, t_next, the timestep to jump back to after it, or None)
        steps_run: list[tuple[int, int, int | None]] = [(t, tn, None) for t, tn in pairs]
        if resample is not None and int(resample[1]) > 1:
            jump, count = (int(v) for v in resample)
            if jump < 1:
                raise ValueError(f"resample jump length must be >= 1, got {jump}")
            steps_run = []
            for i in range(0, len(pairs), jump):
                block = pairs[i : i + jump]
                for r in range(count):
                    steps_run += [(t, tn, None) for t, tn in block[:-1]]
                    steps_run.append((*block[-1], block[0][0] if r < count - 1 else None))
        x = noise.float()
        bar = tqdm(steps_run, desc=f"{sampler} sampling", disable=None if progress else True, leave=False)
        for t, t_next, back in bar:
            if step_hook is not None:
                x = step_hook(x, t).float()
            t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            out = denoise(x, t_batch).float()
            if sampler == "ddpm":
                x = self.ddpm.step(out, t, x, generator=generator)[0]
            elif sampler == "ddim":
                x = self.ddim.step(out, t, x, eta=eta, generator=generator)[0]
            else:
                x = self.rflow.step(out, t, x, t_next)[0]
            if back is not None:
                x = self.renoise(x, t_next, back, generator)
        return step_hook(x, -1).float() if step_hook is not None else x
