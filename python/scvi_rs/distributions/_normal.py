"""Gaussian likelihood as used by the VAE's ``gene_likelihood="normal"``."""

from __future__ import annotations

import torch
from torch.distributions import Normal as _TorchNormal


class Normal(_TorchNormal):
    """torch's ``Normal`` (``loc=mu``) that also carries a normalised mean ``normal_mu``.

    Parameters
    ----------
    mu
        Mean of the distribution.
    scale
        Standard deviation.
    validate_args
        As torch (``None`` uses torch's global default).
    normal_mu
        Normalised mean, returned by ``get_normalized("scale")``.
    """

    def __init__(
        self,
        mu: torch.Tensor,
        scale: torch.Tensor,
        validate_args: bool | None = None,
        normal_mu: torch.Tensor | None = None,
    ) -> None:
        super().__init__(loc=mu, scale=scale, validate_args=validate_args)
        self.normal_mu = normal_mu

    def get_normalized(self, key: str) -> torch.Tensor:
        """``"mu"`` -> the mean, ``"scale"`` -> ``normal_mu``."""
        if key == "mu":
            return self.loc
        if key == "scale":
            return self.normal_mu
        raise ValueError(f"normalized key {key} not recognized")
