"""Label latent diffusion (SPEC section 11): new label maps from noise, controlled by per-class volumes.

The second half of the ``labels`` stage, on the stage-2 machinery: a frozen
:class:`~vq_gan_3d.label_autoencoder.LabelAutoencoder` (its posterior mean is the latent, normalised by
:class:`~diffusion.latent_norm.LatentNormalizer`), the plain pseudo-3D :class:`~diffusion.unet3d.Unet3D` with
``conditioning="none"`` as the denoiser, :class:`~diffusion.schedulers.NoiseSchedule` (DDPM/DDIM or rectified
flow), :class:`~diffusion.ema.EMA` and classifier-free guidance (:func:`~diffusion.guidance.combine`).

Condition: an attribute vector per map, computed from the training label map itself (:func:`label_attributes`):
the volume of every foreground class in mL (voxel count times the voxel volume from the sample's affine), and
optionally the centroid (D, H, W, each in [-1, 1] of the grid) of chosen classes. Attributes are normalised with
training statistics (buffers, measured at the start of training, saved in the checkpoint). The
:class:`AttributeEmbedding` gives each attribute its own linear embedding and its own learned *null* vector; in
training each attribute is replaced by its null independently with probability ``p_drop_attribute`` and all of
them with probability ``p_uncond``, so at sampling any subset of attributes, or none, can be given. The embedding
is added to the U-Net's time embedding. Guidance: ``u + w·(c − u)`` with ``u`` the all-null prediction.

Logged keys: ``train/loss``; ``val/loss`` (EMA denoiser, all attributes given, seeded noise and timesteps).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dataset.contract import DataError, one_hot
from dataset.label_augment import LabelAugment, augment_training_maps
from dataset.registry import plain_data_info
from diffusion.base import LatentDiffusionBase
from diffusion.guidance import combine
from diffusion.sampling import sample_latent
from diffusion.schedulers import NoiseSchedule
from diffusion.unet3d import Unet3D, coordinate_grid
from vq_gan_3d.label_autoencoder import (
    architecture_hparams,
    build_label_autoencoder,
    freeze,
    load_label_autoencoder,
)

log = logging.getLogger(__name__)

CENTROID_AXES = ("d", "h", "w")


# ---------------------------------------------------------------------- attributes
def attribute_names(class_names: Sequence[str], centroid_classes: Sequence[str] = ()) -> list[str]:
    """Attribute names: ``<class>`` (volume in mL) per foreground class, then ``<class>.centroid_<d|h|w>``."""
    names = [str(c) for c in class_names[1:]]
    for c in centroid_classes:
        names += [f"{c}.centroid_{a}" for a in CENTROID_AXES]
    return names


def voxel_volume_ml(affine: torch.Tensor) -> torch.Tensor:
    """affine (B, 4, 4) or (4, 4) -> voxel volume in mL (B,) or (): ``|det A[:3, :3]|`` mm³ / 1000."""
    return torch.linalg.det(affine[..., :3, :3].double()).abs() / 1000.0


def label_attributes(
    label: torch.Tensor, voxel_ml: torch.Tensor, label_nc: int, centroid_idx: Sequence[int] = ()
) -> torch.Tensor:
    """The attribute vector of integer label maps.

    Args:
        label: (B, 1, D, H, W) integer maps in [0, label_nc).
        voxel_ml: (B,) voxel volume in mL of each map.
        label_nc: K.
        centroid_idx: classes whose centroid is an attribute; a class absent from a map has centroid 0 (centre).

    Returns:
        (B, K - 1 + 3·len(centroid_idx)) float64: volumes in mL of classes 1..K-1, then (d, h, w) centroids in
        [-1, 1] (voxel centres on ``linspace(-1, 1, n)`` per axis).
    """
    lab = label[:, 0].long()
    b = lab.shape[0]
    counts = torch.stack([(lab == c).flatten(1).sum(1) for c in range(1, label_nc)], 1).double()  # (B, K-1)
    out = [counts * voxel_ml.to(counts).view(b, 1)]
    if centroid_idx:
        grid = coordinate_grid(lab.shape[1:], lab.device, torch.float64)  # (3, D, H, W)
        for c in centroid_idx:
            mask = (lab == c).double()  # (B, D, H, W)
            n = mask.flatten(1).sum(1).clamp(min=1)
            out.append(torch.einsum("bdhw,adhw->ba", mask, grid) / n.view(b, 1))
    return torch.cat(out, 1)


class AttributeEmbedding(nn.Module):
    """Attribute vector with a given/dropped mask -> one embedding vector, a learned null per attribute.

    ``e = MLP(Σ_i [m_i·(v_i·w_i + b_i) + (1 − m_i)·n_i])`` with ``w_i, b_i, n_i`` learned (A, H) rows.

    Args:
        num_attributes: A.
        dim: width H of the per-attribute embeddings and of the output.
    """

    def __init__(self, num_attributes: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_attributes, dim) * 0.1)
        self.bias = nn.Parameter(torch.zeros(num_attributes, dim))
        self.null = nn.Parameter(torch.randn(num_attributes, dim) * 0.1)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """values (B, A) normalised, mask (B, A) 1 = given / 0 = dropped -> (B, H)."""
        m = mask.to(self.weight.dtype).unsqueeze(-1)
        given = values.to(self.weight.dtype).unsqueeze(-1) * self.weight + self.bias  # (B, A, H)
        return self.mlp((m * given + (1 - m) * self.null).sum(1))


class AttributeDenoiser(nn.Module):
    """``Unet3D`` (no label-map conditioning) whose time embedding gets the attribute embedding added.

    Args:
        channels: latent channels C.
        latent_factor: the label autoencoder's (fd, fh, fw) (unused by an unconditional U-Net, kept for its API).
        num_attributes: A.
        unet_kwargs: ``Unet3D`` arguments (``dim``, ``dim_mults``, ...); ``conditioning`` is fixed to "none".
    """

    def __init__(self, channels: int, latent_factor: Sequence[int], num_attributes: int, unet_kwargs: dict) -> None:
        super().__init__()
        kwargs = dict(unet_kwargs)
        if "conditioning" in kwargs or "channels" in kwargs:
            raise ValueError("denoiser_kwargs must not set conditioning or channels: the label stage fixes them")
        try:
            self.unet = Unet3D(channels, 1, latent_factor, conditioning="none", **kwargs)
        except TypeError as err:  # an unexpected keyword: a config typo
            raise ValueError(f"label denoiser: {err}") from err
        self.attributes = AttributeEmbedding(num_attributes, 4 * int(kwargs.get("dim", 64)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, C, d, h, w), t (B,), values/mask (B, A) -> prediction (B, C, d, h, w)."""
        if t.shape != (x.shape[0],) or values.shape != mask.shape or values.shape[0] != x.shape[0]:
            raise ValueError(f"bad shapes: x {tuple(x.shape)}, t {tuple(t.shape)}, attributes {tuple(values.shape)}")
        return self.unet.predict(x, t, None, time_offset=self.attributes(values, mask))


