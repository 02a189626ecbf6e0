"""Installable package for Med-LSDM: 3D VQ-GAN + semantic latent diffusion for label-map-to-volume synthesis."""

from setuptools import find_packages, setup

setup(
    name="med-lsdm",
    version="0.1.0",
    description="3D semantic latent diffusion (Med-LSDM) for synthetic CT/MR volumes from label maps",
    python_requires=">=3.10",
    # label_tables/ holds only YAML (no __init__.py), so it is listed by hand as a data package
    packages=[
        *find_packages(include=["vq_gan_3d*", "diffusion*", "dataset*", "evaluation*", "train*", "scripts*"]),
        "dataset.label_tables",
    ],
    package_data={"dataset.label_tables": ["*.yaml"]},
    include_package_data=True,
)
