"""Stage 2: semantic latent diffusion on a frozen 3D VQ-GAN (Med-LSDM).

``module.LatentDiffusionModule`` (training, sampling, checkpoints) is built from: ``unet3d`` (``Unet3DSPADE`` /
``Unet3D``), ``monai_unet`` (MONAI's SPADE U-Net), ``denoiser`` (shared interface), ``label_encoder`` (latent-aligned
label features), ``attention`` and ``blocks`` (layers), ``schedulers`` (MONAI schedulers behind ``NoiseSchedule``),
``guidance`` (classifier-free guidance), ``ema``, ``latent_norm`` and ``first_stage`` (the frozen VQ-GAN).
"""