# ---------------------------------------------------------------------- partial denoising (--like)
def first_timestep(
    schedule: NoiseSchedule, sampler: str, steps: int | None, latent_numel: int, strength: float
) -> int:
    """The largest inference timestep at or below ``strength·T``: where a ``--like`` variation starts."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"--strength must be in (0, 1], got {strength}")
    pairs = schedule.inference_timesteps(sampler, steps, latent_numel)
    limit = strength * schedule.num_train_timesteps
    below = [t for t, _ in pairs if t <= limit]
    if not below:
        raise ValueError(
            f"--strength {strength} is below the first of the {len(pairs)} denoising steps (t = {pairs[-1][0]} of "
            f"{schedule.num_train_timesteps}); use a larger --strength or more --steps"
        )
    return max(below)


# ---------------------------------------------------------------------- the module
class LabelLatentDiffusion(LatentDiffusionBase):
    """Latent diffusion over label-autoencoder latents, conditioned on per-class volumes (and centroids).

    The hyperparameters shared with stage 2 (schedule, loss, guidance, sampler defaults, optimiser, EMA,
    validation seed) are read by :class:`~diffusion.base.LatentDiffusionBase`; the defaults here suit label latents.

    Args:
        label_nc: K (``${dataset.label_nc}``).
        class_names: K names, background first (``${dataset.class_names}``): the attribute names.
        label_ae_ckpt: label autoencoder checkpoint to load when training starts (not opened when
            ``label_ae_hparams`` is set, i.e. when this module is loaded from its own checkpoint).
        label_ae_hparams: the autoencoder's architecture; filled in from ``label_ae_ckpt`` and saved here so one
            checkpoint is enough to sample. Set by hand only to build an untrained autoencoder (tests).
        block_size: (D, H, W) of the generated maps (``${dataset.block_size}``).
        data_info: the dataset config, stored for generation as plain data (:func:`dataset.registry.plain_data_info`:
            the label table's contents, voxel size, ...).
        centroid_classes: classes whose centroid is also an attribute (default none).
        denoiser_kwargs: ``Unet3D`` arguments (``dim``, ``dim_mults``, ``attn_heads``, ...).
        p_drop_attribute: probability of dropping each attribute independently in training (``p_uncond`` drops
            all of them: the unconditional case).
        stats_batches: training batches read at fit start for the latent and attribute statistics.
        label_augment: seeded spatial augmentation of the training maps (:class:`dataset.label_augment.LabelAugment`
            fields), or None for none; the attributes are measured on the augmented map (:meth:`training_inputs`).
        objective, num_train_timesteps, schedule, prediction_type, loss_type, clip_sample, rflow_sample_method,
            p_uncond, guidance, sampler, sample_steps, ddim_eta, latent_norm_per_channel, lr, betas, weight_decay,
            ema_decay, ema_update_every, ema_start_step, val_seed: shared with stage 2, see
            :class:`~diffusion.base.LatentDiffusionBase` (EMA: of the denoiser and the attribute embedding).
    """

    def __init__(
        self,
        label_nc: int,
        class_names: Sequence[str],
        label_ae_ckpt: str | None = None,
        label_ae_hparams: dict | None = None,
        block_size: Sequence[int] | None = None,
        data_info: dict | None = None,
        centroid_classes: Sequence[str] = (),
        denoiser_kwargs: dict | None = None,
        objective: str = "rflow",
        num_train_timesteps: int = 1000,
        schedule: str = "cosine",
        prediction_type: str = "v_prediction",
        loss_type: str = "l2",
        clip_sample: float | None = None,
        rflow_sample_method: str = "logit-normal",
        p_drop_attribute: float = 0.3,
        p_uncond: float = 0.1,
        guidance: float = 1.0,
        sampler: str = "rflow",
        sample_steps: int = 30,
        ddim_eta: float = 0.0,
        latent_norm_per_channel: bool = True,
        stats_batches: int = 8,
        label_augment: Mapping[str, Any] | None = None,
        lr: float = 1e-4,
        betas: Sequence[float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        ema_decay: float = 0.995,
        ema_update_every: int = 1,
        ema_start_step: int = 200,
        val_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # plain, checked data (a label table file's contents, not its path): generate_labels writes the user's ids
        self.hparams["data_info"] = plain_data_info(data_info)
        self.label_augment = LabelAugment.from_config(label_augment)
        self.hparams["label_augment"] = self.label_augment.as_dict() if self.label_augment else None
        if len(class_names) != label_nc:
            raise ValueError(f"class_names has {len(class_names)} names, label_nc is {label_nc}")
        unknown = [c for c in centroid_classes if c not in list(class_names)[1:]]
        if unknown:
            raise ValueError(f"centroid_classes {unknown} are not foreground classes of {list(class_names)}")
        if not 0.0 <= p_drop_attribute <= 1.0:
            raise ValueError(f"p_drop_attribute must be in [0, 1], got {p_drop_attribute}")
        self._check_diffusion_args("stats_batches")
        if block_size is None or len(block_size) != 3:
            raise ValueError(f"block_size must be (D, H, W), got {block_size}")

        if label_ae_hparams is not None:
            self.label_ae = build_label_autoencoder(label_ae_hparams)
        elif label_ae_ckpt is not None:
            self.label_ae = load_label_autoencoder(label_ae_ckpt)
            self.hparams["label_ae_hparams"] = architecture_hparams(self.label_ae)
        else:
            raise ValueError("set label_ae_ckpt (a label autoencoder checkpoint) or label_ae_hparams")
        freeze(self.label_ae)
        if self.label_ae.label_nc != label_nc:
            raise DataError(f"the label autoencoder has label_nc={self.label_ae.label_nc}, this model {label_nc}")
        ae_names = self.label_ae.hparams.get("class_names")
        if ae_names is not None and [str(c) for c in ae_names] != [str(c) for c in class_names]:
            # same count, other table: every class would be generated under another class's name
            raise DataError(f"the label autoencoder was trained on classes {list(ae_names)}, this model's dataset "
                            f"has {list(class_names)}; train the autoencoder on the same label table")  # fmt: skip
        self.label_nc = label_nc
        self.class_names = [str(c) for c in class_names]
        self.block_size = tuple(int(s) for s in block_size)
        if any(s % f for s, f in zip(self.block_size, self.label_ae.latent_factor)):
            raise ValueError(f"block_size {self.block_size} is not divisible by {self.label_ae.latent_factor}")
        self.centroid_idx = [self.class_names.index(c) for c in centroid_classes]
        self.attribute_names = attribute_names(self.class_names, centroid_classes)
        n_attr = len(self.attribute_names)

        channels = self.label_ae.latent_channels
        net = AttributeDenoiser(channels, self.label_ae.latent_factor, n_attr, dict(denoiser_kwargs or {}))
        self._init_diffusion(net, channels, "std", compile=False)
        self.register_buffer("attr_mean", torch.zeros(n_attr))
        self.register_buffer("attr_std", torch.ones(n_attr))
        self.register_buffer("voxel_size_dhw", torch.zeros(3, dtype=torch.float64))  # median training voxel, mm
        self.register_buffer("attr_fitted", torch.tensor(False))

    # ------------------------------------------------------------------ helpers
    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(C, d, h, w) of a generated map's latent."""
        f = self.label_ae.latent_factor
        return (self.label_ae.latent_channels, *(s // k for s, k in zip(self.block_size, f)))

    @property
    def autoencoder(self) -> nn.Module:
        """The frozen label autoencoder."""
        return self.label_ae

    def attributes_of(self, label: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
        """Raw attributes (B, A) float64 of label maps (B, 1, D, H, W) with affines (B, 4, 4)."""
        return label_attributes(label, voxel_volume_ml(affine), self.label_nc, self.centroid_idx)

    def normalize_attributes(self, values: torch.Tensor) -> torch.Tensor:
        """Raw (B, A) -> (B, A) float32 in training-statistics units."""
        return ((values.double() - self.attr_mean.double()) / self.attr_std.double()).float()

    @torch.no_grad()
    def encode_labels(self, label: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) int -> normalised latent (B, C, d, h, w) float32 (posterior mean)."""
        return self.latent_norm.normalize(self.label_ae.encode(one_hot(label, self.label_nc)).float())

    # ------------------------------------------------------------------ statistics
    @property
    def stats_batches(self) -> int:
        return self.hparams.stats_batches

    @property
    def statistics_fitted(self) -> bool:
        return bool(self.attr_fitted) and self.latent_norm.is_fitted

    def fit_statistics(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        """Latent, attribute and voxel statistics of the first training batches."""
        latents, attrs, voxels = [], [], []
        for batch in batches:
            label, affine = batch["label"].to(self.device), batch["affine"].to(self.device)
            latents.append(self.label_ae.encode(one_hot(label, self.label_nc)).float())
            attrs.append(self.attributes_of(label, affine))
            norms = torch.linalg.norm(affine[:, :3, :3].double(), dim=1)  # (B, 3) column lengths I, J, K
            voxels.append(norms[:, [2, 0, 1]])  # (D, H, W) = (K, I, J)
        self.latent_norm.fit_std(latents, all_reduce=self._all_reduce_sum if self.trainer.world_size > 1 else None)
        a, vox = torch.cat(attrs), torch.cat(voxels)
        if self.trainer.world_size > 1:  # every rank measures the same statistics over all ranks' maps
            a, vox = self.all_gather(a).flatten(0, 1), self.all_gather(vox).flatten(0, 1)
        if a.shape[0] < 2:
            raise ValueError("attribute statistics need at least two training maps (raise stats_batches)")
        std = a.std(0)
        # a constant attribute (e.g. one class of equal size everywhere) gets unit scale instead of infinity
        self.attr_mean.copy_(a.mean(0).float())
        self.attr_std.copy_(torch.where(std > 1e-6 * a.abs().mean(0).clamp(min=1e-12), std, torch.ones_like(std)))
        self.voxel_size_dhw.copy_(vox.median(0).values)
        self.attr_fitted.fill_(True)
        log.info(
            "attribute statistics over %d maps: %s",
            a.shape[0],
            ", ".join(
                f"{n} {float(m):.4g} +- {float(sd):.3g}"
                for n, m, sd in zip(self.attribute_names, self.attr_mean, self.attr_std)
            ),
        )

    # ------------------------------------------------------------------ training
    def drop_mask(self, batch: int, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, A) float mask: each attribute kept with prob 1 − p_drop_attribute, all dropped with prob p_uncond."""
        hp = self.hparams
        keep = torch.rand(batch, num, device=self.device, generator=generator) >= hp.p_drop_attribute
        keep &= (torch.rand(batch, 1, device=self.device, generator=generator) >= hp.p_uncond).expand(-1, num)
        return keep.float()

    def training_inputs(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch's maps (B, 1, D, H, W), augmented when ``label_augment`` is set, and their raw
        attributes (B, A): measured on the augmented maps, so the condition describes the map the model learns."""
        label = augment_training_maps(batch, self.label_augment, self.global_step, self.global_rank)
        return label, self.attributes_of(label, batch["affine"])

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss on ``{"label": (B, 1, D, H, W) int64, "affine": (B, 4, 4), ...}`` (images are not used)."""
        label, raw = self.training_inputs(batch)
        z0 = self.encode_labels(label)
        values = self.normalize_attributes(raw)
        mask = self.drop_mask(*values.shape)
        loss = self._loss(self.denoiser, z0, (values, mask), None)
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=z0.shape[0])
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Seeded loss of the EMA denoiser with every attribute given."""
        label = batch["label"]
        z0 = self.encode_labels(label)
        values = self.normalize_attributes(self.attributes_of(label, batch["affine"]))
        loss = self._loss(self.ema.module, z0, (values, torch.ones_like(values)), self._generator(batch_idx))
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=z0.shape[0])

    @torch.no_grad()
    def log_volumes(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Real label maps and maps sampled with their attributes (B, 1, D, H, W) int64 for the montage callback."""
        label = batch["label"].to(self.device)
        values = self.attributes_of(label, batch["affine"].to(self.device))
        fake = self.sample_labels(values, torch.ones_like(values), generator=self._generator())
        return {"label": label.cpu(), "label_sample": fake.cpu()}

    # ------------------------------------------------------------------ sampling
    def condition(self, requested: Mapping[str, float], batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw attribute values (B, A) float64 and mask (B, A) from ``{attribute name: value}``.

        Raises:
            ValueError: an unknown attribute name (the message lists the valid ones).
        """
        values = torch.zeros(batch, len(self.attribute_names), dtype=torch.float64, device=self.device)
        mask = torch.zeros_like(values)
        for name, value in requested.items():
            if name not in self.attribute_names:
                raise ValueError(f"unknown attribute {name!r}; this model knows {', '.join(self.attribute_names)}")
            i = self.attribute_names.index(name)
            values[:, i], mask[:, i] = float(value), 1.0
        return values, mask

    @torch.no_grad()
    def sample_latents(
        self,
        values: torch.Tensor,
        mask: torch.Tensor,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        generator: torch.Generator | None = None,
        eta: float | None = None,
        like: torch.Tensor | None = None,
        strength: float = 1.0,
        use_ema: bool = True,
    ) -> torch.Tensor:
        """Sample normalised-space latents, then return them in the autoencoder's latent space.

        Args:
            values: (B, A) raw attribute values (mL, centroid units); ignored where ``mask`` is 0.
            mask: (B, A) 1 = attribute given, 0 = left free (all zeros: unconditional).
            sampler: "ddpm", "ddim" or "rflow" (default the checkpoint's).
            steps: sampler steps (default the checkpoint's; ddpm runs T).
            guidance: w of ``u + w·(c − u)`` (default the checkpoint's).
            generator: RNG on the model's device: same seed, same maps.
            eta: DDIM η.
            like: (B, 1, D, H, W) integer maps to vary: their latents are noised to ``strength`` and denoised.
            strength: fraction of the noise schedule ``like`` is noised to (1: ignore it entirely).
            use_ema: EMA weights (default) or the training weights.

        Returns:
            (B, C, d, h, w) float32 latents (denormalised).
        """
        if not (bool(self.attr_fitted) and self.latent_norm.is_fitted):
            raise RuntimeError("statistics are not set: train this model (or load a trained checkpoint) first")
        # sampler defaults and checks live in one place, the same as for image diffusion
        chosen = self.sampler_defaults.resolve(sampler, steps, guidance, eta, use_ema)
        sampler, steps, guidance, eta = chosen.sampler, chosen.steps, chosen.guidance, chosen.eta
        values = self.normalize_attributes(values.to(self.device))
        mask = mask.to(self.device, torch.float32)
        net = self.ema.module if use_ema else self.denoiser
        b = values.shape[0]
        none_given = not bool(mask.any())

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if none_given or guidance == 1.0:
                return net(x, t, values, mask)
            out = net(torch.cat((x, x)), torch.cat((t, t)), torch.cat((values, values)), torch.cat((mask, 0 * mask)))
            c, u = out.chunk(2)
            return combine(c, u, guidance)

        gens = [generator] * b if generator is not None else [torch.Generator(device=self.device) for _ in range(b)]
        if generator is None:
            for g in gens:
                g.manual_seed(int(torch.randint(0, 2**62, (1,))))
        if like is None or strength >= 1.0:  # from pure noise: the project's one sampling path
            z = sample_latent(denoise, self.schedule, self.latent_shape, gens, sampler, steps, eta, self.device)
        else:  # from the partly noised latent of ``like`` (SDEdit), the same scheduler steps below start_t
            noise = torch.cat([torch.randn((1, *self.latent_shape), device=self.device, generator=g) for g in gens])
            start_t = first_timestep(self.schedule, sampler, steps, int(noise[0, 0].numel()), strength)
            z0 = self.encode_labels(like.to(self.device))
            t0 = torch.full((b,), start_t, device=self.device, dtype=torch.long)
            x = self.schedule.add_noise(z0, noise, t0)
            z = self.schedule.sample(denoise, x, sampler, steps, eta, gens[0], start_t=start_t)
        return self.latent_norm.denormalize(z)

    @torch.no_grad()
    def sample_labels(self, values: torch.Tensor, mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """New integer label maps (B, 1, D, H, W) int64; arguments as :meth:`sample_latents`."""
        return self.label_ae.decode_labels(self.sample_latents(values, mask, **kwargs))
