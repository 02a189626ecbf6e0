"""GAN losses, discriminator feature matching, slice sampling and PSNR for the 3D VQ-GAN (reference-notes §1.8)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DISC_LOSS_TYPES = ("hinge", "vanilla")


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, loss_type: str = "hinge") -> torch.Tensor:
    """Discriminator loss on real and fake logit maps, scalar.

    ``hinge``: 0.5 (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))]); ``vanilla``: 0.5 (E[softplus(-D(x))] +
    E[softplus(D(x_hat))]) (binary cross-entropy with logits).
    """
    if loss_type == "hinge":
        return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
    if loss_type == "vanilla":
        return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())
    raise ValueError(f"disc_loss_type must be one of {DISC_LOSS_TYPES}, got {loss_type!r}")


def generator_adversarial_loss(logits_fake: torch.Tensor, loss_type: str = "hinge") -> torch.Tensor:
    """Generator term, scalar: ``-E[D(x_hat)]`` for hinge (as the reference), non-saturating
    ``E[softplus(-D(x_hat))]`` for vanilla."""
    if loss_type == "hinge":
        return -logits_fake.mean()
    if loss_type == "vanilla":
        return F.softplus(-logits_fake).mean()
    raise ValueError(f"disc_loss_type must be one of {DISC_LOSS_TYPES}, got {loss_type!r}")


def feature_matching_loss(feats_fake: list[torch.Tensor], feats_real: list[torch.Tensor]) -> torch.Tensor:
    """pix2pixHD feature matching: ``4 / L * sum_l L1(f_fake_l, sg(f_real_l))`` over the L intermediate maps.

    The ``4 / L`` layer weight is the reference's ``4 / (num_layers + 1)`` (L = num_layers + 1).
    """
    if len(feats_fake) != len(feats_real) or not feats_fake:
        raise ValueError(f"need matching non-empty feature lists, got {len(feats_fake)} and {len(feats_real)}")
    weight = 4.0 / len(feats_fake)
    return weight * sum(F.l1_loss(f, r.detach()) for f, r in zip(feats_fake, feats_real))


def sample_slices(
    x: torch.Tensor, x_hat: torch.Tensor, n_slices: int = 1, random: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the same depth slices from ``x`` and ``x_hat`` for the 2D losses.

    Args:
        x: (B, C, D, H, W) input volume.
        x_hat: (B, C, D, H, W) reconstruction.
        n_slices: slices per sample (the reference used one).
        random: draw slice indices uniformly per sample (training; uses the global torch RNG); otherwise take
            ``n_slices`` evenly spaced slices (validation, deterministic).

    Returns:
        Two (B * n_slices, C, H, W) tensors.
    """
    b, c, d, h, w = x.shape
    if random:
        idx = torch.randint(0, d, (b, n_slices), device=x.device)
    else:
        idx = torch.linspace(0, d - 1, n_slices + 2, device=x.device)[1:-1].round().long().expand(b, n_slices)
    gather = idx.view(b, 1, n_slices, 1, 1).expand(b, c, n_slices, h, w)

    def pick(v: torch.Tensor) -> torch.Tensor:
        return v.gather(2, gather).transpose(1, 2).reshape(b * n_slices, c, h, w)

    return pick(x), pick(x_hat)


def psnr(x_hat: torch.Tensor, x: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-sample PSNR in dB, ``10 log10(data_range^2 / MSE)``; data range 2 for images in [-1, 1].

    Args:
        x_hat: (B, ...) prediction.
        x: (B, ...) reference.
        data_range: max - min of the intensity scale.

    Returns:
        (B,) PSNR; MSE is floored at 1e-10 so identical inputs give 100 dB plus 10 log10(range^2).
    """
    mse = (x_hat.float() - x.float()).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return 10.0 * torch.log10(data_range**2 / mse)
