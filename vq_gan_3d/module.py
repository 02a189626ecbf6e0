"""``VQGANModule``: the stage-1 3D VQ-GAN (Med-LSDM / TATS lineage) as a Lightning 2.x module.

Encoder -> 1x1x1 pre-VQ conv -> EMA codebook -> 1x1x1 post-VQ conv -> decoder (normal or SPADE), trained with
L1 + commitment + 2D LPIPS on slices + 2D slice / 3D volume PatchGAN (hinge) + discriminator feature matching
(reference-notes §1). Manual optimisation, one encoder/codebook/decoder forward per batch, generator step then
discriminator step.

Step counting: both optimisers' ``step()`` is called on every batch (before the discriminator warm-up the
discriminators have no gradients, so Adam skips them and keeps no state), so Lightning's ``global_step`` advances by
**2 per batch**; ``discriminator_iter_start`` counts **batches** (``global_step // 2``).

Logged keys (``train/`` per step, ``val/`` per epoch):
    rec_loss        unweighted L1 between reconstruction and input (val/rec_loss is the checkpoint monitor)
    psnr            (val) per-volume PSNR in dB with data range 2 (images in [-1, 1]), averaged
    perceptual_loss unweighted LPIPS on slices (only when perceptual_weight > 0)
    commitment_loss commitment_cost * MSE(z, sg(e))
    perplexity      exp(entropy) of the batch's code histogram; code_usage: fraction of codes used by the batch
    g_image_loss / g_volume_loss, image_gan_feat_loss / volume_gan_feat_loss, g_loss (total generator objective)
    d_image_loss / d_volume_loss, d_loss, logits_{image,volume}_{real,fake}, gan_active (1 after warm-up)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from dataset.contract import one_hot
from vq_gan_3d.blocks import SamePadConv3d
from vq_gan_3d.codebook import CodebookOutput, EMACodebook
from vq_gan_3d.decoder import Decoder3D, SPADEDecoder3D
from vq_gan_3d.discriminator import PatchGAN
from vq_gan_3d.encoder import Encoder3D
from vq_gan_3d.losses import (
    DISC_LOSS_TYPES,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    psnr,
    sample_slices,
)

log = logging.getLogger(__name__)

DECODER_TYPES = ("normal", "spade")
FIRST_STAGE_PREFIXES = ("encoder.", "pre_vq_conv.", "codebook.", "post_vq_conv.", "decoder.")
_DISCRIMINATOR_PREFIXES = ("image_discriminator.", "volume_discriminator.")


def _to_primitive(value: Any) -> Any:
    """Turn mappings/sequences (e.g. OmegaConf containers) into dicts/lists so checkpoints load weights-only."""
    if isinstance(value, Mapping):
        return {str(k): _to_primitive(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_to_primitive(v) for v in value]
    return value


def _distributed() -> bool:
    """True inside a torch.distributed process group (DDP needs every parameter in every backward)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Turn ``requires_grad`` off for ``module``'s parameters inside the context, restoring each flag after.

    A forward inside builds no graph edges to those weights, so a backward computes the input gradients
    (to the generator) but not the weight gradients.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _zero_touch(params: list[nn.Parameter]) -> torch.Tensor:
    """``0 * sum(params)``: gives every parameter a (zero) gradient in a backward pass.

    DDP without ``find_unused_parameters`` expects every trainable parameter to receive a gradient in each
    backward; the generator and discriminator backwards each leave the other network's parameters out.
    """
    return sum(p.sum() for p in params) * 0.0


