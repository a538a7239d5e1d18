"""Torch modules (``scvi.module``)."""

from ._classifier import Classifier
from ._scanvae import SCANVAE
from ._vae import VAE

__all__ = ["SCANVAE", "VAE", "Classifier"]
