"""Label autoencoder of the ``labels`` stage (SPEC section 11): one-hot label map in, class logits out.

The first stage of the label-map generator, beside the VQ-GAN it borrows its building blocks from: the encoder is
:class:`~vq_gan_3d.encoder.Encoder3D` (with ``label_nc`` input channels) followed by a 1x1x1 conv to the mean and
log-variance of the latent; the decoder is :class:`~vq_gan_3d.decoder.Decoder3D` run without its final ``tanh``,
so its output channels are class logits. Loss: cross-entropy + soft Dice (MONAI ``DiceCELoss`` on the softmax) +
``kl_weight`` times the KL divergence to N(0, I). No GAN: a label map is piecewise constant and cross-entropy +
Dice already penalises wrong classes and boundaries directly.

Why a KL bottleneck rather than a quantised one: the label latent diffusion works on a continuous latent, and the
KL term (with a small weight) keeps that latent smooth and bounded so that nearby latents decode to nearby maps,
which is what lets ``--like`` variations (noise a map's latent partway, denoise) stay close to the source map. A
codebook would add dead codes, a commitment loss and a restart schedule, none of which a 5-40 class label map
needs, and the diffusion would see the pre-quantisation latent anyway. The diffusion uses the posterior *mean*
(:meth:`LabelAutoencoder.encode`), never a sample: caching ``mu + sigma * eps`` puts a noise floor under the
diffusion loss (NV-Generate-CTMR #45).

Logged keys: ``train/loss``, ``train/ce_dice``, ``train/kl``; ``val/loss``, ``val/ce_dice``, ``val/kl`` and
``val/dice`` (hard mean foreground Dice of the reconstruction from the posterior mean).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from dataset.contract import one_hot
from dataset.dice import per_class_dice
from dataset.label_augment import LabelAugment, augment_training_maps
from dataset.registry import plain_data_info
from vq_gan_3d.blocks import SamePadConv3d
from vq_gan_3d.decoder import Decoder3D
from vq_gan_3d.encoder import Encoder3D

log = logging.getLogger(__name__)


def hard_dice(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Foreground Dice of integer maps (B, D, H, W), the batch pooled as one volume (a validation monitor).

    Classes absent from both count as 1 so that the monitor has a value on every batch.
    """
    pooled = [x.reshape(1, 1, -1, *x.shape[-2:]) for x in (pred, target)]  # (1, 1, B * D, H, W)
    return torch.nan_to_num(per_class_dice(*pooled, num_classes)[0].float(), nan=1.0).mean()