class VQGANModule(pl.LightningModule):
    """3D VQ-GAN with a normal or SPADE decoder, and the latent interface used by stage 2.

    Args:
        image_channels: image channels (1).
        label_nc: one-hot label channels K; required for ``decoder="spade"`` (None allowed for "normal").
        decoder: "normal" (GroupNorm) or "spade" (SPADE norms conditioned on the one-hot label map).
        n_hiddens: base width (16 in the paper).
        downsample: per-axis factors (D, H, W), powers of two (``[4, 4, 4]``).
        embedding_dim: latent / code dimension E (8).
        n_codes: codebook size (16384).
        num_groups: GroupNorm groups of encoder/normal decoder, capped at each channel count (32).
        padding_type: ``F.pad`` mode of the same-padded convolutions ("replicate").
        spade_hidden: hidden channels of each SPADE (128).
        spade_num_groups: groups of SPADE's parameter-free GroupNorm (8).
        spade_kernel: SPADE conv kernel (kD, kH, kW) ((1, 3, 3): in-plane).
        spade_lookup: compute SPADE's convs over the label map as lookups (exact up to summation order, see
            :mod:`vq_gan_3d.spade`). It pays off with wide SPADEs and costs with narrow ones, since the lookup's
            work grows with the number of distinct label neighbourhoods, so the tiny configs turn it off
            (README, Speed and memory).
        spade_lookup_max_mb: bound (MB) on what one SPADE call's lookup tables may hold; a call over it
            convolves instead (same computation as the conv path). None: no bound.
        spade_recompute: every SPADE keeps only its (gamma, beta) in training and recomputes its hidden map (or
            lookup rows) in the backward pass: less memory for one more modulation per backward (README, Speed
            and memory). Gradients equal the plain ones within fp32 round-off.
        ema_decay: codebook EMA decay (0.99).
        commitment_cost: commitment loss beta (0.25).
        restart_thres: dead-code restart threshold on the EMA count (1.0).
        random_restart: restart dead codes (EMA count below ``restart_thres``) from random encoder outputs.
        disc_channels: first-layer width of both PatchGANs (64).
        disc_layers: normalised conv layers of both PatchGANs (3).
        disc_loss_type: "hinge" or "vanilla".
        discriminator_iter_start: batches before the GAN terms switch on (discriminators untouched before).
        image_gan_weight: weight of the 2D slice discriminator's terms (1).
        volume_gan_weight: weight of the 3D volume discriminator's terms (1).
        l1_weight: weight of the L1 reconstruction loss (4).
        perceptual_weight: weight of 2D LPIPS on slices (4); 0 builds no LPIPS network.
        gan_feat_weight: weight of discriminator feature matching (4).
        slices_per_sample: depth slices per volume for LPIPS and the 2D discriminator (reference: 1, random).
        lr: Adam learning rate of both optimisers (no rescaling by batch size / GPUs).
        betas: Adam betas ((0.5, 0.9)).
        gradient_clip_val: max global grad norm per optimiser (manual clipping; None or 0 disables). Leave the
            Trainer's ``gradient_clip_val`` unset: Lightning forbids it with manual optimisation.
        perceptual_random_weights: LPIPS with a random VGG16 backbone (tests / CPU demos; logged warning).
        vgg_weights_path: torchvision ``vgg16-397923af.pth``; None = torch hub cache.
        inference_only: build no discriminators (first stage inside stage 2; cannot be trained).
        checkpointing: activation checkpointing of the encoder's and decoder's residual blocks (SPADE blocks
            included): their activations are recomputed in the backward pass, which saves memory and costs
            about one more forward of those blocks. Gradients equal the plain ones within fp32 round-off.
    """

    def __init__(
        self,
        image_channels: int = 1,
        label_nc: int | None = None,
        decoder: str = "normal",
        n_hiddens: int = 16,
        downsample: Sequence[int] = (4, 4, 4),
        embedding_dim: int = 8,
        n_codes: int = 16384,
        num_groups: int = 32,
        padding_type: str = "replicate",
        spade_hidden: int = 128,
        spade_num_groups: int = 8,
        spade_kernel: Sequence[int] = (1, 3, 3),
        spade_lookup: bool = True,
        spade_lookup_max_mb: float | None = None,
        spade_recompute: bool = False,
        ema_decay: float = 0.99,
        commitment_cost: float = 0.25,
        restart_thres: float = 1.0,
        random_restart: bool = True,
        disc_channels: int = 64,
        disc_layers: int = 3,
        disc_loss_type: str = "hinge",
        discriminator_iter_start: int = 10000,
        image_gan_weight: float = 1.0,
        volume_gan_weight: float = 1.0,
        l1_weight: float = 4.0,
        perceptual_weight: float = 4.0,
        gan_feat_weight: float = 4.0,
        slices_per_sample: int = 1,
        lr: float = 3e-4,
        betas: Sequence[float] = (0.5, 0.9),
        gradient_clip_val: float | None = 1.0,
        perceptual_random_weights: bool = False,
        vgg_weights_path: str | None = None,
        inference_only: bool = False,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for key in list(self.hparams):
            self.hparams[key] = _to_primitive(self.hparams[key])
        self._check_args()
        hp = self.hparams
        self.automatic_optimization = False
        self._frozen = False

        self.encoder = Encoder3D(image_channels, n_hiddens, hp.downsample, num_groups, padding_type, checkpointing)
        channels = self.encoder.out_channels
        self.pre_vq_conv = SamePadConv3d(channels, embedding_dim, 1, padding_type=padding_type)
        self.codebook = EMACodebook(
            n_codes, embedding_dim, ema_decay, commitment_cost, restart_thres, random_restart=random_restart
        )
        self.post_vq_conv = SamePadConv3d(embedding_dim, channels, 1, padding_type=padding_type)
        if decoder == "spade":
            self.decoder = SPADEDecoder3D(
                image_channels, n_hiddens, hp.downsample, label_nc, spade_hidden, hp.spade_kernel,
                spade_num_groups, padding_type, lookup=spade_lookup, checkpointing=checkpointing,
                lookup_max_mb=spade_lookup_max_mb, spade_recompute=spade_recompute,
            )  # fmt: skip
        else:
            self.decoder = Decoder3D(
                image_channels, n_hiddens, hp.downsample, num_groups, padding_type, checkpointing
            )  # fmt: skip
        if not inference_only:
            self.image_discriminator = PatchGAN(2, image_channels, disc_channels, disc_layers)
            self.volume_discriminator = PatchGAN(3, image_channels, disc_channels, disc_layers)
        # LPIPS is built on first use and kept out of the module tree on purpose: it is a fixed metric, so it is
        # never checkpointed, never handed to an optimiser or DDP, and loading a checkpoint never needs VGG files.
        self.__dict__["_perceptual"] = None

    def _check_args(self) -> None:
        hp = self.hparams
        if hp.decoder not in DECODER_TYPES:
            raise ValueError(f"decoder must be one of {DECODER_TYPES}, got {hp.decoder!r}")
        if hp.label_nc is not None and (not isinstance(hp.label_nc, int) or hp.label_nc < 1):
            raise ValueError(f"label_nc must be a positive int or None, got {hp.label_nc!r}")
        if hp.decoder == "spade" and hp.label_nc is None:
            raise ValueError("decoder='spade' needs label_nc (the number of one-hot label channels)")
        if hp.disc_loss_type not in DISC_LOSS_TYPES:
            raise ValueError(f"disc_loss_type must be one of {DISC_LOSS_TYPES}, got {hp.disc_loss_type!r}")
        for key in ("image_gan_weight", "volume_gan_weight", "l1_weight", "perceptual_weight", "gan_feat_weight"):
            if hp[key] < 0:
                raise ValueError(f"{key} must be >= 0, got {hp[key]}")
        if hp.discriminator_iter_start < 0:
            raise ValueError(f"discriminator_iter_start must be >= 0 (batches), got {hp.discriminator_iter_start}")
        if hp.slices_per_sample < 1:
            raise ValueError(f"slices_per_sample must be >= 1, got {hp.slices_per_sample}")
        if hp.lr <= 0:
            raise ValueError(f"lr must be > 0, got {hp.lr}")
        if len(hp.betas) != 2 or not all(0.0 <= b < 1.0 for b in hp.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {hp.betas}")
        if hp.gradient_clip_val is not None and hp.gradient_clip_val < 0:
            raise ValueError(f"gradient_clip_val must be >= 0 or None, got {hp.gradient_clip_val}")
        if hp.spade_hidden < 1:
            raise ValueError(f"spade_hidden must be >= 1, got {hp.spade_hidden}")

    # ------------------------------------------------------------------ latent interface (stage 1 -> stage 2)
    @property
    def latent_factor(self) -> tuple[int, int, int]:
        """Downsampling factor per axis (D, H, W): latent size = image size // factor."""
        return tuple(int(f) for f in self.hparams.downsample)  # type: ignore[return-value]

    @property
    def embedding_dim(self) -> int:
        """Latent channels E."""
        return int(self.hparams.embedding_dim)

    @property
    def decoder_type(self) -> str:
        """Decoder kind, "normal" or "spade" (the latter needs ``seg`` in :meth:`decode`)."""
        return str(self.hparams.decoder)

    @property
    def label_nc(self) -> int | None:
        """One-hot label channels the model was configured with (always set for the SPADE decoder)."""
        return self.hparams.label_nc

    @property
    def codebook_embeddings(self) -> torch.Tensor:
        """(n_codes, E) code vectors (detached)."""
        return self.codebook.embeddings.detach()

    @property
    def batch_step(self) -> int:
        """Training batches seen: ``global_step // 2`` (both optimisers step once per batch)."""
        return self.global_step // 2

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous pre-quantisation latent (no autograd graph).

        Args:
            x: (B, C, D, H, W) image in [-1, 1], D, H, W divisible by :attr:`latent_factor`.

        Returns:
            z: (B, E, D/fd, H/fh, W/fw).
        """
        return self.pre_vq_conv(self.encoder(x))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, seg: torch.Tensor | None = None) -> torch.Tensor:
        """Quantise a continuous latent to the nearest codes and decode it (no autograd graph, no codebook update).

        Args:
            z: (B, E, d, h, w) latent.
            seg: (B, label_nc, d*fd, h*fh, w*fw) one-hot label map at image resolution; required by the SPADE
                decoder, rejected by the normal one.

        Returns:
            x_hat: (B, C, d*fd, h*fh, w*fw) in (-1, 1).
        """
        self._check_seg(seg, z)
        return self._decode_codes(self.codebook(z, allow_update=False).z_q, seg)

    def _check_seg(self, seg: torch.Tensor | None, z: torch.Tensor) -> None:
        if self.decoder_type == "normal":
            if seg is not None:
                raise ValueError("the normal decoder takes no label map: call decode(z) without seg")
            return
        if seg is None:
            raise ValueError(f"the SPADE decoder needs seg: a (B, {self.label_nc}, D, H, W) one-hot label map")
        expected = (z.shape[0], self.label_nc, *(s * f for s, f in zip(z.shape[2:], self.latent_factor)))
        if tuple(seg.shape) != expected:
            raise ValueError(f"seg must be one-hot {expected} (B, label_nc, image D, H, W), got {tuple(seg.shape)}")

    def _decode_codes(self, z_q: torch.Tensor, seg: torch.Tensor | None) -> torch.Tensor:
        h = self.post_vq_conv(z_q)
        return self.decoder(h, seg) if self.decoder_type == "spade" else self.decoder(h)

    def forward(self, x: torch.Tensor, seg: torch.Tensor | None = None) -> tuple[torch.Tensor, CodebookOutput]:
        """Reconstruct ``x``: one encoder, codebook and decoder pass (the codebook updates in training mode).

        Args:
            x: (B, C, D, H, W) in [-1, 1].
            seg: (B, K, D, H, W) one-hot, SPADE decoder only.

        Returns:
            x_hat (B, C, D, H, W) in (-1, 1) with gradients to the encoder (straight-through), and the codebook output.
        """
        z = self.pre_vq_conv(self.encoder(x))
        self._check_seg(seg, z)
        vq = self.codebook(z)
        return self._decode_codes(vq.z_q, seg), vq

    # ------------------------------------------------------------------ first-stage export
    def first_stage_state(self) -> dict[str, Any]:
        """What stage 2 needs to rebuild this autoencoder: primitive hparams and the first-stage weights/buffers.

        Returns:
            ``{"hparams": dict, "state_dict": {...}}`` with encoder, pre/post-VQ convs, codebook (incl. its
            ``initialized`` flag) and decoder; no discriminators, no LPIPS.
        """
        state = {k: v.detach().clone() for k, v in self.state_dict().items() if k.startswith(FIRST_STAGE_PREFIXES)}
        return {"hparams": _to_primitive(dict(self.hparams)), "state_dict": state}

    @classmethod
    def from_first_stage_state(cls, state: Mapping[str, Any]) -> VQGANModule:
        """Rebuild a frozen, eval-mode autoencoder (no discriminators) from :meth:`first_stage_state`'s output."""
        if not isinstance(state, Mapping) or "hparams" not in state or "state_dict" not in state:
            raise ValueError("expected a dict with 'hparams' and 'state_dict' (VQGANModule.first_stage_state())")
        model = cls(**{**state["hparams"], "inference_only": True})
        model.load_state_dict(state["state_dict"], strict=True)
        model.freeze()
        return model

    def freeze(self) -> None:
        """Eval mode and no gradients; ``train()`` keeps a frozen model in eval mode (no codebook updates)."""
        self._frozen = True
        super().freeze()

    def unfreeze(self) -> None:
        """Undo :meth:`freeze`."""
        self._frozen = False
        super().unfreeze()

    def train(self, mode: bool = True) -> VQGANModule:
        """As ``nn.Module.train``, but a frozen first stage stays in eval mode."""
        return super().train(mode and not getattr(self, "_frozen", False))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """An ``inference_only`` model loads a training checkpoint by dropping the discriminator weights."""
        if self.hparams.inference_only and "state_dict" in checkpoint:
            checkpoint["state_dict"] = {
                k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(_DISCRIMINATOR_PREFIXES)
            }

    # ------------------------------------------------------------------ losses
    def perceptual_net(self) -> nn.Module:
        """The frozen LPIPS network, built on first call (needs the VGG16 file unless perceptual_random_weights)."""
        net = self.__dict__["_perceptual"]
        if net is None:
            from vq_gan_3d.perceptual import SlicePerceptualLoss

            net = SlicePerceptualLoss(self.hparams.perceptual_random_weights, self.hparams.vgg_weights_path)
            self.__dict__["_perceptual"] = net
        return net

    def _perceptual_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS over slice pairs (N, C, H, W)."""
        net = self.perceptual_net()
        if next(net.parameters()).device != a.device:
            net.to(a.device)
        return net(a, b).mean()

    def on_fit_start(self) -> None:
        """Enter training mode and build LPIPS, so missing VGG weights fail before the first batch.

        Lightning 2.x does not call ``train()`` at fit start; a module left in eval mode (e.g. after inspection)
        would otherwise train without codebook updates.
        """
        self.train()
        if self.hparams.perceptual_weight > 0:
            self.perceptual_net()

    def _seg_from_batch(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        return one_hot(batch["label"], self.label_nc) if self.decoder_type == "spade" else None

    def _generator_params(self) -> list[nn.Parameter]:
        return [p for m in (self.encoder, self.pre_vq_conv, self.post_vq_conv, self.decoder) for p in m.parameters()]

    def _discriminator_params(self) -> list[nn.Parameter]:
        return [*self.image_discriminator.parameters(), *self.volume_discriminator.parameters()]

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """One batch: a single reconstruction, then a generator step and a discriminator step.

        Args:
            batch: ``{"image": (B, 1, D, H, W) in [-1, 1], "label": (B, 1, D, H, W) int64, ...}``.
        """
        if self.hparams.inference_only:
            raise RuntimeError("this VQGANModule was built with inference_only=True and cannot be trained")
        hp = self.hparams
        opt_g, opt_d = self.optimizers()
        x = batch["image"]
        seg = self._seg_from_batch(batch)
        zero = x.new_zeros(())

        # 1. One encoder -> codebook (EMA update) -> decoder pass.
        x_hat, vq = self(x, seg)
        frames, frames_hat = sample_slices(x, x_hat, hp.slices_per_sample)
        rec_loss = F.l1_loss(x_hat, x)
        perceptual = self._perceptual_loss(frames, frames_hat) if hp.perceptual_weight > 0 else zero

        # 2. Generator objective; GAN terms only after the warm-up (before it they would be weighted by 0).
        gan_active = self.batch_step >= hp.discriminator_iter_start
        discs = [
            (name, disc, real, fake, weight)
            for name, disc, real, fake, weight in (
                ("image", self.image_discriminator, frames, frames_hat, hp.image_gan_weight),
                ("volume", self.volume_discriminator, x, x_hat, hp.volume_gan_weight),
            )
            if gan_active and weight > 0
        ]
        # The discriminators do not change between the two steps, so one forward on the real data gives the
        # generator's feature-matching targets and the discriminator's real logits (same values as two).
        real_out = {name: disc(real.detach()) for name, disc, real, _, _ in discs}
        # Single process: one forward on the reconstruction serves both steps too; each backward is restricted
        # to its own network's parameters (``inputs=``), so the generator backward computes no discriminator
        # weight gradients and the discriminator backward does not reach into the generator. Under DDP, whose
        # reducer expects every parameter in every backward, the generator step's discriminator forward is
        # built without edges to the discriminator weights instead, and the discriminator step runs its own; so
        # with fp16 loss scaling, whose scale may change at the generator's optimiser step.
        ddp = _distributed()
        shared = not ddp and not self._loss_scaled()
        fake_out: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        g = {"g_image_loss": zero, "g_volume_loss": zero, "image_gan_feat_loss": zero, "volume_gan_feat_loss": zero}
        for name, disc, _, fake, _ in discs:
            if shared:
                fake_out[name] = disc(fake)
                logits_fake, feats_fake = fake_out[name]
            else:
                with _frozen(disc):  # no graph to the discriminator weights: their gradients would be discarded
                    logits_fake, feats_fake = disc(fake)
            g[f"g_{name}_loss"] = generator_adversarial_loss(logits_fake, hp.disc_loss_type)
            g[f"{name}_gan_feat_loss"] = feature_matching_loss(feats_fake, real_out[name][1])
        g_loss = (
            hp.l1_weight * rec_loss
            + vq.commitment_loss
            + hp.perceptual_weight * perceptual
            + hp.image_gan_weight * g["g_image_loss"]
            + hp.volume_gan_weight * g["g_volume_loss"]
            + hp.gan_feat_weight * (g["image_gan_feat_loss"] + g["volume_gan_feat_loss"])
        )

        def discriminator_losses() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
            d, d_loss = {}, zero
            for name, disc, _, fake, weight in discs:
                logits_real = real_out[name][0]
                logits_fake = fake_out[name][0] if shared else disc(fake.detach())[0]
                d[f"d_{name}_loss"] = discriminator_loss(logits_real, logits_fake, hp.disc_loss_type)
                d[f"logits_{name}_real"] = logits_real.detach().mean()
                d[f"logits_{name}_fake"] = logits_fake.detach().mean()
                d_loss = d_loss + weight * d[f"d_{name}_loss"]
            return d, d_loss

        opt_g.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)  # the last batch's discriminator gradients: not needed, free them now
        if shared:
            # The discriminator backward goes first and keeps only its own (small) part of the graph, which the
            # generator backward then traverses; the generator backward frees the graph as it goes, so the peak
            # memory stays that of one backward. Same gradients as in the order of the steps below.
            d, d_loss = discriminator_losses()
            if discs:
                used = [p for _, disc, *_ in discs for p in disc.parameters()]
                self.manual_backward(d_loss, inputs=used, retain_graph=True)
            self.manual_backward(g_loss, inputs=self._generator_params())
        else:
            touch = _zero_touch(self._discriminator_params()) if ddp else zero
            self.manual_backward(g_loss + touch)
        opt_g.step()  # gradients are clipped in on_before_optimizer_step (after AMP unscaling)

        # 3. Discriminator step on the detached reconstructions (single process: its gradients are already
        #    there). Before the warm-up ends the discriminators get no gradient at all, so Adam skips them (no
        #    state, no step count) and its bias correction starts with the first real update; opt_d.step() is
        #    still called, which keeps global_step at 2 per batch.
        if not shared:
            d, d_loss = discriminator_losses()
            opt_d.zero_grad(set_to_none=True)
            if ddp:  # DDP expects a gradient for every parameter in every backward
                self.manual_backward(d_loss + _zero_touch(self._discriminator_params() + self._generator_params()))
                if not discs:
                    opt_d.zero_grad(set_to_none=True)
            elif discs:
                self.manual_backward(d_loss)
        opt_d.step()

        logs = {
            "rec_loss": rec_loss,
            "commitment_loss": vq.commitment_loss,
            "perplexity": vq.perplexity,
            "code_usage": vq.code_usage,
            "g_loss": g_loss,
            "d_loss": d_loss,
            "gan_active": float(gan_active),
            **g,
            **d,
        }
        if hp.perceptual_weight > 0:
            logs["perceptual_loss"] = perceptual
        self.log("train/rec_loss", logs.pop("rec_loss"), on_step=True, prog_bar=True, batch_size=x.shape[0])
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, on_step=True, batch_size=x.shape[0])

    def _loss_scaled(self) -> bool:
        """True when a GradScaler scales the losses (fp16 AMP); it updates its scale at every optimiser step."""
        trainer = self._trainer
        return trainer is not None and getattr(trainer.precision_plugin, "scaler", None) is not None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the global gradient norm of the optimiser about to step (after AMP has unscaled the gradients)."""
        if self.hparams.gradient_clip_val:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.hparams.gradient_clip_val, gradient_clip_algorithm="norm"
            )

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Reconstruct without codebook updates and log L1, PSNR, codebook statistics (and LPIPS)."""
        hp = self.hparams
        x = batch["image"]
        seg = self._seg_from_batch(batch)
        z = self.pre_vq_conv(self.encoder(x))
        self._check_seg(seg, z)
        vq = self.codebook(z, allow_update=False)
        x_hat = self._decode_codes(vq.z_q, seg)
        logs = {
            "rec_loss": F.l1_loss(x_hat, x),
            "psnr": psnr(x_hat, x, data_range=2.0).mean(),
            "commitment_loss": vq.commitment_loss,
            "perplexity": vq.perplexity,
            "code_usage": vq.code_usage,
        }
        if hp.perceptual_weight > 0:
            frames, frames_hat = sample_slices(x, x_hat, hp.slices_per_sample, random=False)
            logs["perceptual_loss"] = self._perceptual_loss(frames, frames_hat)
        self.log_dict({f"val/{k}": v for k, v in logs.items()}, on_epoch=True, sync_dist=True, batch_size=x.shape[0])

    @torch.no_grad()
    def log_volumes(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Input, reconstruction and label of a batch for image/GIF logging (no codebook update).

        Returns:
            ``{"input": (B, C, D, H, W), "reconstruction": (B, C, D, H, W), "label": (B, 1, D, H, W) int64}`` on CPU.
        """
        x = batch["image"].to(self.device)
        seg = one_hot(batch["label"], self.label_nc).to(self.device) if self.decoder_type == "spade" else None
        x_hat = self._decode_codes(self.codebook(self.pre_vq_conv(self.encoder(x)), allow_update=False).z_q, seg)
        return {"input": x.detach().cpu(), "reconstruction": x_hat.float().cpu(), "label": batch["label"].cpu()}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam for the autoencoder (the EMA codebook has no parameters) and Adam for both discriminators."""
        if self.hparams.inference_only:
            raise RuntimeError("this VQGANModule was built with inference_only=True and cannot be trained")
        betas = tuple(self.hparams.betas)
        opt_g = torch.optim.Adam(self._generator_params(), lr=self.hparams.lr, betas=betas)
        opt_d = torch.optim.Adam(self._discriminator_params(), lr=self.hparams.lr, betas=betas)
        return [opt_g, opt_d]
