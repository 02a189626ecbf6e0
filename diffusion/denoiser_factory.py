"""Build a denoiser from the name stored in the hyperparameters (``denoiser: unet3d_spade | unet3d | monai_spade``)."""

from __future__ import annotations

from collections.abc import Sequence

from diffusion.denoiser_base import Denoiser
from diffusion.monai_unet import MonaiSPADEUNet
from diffusion.unet3d import Unet3D, Unet3DSPADE

DENOISERS: dict[str, type[Denoiser]] = {
    "unet3d_spade": Unet3DSPADE,
    "unet3d": Unet3D,
    "monai_spade": MonaiSPADEUNet,
}


def build_denoiser(
    name: str,
    channels: int,
    label_nc: int,
    latent_factor: Sequence[int],
    kwargs: dict | None = None,
    extra_channels: int = 0,
) -> Denoiser:
    """Instantiate a denoiser.

    Args:
        name: key of :data:`DENOISERS`.
        channels: latent channels (the VQ-GAN's ``embedding_dim``).
        label_nc: one-hot classes.
        latent_factor: the VQ-GAN's (fd, fh, fw).
        kwargs: the remaining constructor arguments (``dim``, ``dim_mults``, ...), from the config.
        extra_channels: inputs concatenated to the latent (:attr:`Denoiser.extra_channels`), set by the model.

    Raises:
        ValueError: unknown name or an argument the chosen denoiser does not take.
    """
    if name not in DENOISERS:
        raise ValueError(f"denoiser must be one of {sorted(DENOISERS)}, got {name!r}")
    try:
        return DENOISERS[name](channels, label_nc, latent_factor, **(kwargs or {}), extra_channels=extra_channels)
    except TypeError as err:  # an unexpected keyword: a config typo
        raise ValueError(f"denoiser {name!r}: {err}") from err
