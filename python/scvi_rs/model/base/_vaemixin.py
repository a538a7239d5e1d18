"""``VAEMixin``: ELBO, marginal likelihood, reconstruction error and latent representation."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from ..._settings import settings


def _per_cell(record: Any) -> torch.Tensor | float:
    """Sum a loss record (tensor or dict of tensors) into one per-cell tensor."""
    if isinstance(record, dict):
        return sum(_per_cell(v) for v in record.values())
    return record if record is not None else 0.0


def _posterior_mean_and_var(outputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    qz = outputs.get("qz")
    if qz is not None:
        return qz.loc, qz.scale**2
    for mean_key, var_key in (("qzm", "qzv"), ("qz_m", "qz_v")):
        if mean_key in outputs:
            return outputs[mean_key], outputs[var_key]
    raise KeyError(
        "The module's inference output has neither 'qz' nor 'qzm'/'qzv' (or 'qz_m'/'qz_v')."
    )


class VAEMixin:
    """Posterior queries shared by VAE-style models."""

    def _minibatches(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        dataloader: Iterable | None,
        data_loader_kwargs: dict | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        if adata is not None and dataloader is not None:
            raise ValueError("Only one of `adata` or `dataloader` can be provided.")
        if dataloader is not None:
            if indices is not None or batch_size is not None:
                warnings.warn(
                    "`indices` and `batch_size` are ignored when a `dataloader` is given.",
                    UserWarning,
                    stacklevel=settings.warnings_stacklevel,
                )
            return iter(dataloader)
        adata = self._validate_anndata(adata)
        return iter(
            self._make_data_loader(
                adata=adata, indices=indices, batch_size=batch_size, **(data_loader_kwargs or {})
            )
        )

    def _forward_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        params = inspect.signature(self.module._get_inference_input).parameters
        if "full_forward_pass" in params:
            kwargs.setdefault("get_inference_input_kwargs", {"full_forward_pass": True})
        return kwargs

    @torch.inference_mode()
    def get_elbo(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        dataloader: Iterable | None = None,
        return_mean: bool = True,
        data_loader_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> float | torch.Tensor:
        """Return the evidence lower bound (reconstruction log-likelihood minus local KL).

        Parameters
        ----------
        adata
            AnnData set up like the model's; the model's own by default.
        indices
            Cells to use; all by default.
        batch_size
            Minibatch size; ``settings.batch_size`` by default.
        dataloader
            A loader to use instead of ``adata``.
        return_mean
            Average over cells.
        data_loader_kwargs
            Extra loader arguments.
        **kwargs
            Passed to the module's forward.

        Returns
        -------
        float or torch.Tensor
            The mean ELBO as a Python float, or the per-cell ELBO ``(n_cells,)``.
        """
        kwargs = self._forward_kwargs(kwargs)
        per_cell = []
        for tensors in self._minibatches(
            adata, indices, batch_size, dataloader, data_loader_kwargs
        ):
            _, _, loss_output = self.module(tensors, **kwargs)
            value = _per_cell(loss_output.reconstruction_loss) + _per_cell(loss_output.kl_local)
            per_cell.append(-torch.as_tensor(value).reshape(-1).cpu())
        elbo = torch.cat(per_cell)
        return float(elbo.mean()) if return_mean else elbo

    @torch.inference_mode()
    def get_marginal_ll(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_mc_samples: int = 1000,
        batch_size: int | None = None,
        return_mean: bool = True,
        dataloader: Iterable | None = None,
        data_loader_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> float | torch.Tensor:
        """Return the marginal log-likelihood estimated by importance sampling.

        Parameters
        ----------
        adata
            AnnData set up like the model's; the model's own by default.
        indices
            Cells to use; all by default.
        n_mc_samples
            Number of importance samples per cell.
        batch_size
            Minibatch size; ``settings.batch_size`` by default.
        return_mean
            Return the mean over minibatches of the minibatch means.
        dataloader
            A loader to use instead of ``adata``.
        data_loader_kwargs
            Extra loader arguments.
        **kwargs
            Passed to the module's ``marginal_ll``.

        Returns
        -------
        float or torch.Tensor
            The mean as a Python float, or the per-cell values ``(n_cells,)``.
        """
        if not hasattr(self.module, "marginal_ll"):
            raise NotImplementedError(
                "marginal_ll is not implemented for current model. Please raise an issue on "
                "github if you need it."
            )
        values = []
        for tensors in self._minibatches(
            adata, indices, batch_size, dataloader, data_loader_kwargs
        ):
            value = self.module.marginal_ll(
                tensors, n_mc_samples=n_mc_samples, return_mean=return_mean, **kwargs
            )
            values.append(torch.as_tensor(value).cpu())
        if return_mean:
            return float(np.mean([float(v) for v in values]))
        return torch.cat([v.reshape(-1) for v in values])

    @torch.inference_mode()
    def get_reconstruction_error(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        dataloader: Iterable | None = None,
        return_mean: bool = True,
        data_loader_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> dict[str, float | torch.Tensor]:
        """Return the reconstruction loss (negative log-likelihood) of the data.

        Parameters
        ----------
        adata
            AnnData set up like the model's; the model's own by default.
        indices
            Cells to use; all by default.
        batch_size
            Minibatch size; ``settings.batch_size`` by default.
        dataloader
            A loader to use instead of ``adata``.
        return_mean
            Average over cells.
        data_loader_kwargs
            Extra loader arguments.
        **kwargs
            Passed to the module's forward.

        Returns
        -------
        dict
            Reconstruction-loss name to its mean (Python float) or per-cell tensor.
        """
        kwargs = self._forward_kwargs(kwargs)
        kwargs.setdefault("loss_kwargs", {"kl_weight": 1})
        totals: dict[str, list[torch.Tensor]] = {}
        for tensors in self._minibatches(
            adata, indices, batch_size, dataloader, data_loader_kwargs
        ):
            _, _, loss_output = self.module(tensors, **kwargs)
            record = loss_output.reconstruction_loss
            if not isinstance(record, dict):
                record = {"reconstruction_loss": record}
            for key, value in record.items():
                totals.setdefault(key, []).append(torch.as_tensor(value).reshape(-1).cpu())
        result: dict[str, float | torch.Tensor] = {}
        for key, parts in totals.items():
            per_cell = torch.cat(parts)
            result[key] = float(per_cell.mean()) if return_mean else per_cell
        return result

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        mc_samples: int = 5000,
        batch_size: int | None = None,
        return_dist: bool = False,
        dataloader: Iterable | None = None,
        **data_loader_kwargs: Any,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Return the latent representation of each cell.

        Parameters
        ----------
        adata
            AnnData set up like the model's; the model's own by default.
        indices
            Cells to use; all by default.
        give_mean
            Return the posterior mean (for ``latent_distribution="ln"`` the Monte Carlo
            mean of the softmax); otherwise one sample.
        mc_samples
            Number of samples for the ``"ln"`` mean.
        batch_size
            Minibatch size; ``settings.batch_size`` by default.
        return_dist
            Return the posterior means and variances instead.
        dataloader
            A loader to use instead of ``adata``.
        **data_loader_kwargs
            Extra loader arguments.

        Returns
        -------
        numpy.ndarray or tuple
            ``(n_cells, n_latent)`` float32, or ``(means, variances)`` with ``return_dist``.
        """
        self._check_if_trained(warn=False)
        means, variances, latents = [], [], []
        loader = self._minibatches(adata, indices, batch_size, dataloader, data_loader_kwargs)
        for tensors in loader:
            inference_inputs = self.module._get_inference_input(tensors)
            outputs = self.module.inference(**inference_inputs)
            qz_mean, qz_var = _posterior_mean_and_var(outputs)
            if return_dist:
                means.append(qz_mean.cpu())
                variances.append(qz_var.cpu())
                continue
            if give_mean:
                if getattr(self.module, "latent_distribution", "normal") == "ln":
                    dist = torch.distributions.Normal(qz_mean, qz_var.sqrt())
                    z = torch.softmax(dist.sample((mc_samples,)), dim=-1).mean(dim=0)
                else:
                    z = qz_mean
            else:
                z = outputs["z"]
            latents.append(z.cpu())
        if return_dist:
            return torch.cat(means).numpy(), torch.cat(variances).numpy()
        return torch.cat(latents).numpy()