class LabelAutoencoder(pl.LightningModule):
    """KL autoencoder of one-hot label maps.

    Args:
        label_nc: K, classes including background (``${dataset.label_nc}``).
        n_hiddens: encoder/decoder base width (as the VQ-GAN's).
        downsample: per-axis factors (D, H, W), powers of two; the latent is ``size / downsample``.
        latent_channels: channels C of the latent the label diffusion models.
        num_groups: GroupNorm groups (capped at the channel count).
        padding_type: ``F.pad`` mode of the convolutions.
        kl_weight: weight of the KL term (small: a regulariser of the latent scale, not a generative prior).
        dice_weight: weight of the soft Dice term next to cross-entropy (weight 1).
        lr: Adam learning rate.
        betas: Adam betas.
        class_names: K names, background first (``${dataset.class_names}``); stored for generation.
        block_size: (D, H, W) of the training blocks (``${dataset.block_size}``).
        data_info: the dataset config, stored in the checkpoint as plain data (not used in training):
            :func:`dataset.registry.plain_data_info`, a label table file's contents, not its path, no ``_target_``.
        label_augment: seeded spatial augmentation of the training maps (:class:`dataset.label_augment.LabelAugment`
            fields), or None for none. Training only: validation sees the maps as they are.
    """

    def __init__(
        self,
        label_nc: int,
        n_hiddens: int = 16,
        downsample: Sequence[int] = (4, 4, 4),
        latent_channels: int = 4,
        num_groups: int = 8,
        padding_type: str = "replicate",
        kl_weight: float = 1e-6,
        dice_weight: float = 1.0,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        class_names: Sequence[str] | None = None,
        block_size: Sequence[int] | None = None,
        data_info: dict | None = None,
        label_augment: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # as the other stages: a checkpoint holds checked data only (the table's ids and names, never a file path)
        self.hparams["data_info"] = plain_data_info(data_info)
        self.label_augment = LabelAugment.from_config(label_augment)
        self.hparams["label_augment"] = self.label_augment.as_dict() if self.label_augment else None
        if not isinstance(label_nc, int) or label_nc < 2:
            raise ValueError(f"label_nc must be an int >= 2, got {label_nc!r}")
        if latent_channels < 1 or kl_weight < 0 or dice_weight < 0 or lr <= 0:
            raise ValueError("need latent_channels >= 1, kl_weight >= 0, dice_weight >= 0 and lr > 0")
        if class_names is not None and len(class_names) != label_nc:
            raise ValueError(f"class_names has {len(class_names)} names, label_nc is {label_nc}")
        self.label_nc = label_nc
        self.latent_factor = tuple(int(f) for f in downsample)
        self.encoder = Encoder3D(label_nc, n_hiddens, downsample, num_groups, padding_type)
        self.to_moments = SamePadConv3d(self.encoder.out_channels, 2 * latent_channels, 1, padding_type=padding_type)
        self.decoder = Decoder3D(label_nc, n_hiddens, downsample, num_groups, padding_type)
        self.from_latent = SamePadConv3d(latent_channels, self.decoder.in_channels, 1, padding_type=padding_type)
        self.latent_channels = latent_channels
        from monai.losses import DiceCELoss

        self.ce_dice = DiceCELoss(softmax=True, lambda_ce=1.0, lambda_dice=dice_weight)

    # ------------------------------------------------------------------ latent interface
    def moments(self, seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """seg (B, K, D, H, W) one-hot -> (mean, log-variance), each (B, C, D/fd, H/fh, W/fw)."""
        if seg.dim() != 5 or seg.shape[1] != self.label_nc:
            raise ValueError(f"seg must be one-hot (B, {self.label_nc}, D, H, W), got {tuple(seg.shape)}")
        mean, logvar = self.to_moments(self.encoder(seg)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, seg: torch.Tensor) -> torch.Tensor:
        """seg (B, K, D, H, W) one-hot -> posterior mean (B, C, d, h, w): the latent the diffusion models."""
        return self.moments(seg)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, C, d, h, w) -> class logits (B, K, D, H, W): :class:`Decoder3D`'s layers without the tanh."""
        dec = self.decoder
        h = F.silu(dec.first_norm(self.from_latent(z)))
        for stage in dec.stages:
            h = stage.res2(stage.res1(stage.up(h)))
        return dec.conv_last(h)

    def decode_labels(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, C, d, h, w) -> integer label maps (B, 1, D, H, W) int64 (argmax of the logits)."""
        return self.decode(z).argmax(1, keepdim=True)

    # ------------------------------------------------------------------ training
    def _losses(self, label: torch.Tensor, sample: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        seg = one_hot(label, self.label_nc)
        mean, logvar = self.moments(seg)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
        logits = self.decode(z)
        rec = self.ce_dice(logits, seg)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(1).mean()
        return {"loss": rec + self.hparams.kl_weight * kl, "ce_dice": rec, "kl": kl}, logits

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss of one batch ``{"label": (B, 1, D, H, W) int64, "affine": (B, 4, 4), ...}`` (images are not used);
        the maps are augmented first when ``label_augment`` is set."""
        label = augment_training_maps(batch, self.label_augment, self.global_step, self.global_rank)
        losses, _ = self._losses(label, sample=True)
        n = label.shape[0]
        self.log("train/loss", losses["loss"], on_step=True, prog_bar=True, batch_size=n)
        self.log_dict({"train/ce_dice": losses["ce_dice"], "train/kl": losses["kl"]}, on_step=True, batch_size=n)
        return losses["loss"]

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Deterministic losses (posterior mean) and hard foreground Dice of the reconstruction."""
        label = batch["label"]
        losses, logits = self._losses(label, sample=False)
        losses["dice"] = hard_dice(logits.argmax(1), label[:, 0], self.label_nc)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, on_epoch=True, sync_dist=True, batch_size=len(label))

    @torch.no_grad()
    def log_volumes(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Real and reconstructed label maps (B, 1, D, H, W) int64 for the montage callback."""
        label = batch["label"].to(self.device)
        rec = self.decode_labels(self.encode(one_hot(label, self.label_nc)))
        return {"label": label.cpu(), "label_reconstruction": rec.cpu()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, betas=tuple(self.hparams.betas))


# ---------------------------------------------------------------------- loading inside the label diffusion
#: The hyperparameters that define the architecture (what the label diffusion stores to rebuild it).
ARCH_KEYS = ("label_nc", "n_hiddens", "downsample", "latent_channels", "num_groups", "padding_type")


def architecture_hparams(model: LabelAutoencoder) -> dict[str, Any]:
    """Plain-data architecture of a label autoencoder (ints, strings, lists), plus its class names."""
    hp = model.hparams
    out = {k: list(hp[k]) if isinstance(hp[k], Sequence) and not isinstance(hp[k], str) else hp[k] for k in ARCH_KEYS}
    out["class_names"] = list(hp["class_names"]) if hp.get("class_names") is not None else None
    return out


def build_label_autoencoder(hparams: Mapping[str, Any]) -> LabelAutoencoder:
    """An untrained label autoencoder of the stored architecture (weights are loaded by the caller)."""
    unknown = set(hparams) - set(ARCH_KEYS) - {"class_names"}
    if unknown:
        raise ValueError(f"unknown label autoencoder hyperparameters {sorted(unknown)}")
    return LabelAutoencoder(**dict(hparams))


def load_label_autoencoder(path: str) -> LabelAutoencoder:
    """A trained label autoencoder from its Lightning checkpoint (``weights_only``; nothing in it names code).

    Raises:
        ValueError: not a label autoencoder checkpoint.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if "latent_channels" not in hp or "label_nc" not in hp or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a label autoencoder checkpoint (train/train_label_ae.py writes those)")
    model = build_label_autoencoder({k: hp[k] for k in (*ARCH_KEYS, "class_names") if k in hp})
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients (the frozen first stage of the label diffusion)."""
    model.eval()
    model.requires_grad_(False)
    return model
