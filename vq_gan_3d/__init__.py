"""vq_gan_3d package."""
