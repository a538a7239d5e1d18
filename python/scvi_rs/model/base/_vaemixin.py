"""``VAEMixin``: ELBO, marginal likelihood, reconstruction error and latent representation."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ..._settings import settings
from ...utils import unsupported_if_adata_minified


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
    @unsupported_if_adata_minified
    def get_elbo(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        dataloader: Iterable | None = None,
        return_mean: bool = True,
        data_loader_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
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
        torch.Tensor
            On the module's device: the mean ELBO as a 0-d tensor, or the per-cell ELBO
            ``(n_cells,)``. Higher is better (this is not the negative ELBO).
        """
        kwargs = self._forward_kwargs(kwargs)
        per_cell = []
        for tensors in self._minibatches(
            adata, indices, batch_size, dataloader, data_loader_kwargs
        ):
            _, _, loss_output = self.module(tensors, **kwargs)
            negative_elbo = _per_cell(loss_output.reconstruction_loss) + _per_cell(
                loss_output.kl_local
            )
            per_cell.append(-torch.as_tensor(negative_elbo).reshape(-1))
        elbo = torch.cat(per_cell)
        return elbo.mean() if return_mean else elbo

    @torch.inference_mode()
    @unsupported_if_adata_minified
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
    ) -> np.float64 | torch.Tensor:
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
        numpy.float64 or torch.Tensor
            The mean of the minibatch means (a 0-d numpy scalar), or the per-cell values
            ``(n_cells,)``.
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
            values.append(value)
        if return_mean:
            return np.mean([float(v) for v in values])
        return torch.cat([torch.as_tensor(v).reshape(-1) for v in values])

    @torch.inference_mode()
    @unsupported_if_adata_minified
    def get_reconstruction_error(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        dataloader: Iterable | None = None,
        return_mean: bool = True,
        data_loader_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
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
            Reconstruction-loss name to its mean (0-d tensor) or per-cell tensor
            ``(n_cells,)``, on the module's device.
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
                totals.setdefault(key, []).append(torch.as_tensor(value).reshape(-1))
        result: dict[str, torch.Tensor] = {}
        for key, parts in totals.items():
            per_cell = torch.cat(parts)
            result[key] = per_cell.mean() if return_mean else per_cell
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

    @torch.inference_mode()
    def get_aggregated_posterior(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        dof: float | None = 3.0,
    ) -> torch.distributions.Distribution:
        """Return the aggregated posterior of the latent space over a set of cells.

        An equal-weight mixture with one component per cell: independent Student-t
        distributions with ``dof`` degrees of freedom (Normal ones when ``dof`` is None)
        at the cell's posterior mean and standard deviation.

        Parameters
        ----------
        adata
            AnnData set up like the model's; the model's own by default.
        indices
            Cells whose posteriors are aggregated; all cells when None or empty.
        batch_size
            Minibatch size; ``settings.batch_size`` by default.
        dof
            Degrees of freedom of the Student-t components; None for Normal components.

        Returns
        -------
        torch.distributions.MixtureSameFamily
            Event shape ``(n_latent,)``: ``log_prob(z)`` of ``z`` with shape
            ``(..., n_latent)`` has shape ``(...)``.
        """
        self._check_if_trained(warn=False)
        if indices is not None and len(indices) == 0:
            indices = None
        means, variances = self.get_latent_representation(
            adata=adata, indices=indices, batch_size=batch_size, return_dist=True
        )
        return self._latent_mixture(means, variances, dof)

    def _latent_mixture(
        self, means: np.ndarray, variances: np.ndarray, dof: float | None
    ) -> torch.distributions.Distribution:
        """Equal-weight mixture of the given cells' posteriors, ``(n_cells, n_latent)`` each."""
        if means.shape[0] == 0:
            raise ValueError("The aggregated posterior needs at least one cell.")
        loc = torch.as_tensor(means, device=self.device)
        scale = torch.as_tensor(variances, device=self.device).sqrt()
        if dof is None:
            components = torch.distributions.Normal(loc, scale)
        else:
            components = torch.distributions.StudentT(dof, loc, scale)
        mixture = torch.distributions.Categorical(
            logits=torch.ones(loc.shape[0], device=loc.device)
        )
        return torch.distributions.MixtureSameFamily(
            mixture, torch.distributions.Independent(components, 1)
        )

    @torch.inference_mode()
    def differential_abundance(
        self,
        adata: AnnData | None = None,
        sample_key: str | None = None,
        batch_size: int = 128,
        num_cells_posterior: int | None = None,
        dof: float | None = None,
    ) -> pd.DataFrame:
        """Log density of every cell under each sample's aggregated posterior.

        Parameters
        ----------
        adata
            AnnData set up like the model's; the model's own by default.
        sample_key
            Column of ``adata.obs`` naming each cell's sample.
        batch_size
            Minibatch size.
        num_cells_posterior
            Build each sample's aggregated posterior from at most this many of its cells
            (chosen at random); all of them by default.
        dof
            Degrees of freedom of the Student-t components; None for Normal components.

        Returns
        -------
        pandas.DataFrame
            Cells x samples log densities of the cells' latent means; also stored in
            ``adata.obsm["da_log_probs"]``.
        """
        adata = self._validate_anndata(adata)
        if sample_key is None or sample_key not in adata.obs:
            raise KeyError(f"sample_key {sample_key!r} is not a column of adata.obs.")
        z = torch.as_tensor(
            self.get_latent_representation(adata=adata, batch_size=batch_size),
            device=self.device,
        )
        # every sample's mixture is built from slices of one pass over the cells
        means, variances = self.get_latent_representation(
            adata=adata, batch_size=batch_size, return_dist=True
        )
        samples = adata.obs[sample_key]
        unique_samples = samples.unique()
        rng = np.random.default_rng(settings.seed)
        columns = []
        for sample in unique_samples:
            cells = np.flatnonzero((samples == sample).to_numpy())
            if num_cells_posterior is not None and num_cells_posterior < cells.size:
                cells = rng.choice(cells, num_cells_posterior, replace=False)
            posterior = self._latent_mixture(means[cells], variances[cells], dof)
            parts = [posterior.log_prob(chunk) for chunk in torch.split(z, batch_size)]
            columns.append(torch.cat(parts).cpu().numpy())
        log_probs = pd.DataFrame(
            np.stack(columns, axis=1) if columns else np.empty((adata.n_obs, 0)),
            index=adata.obs_names.to_numpy(),
            columns=list(unique_samples),
        )
        adata.obsm["da_log_probs"] = log_probs
        return log_probs
