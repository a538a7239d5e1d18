"""Torch modules (``scvi.module``)."""

from ._vae import VAE

__all__ = ["VAE"]
