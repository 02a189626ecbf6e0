"""Stage 2: semantic latent diffusion on a frozen 3D VQ-GAN (Med-LSDM), and the label diffusion of the labels stage.

``module.LatentDiffusionModule`` (training, sampling, checkpoints) is built from: ``unet3d`` (``Unet3DSPADE`` /
``Unet3D``), ``monai_unet`` (MONAI's SPADE U-Net), ``denoiser_base`` (the interface every denoiser implements),
``denoiser_factory`` (a denoiser from its config name), ``label_encoder`` (latent-aligned label features),
``attention`` and ``blocks`` (layers), ``schedulers`` (MONAI schedulers behind ``NoiseSchedule``), ``guidance``
(classifier-free guidance), ``ema``, ``latent_norm`` and ``first_stage`` (the frozen VQ-GAN). ``sampling`` is the
model-agnostic sampling core every latent diffusion calls (``label_diffusion`` too).
"""
