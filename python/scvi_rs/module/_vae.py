"""The variational autoencoder of scVI (``scvi.module.VAE``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch.distributions import Normal, kl_divergence

from .._constants import REGISTRY_KEYS
from .._settings import settings
from ..distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from ..distributions import Normal as NormalLikelihood
from ..nn import DecoderSCVI, Encoder
from ..nn._base_components import _one_hot_like
from ._constants import _MINIFY_TYPES, MODULE_KEYS
from .base import (
    BaseMinifiedModeModuleClass,
    EmbeddingModuleMixin,
    LossOutput,
    auto_move_data,
)
from .base._decorators import _unsupported_if_adata_minified

_DISPERSIONS = ("gene", "gene-batch", "gene-label", "gene-cell")
_LIKELIHOODS = ("zinb", "nb", "poisson", "normal")
_NORM_CHOICES = ("encoder", "decoder", "none", "both")


def _as_float_tensor(array) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.detach().clone().float()
    return torch.from_numpy(np.asarray(array, dtype=np.float32).copy())


def _kl(q, p) -> torch.Tensor:
    """``KL(q || p)``; Normal pairs use the closed form directly (same formula as torch's
    registered one) so that ``torch.compile(fullgraph=True)`` need not trace torch's
    KL dispatch table."""
    if isinstance(q, Normal) and isinstance(p, Normal):
        var_ratio = (q.scale / p.scale).pow(2)
        t1 = ((q.loc - p.loc) / p.scale).pow(2)
        return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())
    return kl_divergence(q, p)


def _norm_flags(choice: str, name: str) -> tuple[bool, bool]:
    if choice not in _NORM_CHOICES:
        raise ValueError(f"`{name}` must be one of 'encoder', 'decoder', 'none', 'both'.")
    return choice in ("encoder", "both"), choice in ("decoder", "both")


class VAE(EmbeddingModuleMixin, BaseMinifiedModeModuleClass):
    """Variational autoencoder of single-cell counts (scVI).

    Parameters
    ----------
    n_input
        Number of genes.
    n_batch
        Number of batches (0: no batch correction).
    n_labels
        Number of labels (used by ``dispersion="gene-label"``).
    n_hidden
        Width of each hidden layer.
    n_latent
        Dimensionality of the latent space.
    n_layers
        Hidden layers of the latent encoder and the decoder (the library encoder has one).
    n_continuous_cov
        Number of continuous covariates.
    n_cats_per_cov
        Number of categories of each extra categorical covariate.
    dropout_rate
        Dropout of the encoders.
    dispersion
        ``"gene"`` (one per gene), ``"gene-batch"``, ``"gene-label"`` or ``"gene-cell"``
        (decoded per cell).
    log_variational
        Apply ``log1p`` to the encoder input.
    gene_likelihood
        ``"zinb"``, ``"nb"``, ``"poisson"`` or ``"normal"``.
    latent_distribution
        ``"normal"`` or ``"ln"`` (logistic normal).
    encode_covariates
        Feed the covariates to the encoders too.
    deeply_inject_covariates
        Concatenate covariates to every hidden layer, not only the first.
    batch_representation
        ``"one-hot"`` or ``"embedding"`` (a learned batch embedding).
    use_batch_norm
        Where to use batch norm: ``"encoder"``, ``"decoder"``, ``"none"`` or ``"both"``.
    use_layer_norm
        Where to use layer norm (same choices).
    use_size_factor_key
        Scale the decoded expression by the registered size factor (forces the observed
        library size and a softplus scale activation).
    use_observed_lib_size
        Use the observed log library size instead of a latent one.
    extra_payload_autotune
        Put ``z``, ``batch`` and ``labels`` into the loss's ``extra_metrics``.
    library_log_means
        ``(1, n_batch)`` means of the log library prior per batch; required without the
        observed library size.
    library_log_vars
        ``(1, n_batch)`` variances of the log library prior per batch.
    var_activation
        Positivity map of the encoders' variance (default ``torch.exp``).
    extra_encoder_kwargs
        Extra keyword arguments of both :class:`~scvi_rs.nn.Encoder`.
    extra_decoder_kwargs
        Extra keyword arguments of :class:`~scvi_rs.nn.DecoderSCVI`.
    batch_embedding_kwargs
        Keyword arguments of the batch embedding (e.g. ``embedding_dim``).
    """

    #: Per-cell 1/0 weights applied by :meth:`loss` (None: every cell counts); set only for
    #: the duration of a padded step (see ``scvi_rs.train._cuda_graph``).
    loss_mask: torch.Tensor | None = None

    def __init__(
        self,
        n_input: int,
        n_batch: int = 0,
        n_labels: int = 0,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        n_continuous_cov: int = 0,
        n_cats_per_cov: list[int] | None = None,
        dropout_rate: float = 0.1,
        dispersion: Literal["gene", "gene-batch", "gene-label", "gene-cell"] = "gene",
        log_variational: bool = True,
        gene_likelihood: Literal["zinb", "nb", "poisson", "normal"] = "zinb",
        latent_distribution: Literal["normal", "ln"] = "normal",
        encode_covariates: bool = False,
        deeply_inject_covariates: bool = True,
        batch_representation: Literal["one-hot", "embedding"] = "one-hot",
        use_batch_norm: Literal["encoder", "decoder", "none", "both"] = "both",
        use_layer_norm: Literal["encoder", "decoder", "none", "both"] = "none",
        use_size_factor_key: bool = False,
        use_observed_lib_size: bool = True,
        extra_payload_autotune: bool = False,
        library_log_means: np.ndarray | None = None,
        library_log_vars: np.ndarray | None = None,
        var_activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        extra_encoder_kwargs: dict | None = None,
        extra_decoder_kwargs: dict | None = None,
        batch_embedding_kwargs: dict | None = None,
    ) -> None:
        super().__init__()

        self.dispersion = dispersion
        self.n_latent = n_latent
        self.log_variational = log_variational
        self.gene_likelihood = gene_likelihood
        self.n_batch = n_batch
        self.n_labels = n_labels
        self.latent_distribution = latent_distribution
        self.encode_covariates = encode_covariates
        self.use_size_factor_key = use_size_factor_key
        self.use_observed_lib_size = use_size_factor_key or use_observed_lib_size
        self.extra_payload_autotune = extra_payload_autotune

        if gene_likelihood not in _LIKELIHOODS:
            raise ValueError("`gene_likelihood` must be one of 'zinb', 'nb', 'poisson', 'normal'.")
        if latent_distribution not in ("normal", "ln"):
            raise ValueError("`latent_distribution` must be one of 'normal', 'ln'.")

        if not self.use_observed_lib_size:
            if library_log_means is None or library_log_vars is None:
                raise ValueError(
                    "If not using observed_lib_size, must provide library_log_means and "
                    "library_log_vars."
                )
            self.register_buffer("library_log_means", _as_float_tensor(library_log_means))
            self.register_buffer("library_log_vars", _as_float_tensor(library_log_vars))

        if dispersion == "gene":
            self.px_r = torch.nn.Parameter(torch.randn(n_input))
        elif dispersion == "gene-batch":
            self.px_r = torch.nn.Parameter(torch.randn(n_input, n_batch))
        elif dispersion == "gene-label":
            self.px_r = torch.nn.Parameter(torch.randn(n_input, n_labels))
        elif dispersion != "gene-cell":
            raise ValueError(
                "`dispersion` must be one of 'gene', 'gene-batch', 'gene-label', 'gene-cell'."
            )

        self.batch_representation = batch_representation
        if batch_representation == "embedding":
            self.init_embedding(REGISTRY_KEYS.BATCH_KEY, n_batch, **(batch_embedding_kwargs or {}))
            batch_dim = self.get_embedding(REGISTRY_KEYS.BATCH_KEY).embedding_dim
        elif batch_representation != "one-hot":
            raise ValueError("`batch_representation` must be one of 'one-hot', 'embedding'.")

        enc_bn, dec_bn = _norm_flags(use_batch_norm, "use_batch_norm")
        enc_ln, dec_ln = _norm_flags(use_layer_norm, "use_layer_norm")

        extra_cats = list(n_cats_per_cov or [])
        n_input_encoder = n_input + n_continuous_cov * encode_covariates
        if batch_representation == "embedding":
            n_input_encoder += batch_dim * encode_covariates
            cat_list = extra_cats
        else:
            cat_list = [n_batch, *extra_cats]
        encoder_cat_list = cat_list if encode_covariates else None

        encoder_kwargs = dict(extra_encoder_kwargs or {})
        self.z_encoder = Encoder(
            n_input_encoder,
            n_latent,
            n_cat_list=encoder_cat_list,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            distribution=latent_distribution,
            inject_covariates=deeply_inject_covariates,
            use_batch_norm=enc_bn,
            use_layer_norm=enc_ln,
            var_activation=var_activation,
            return_dist=True,
            **encoder_kwargs,
        )
        # Built even with the observed library size, so state dicts always match.
        self.l_encoder = Encoder(
            n_input_encoder,
            1,
            n_layers=1,
            n_cat_list=encoder_cat_list,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            inject_covariates=deeply_inject_covariates,
            use_batch_norm=enc_bn,
            use_layer_norm=enc_ln,
            var_activation=var_activation,
            return_dist=True,
            **encoder_kwargs,
        )

        n_input_decoder = n_latent + n_continuous_cov
        if batch_representation == "embedding":
            n_input_decoder += batch_dim
        self.decoder = DecoderSCVI(
            n_input_decoder,
            n_input,
            n_cat_list=cat_list,
            n_layers=n_layers,
            n_hidden=n_hidden,
            inject_covariates=deeply_inject_covariates,
            use_batch_norm=dec_bn,
            use_layer_norm=dec_ln,
            scale_activation="softplus" if use_size_factor_key else "softmax",
            **(extra_decoder_kwargs or {}),
        )

    # ----------------------------------------------------------------------------------
    # inputs
    # ----------------------------------------------------------------------------------
    def _get_inference_input(
        self,
        tensors: dict[str, torch.Tensor | None],
        full_forward_pass: bool = False,
    ) -> dict[str, torch.Tensor | None]:
        """Inference kwargs: data and covariates, or stored posteriors of minified data."""
        if full_forward_pass or self.minified_data_type is None:
            return {
                MODULE_KEYS.X_KEY: tensors[REGISTRY_KEYS.X_KEY],
                MODULE_KEYS.BATCH_INDEX_KEY: tensors[REGISTRY_KEYS.BATCH_KEY],
                MODULE_KEYS.CONT_COVS_KEY: tensors.get(REGISTRY_KEYS.CONT_COVS_KEY, None),
                MODULE_KEYS.CAT_COVS_KEY: tensors.get(REGISTRY_KEYS.CAT_COVS_KEY, None),
            }
        if self.minified_data_type in _MINIFY_TYPES:
            return {
                MODULE_KEYS.QZM_KEY: tensors[REGISTRY_KEYS.LATENT_QZM_KEY],
                MODULE_KEYS.QZV_KEY: tensors[REGISTRY_KEYS.LATENT_QZV_KEY],
                REGISTRY_KEYS.OBSERVED_LIB_SIZE: tensors[REGISTRY_KEYS.OBSERVED_LIB_SIZE],
            }
        raise NotImplementedError(f"Unknown minified-data type: {self.minified_data_type}")

    def _get_generative_input(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict,
    ) -> dict[str, torch.Tensor | None]:
        """Generative kwargs: latent sample, library, covariates and log size factor."""
        size_factor = tensors.get(REGISTRY_KEYS.SIZE_FACTOR_KEY, None)
        if size_factor is not None:
            size_factor = torch.log(size_factor)
        return {
            MODULE_KEYS.Z_KEY: inference_outputs[MODULE_KEYS.Z_KEY],
            MODULE_KEYS.LIBRARY_KEY: inference_outputs[MODULE_KEYS.LIBRARY_KEY],
            MODULE_KEYS.BATCH_INDEX_KEY: tensors[REGISTRY_KEYS.BATCH_KEY],
            MODULE_KEYS.Y_KEY: tensors.get(REGISTRY_KEYS.LABELS_KEY, None),
            MODULE_KEYS.CONT_COVS_KEY: tensors.get(REGISTRY_KEYS.CONT_COVS_KEY, None),
            MODULE_KEYS.CAT_COVS_KEY: tensors.get(REGISTRY_KEYS.CAT_COVS_KEY, None),
            MODULE_KEYS.SIZE_FACTOR_KEY: size_factor,
        }

    def _compute_local_library_params(
        self, batch_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-cell ``(1,)`` prior mean and variance of the log library, by batch."""
        n_batch = self.library_log_means.shape[1]
        batch_one_hot = _one_hot_like(batch_index, n_batch, self.library_log_means.dtype)
        means = torch.nn.functional.linear(batch_one_hot, self.library_log_means)
        variances = torch.nn.functional.linear(batch_one_hot, self.library_log_vars)
        return means, variances

    # ----------------------------------------------------------------------------------
    # inference
    # ----------------------------------------------------------------------------------
    def _encode(self, encoder, encoder_input, batch_index, categorical_input):
        if self.batch_representation == "embedding" and self.encode_covariates:
            batch_rep = self.compute_embedding(REGISTRY_KEYS.BATCH_KEY, batch_index)
            encoder_input = torch.cat([encoder_input, batch_rep], dim=-1)
            return encoder(encoder_input, *categorical_input)
        return encoder(encoder_input, batch_index, *categorical_input)

    @auto_move_data
    def _regular_inference(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor,
        cont_covs: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        n_samples: int = 1,
    ) -> dict[str, torch.Tensor | Normal | None]:
        """Encode counts ``x``; returns ``z``, ``qz``, ``ql``, ``library``, ``qz_m``, ``qz_v``."""
        x_ = x
        library = None
        if self.use_observed_lib_size:
            library = torch.log(x.sum(1)).unsqueeze(1)
        if self.log_variational:
            x_ = torch.log1p(x_)

        if cont_covs is not None and self.encode_covariates:
            encoder_input = torch.cat((x_, cont_covs), dim=-1)
        else:
            encoder_input = x_
        if cat_covs is not None and self.encode_covariates:
            categorical_input = torch.split(cat_covs, 1, dim=1)
        else:
            categorical_input = ()

        qz, z = self._encode(self.z_encoder, encoder_input, batch_index, categorical_input)
        ql = None
        if not self.use_observed_lib_size:
            ql, library = self._encode(
                self.l_encoder, encoder_input, batch_index, categorical_input
            )

        if n_samples > 1:
            z = self.z_encoder.z_transformation(qz.sample((n_samples,)))
            if self.use_observed_lib_size:
                library = library.unsqueeze(0).expand(n_samples, library.size(0), library.size(1))
            else:
                library = ql.sample((n_samples,))

        return self._inference_outputs(z, qz, ql, library)

    @auto_move_data
    def _cached_inference(
        self,
        qzm: torch.Tensor,
        qzv: torch.Tensor,
        observed_lib_size: torch.Tensor,
        n_samples: int = 1,
    ) -> dict[str, torch.Tensor | Normal | None]:
        """Inference from stored posterior means/variances of minified data."""
        if self.minified_data_type not in _MINIFY_TYPES:
            raise NotImplementedError(f"Unknown minified-data type: {self.minified_data_type}")
        qz = Normal(qzm, qzv.sqrt(), validate_args=False)
        untransformed = qz.sample() if n_samples == 1 else qz.sample((n_samples,))
        z = self.z_encoder.z_transformation(untransformed)
        library = torch.log(observed_lib_size)
        if n_samples > 1:
            library = library.unsqueeze(0).expand(n_samples, library.size(0), library.size(1))
        return self._inference_outputs(z, qz, None, library)

    @staticmethod
    def _inference_outputs(z, qz, ql, library) -> dict:
        return {
            MODULE_KEYS.Z_KEY: z,
            MODULE_KEYS.QZ_KEY: qz,
            MODULE_KEYS.QL_KEY: ql,
            MODULE_KEYS.LIBRARY_KEY: library,
            # 1.2-era names read by the seed tutorial: posterior mean and variance.
            "qz_m": qz.loc,
            "qz_v": qz.scale**2,
        }

    # ----------------------------------------------------------------------------------
    # generative
    # ----------------------------------------------------------------------------------
    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor,
        cont_covs: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        size_factor: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        transform_batch: torch.Tensor | None = None,
    ) -> dict:
        """Decode ``z``; returns the count likelihood ``px`` and the priors ``pl``, ``pz``."""
        if cont_covs is None:
            decoder_input = z
        elif z.dim() != cont_covs.dim():
            decoder_input = torch.cat(
                [z, cont_covs.unsqueeze(0).expand(z.size(0), -1, -1)], dim=-1
            )
        else:
            decoder_input = torch.cat([z, cont_covs], dim=-1)

        if cat_covs is not None:
            categorical_input = torch.split(cat_covs, 1, dim=1)
        else:
            categorical_input = ()

        if transform_batch is not None:
            batch_index = torch.ones_like(batch_index) * transform_batch

        if not self.use_size_factor_key:
            size_factor = library

        if self.batch_representation == "embedding":
            batch_rep = self.compute_embedding(REGISTRY_KEYS.BATCH_KEY, batch_index)
            if decoder_input.dim() == 3:
                batch_rep = batch_rep.unsqueeze(0).expand(decoder_input.size(0), -1, -1)
            decoder_input = torch.cat([decoder_input, batch_rep], dim=-1)
            px_scale, px_r, px_rate, px_dropout = self.decoder(
                self.dispersion, decoder_input, size_factor, *categorical_input, y
            )
        else:
            px_scale, px_r, px_rate, px_dropout = self.decoder(
                self.dispersion, decoder_input, size_factor, batch_index, *categorical_input, y
            )

        if self.dispersion == "gene-label":
            one_hot_y = _one_hot_like(y, self.n_labels, self.px_r.dtype)
            px_r = torch.nn.functional.linear(one_hot_y, self.px_r)
        elif self.dispersion == "gene-batch":
            one_hot_batch = _one_hot_like(batch_index, self.n_batch, self.px_r.dtype)
            px_r = torch.nn.functional.linear(one_hot_batch, self.px_r)
        elif self.dispersion == "gene":
            px_r = self.px_r
        px_r = torch.exp(px_r)

        if self.gene_likelihood == "zinb":
            px = ZeroInflatedNegativeBinomial(
                mu=px_rate, theta=px_r, zi_logits=px_dropout, scale=px_scale
            )
        elif self.gene_likelihood == "nb":
            px = NegativeBinomial(mu=px_rate, theta=px_r, scale=px_scale)
        elif self.gene_likelihood == "poisson":
            px = Poisson(rate=px_rate, scale=px_scale, validate_args=False)
        else:
            px = NormalLikelihood(px_rate, px_r, normal_mu=px_scale, validate_args=False)

        if self.use_observed_lib_size:
            pl = None
        else:
            local_means, local_vars = self._compute_local_library_params(batch_index)
            pl = Normal(local_means, local_vars.sqrt(), validate_args=False)
        pz = Normal(torch.zeros_like(z), torch.ones_like(z), validate_args=False)

        return {MODULE_KEYS.PX_KEY: px, MODULE_KEYS.PL_KEY: pl, MODULE_KEYS.PZ_KEY: pz}

    # ----------------------------------------------------------------------------------
    # loss and sampling
    # ----------------------------------------------------------------------------------
    @_unsupported_if_adata_minified
    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: torch.Tensor | float = 1.0,
    ) -> LossOutput:
        """Negative ELBO per cell; ``kl_weight`` (warm-up) scales the KL of ``z`` only.

        When :attr:`loss_mask` is set (one 1/0 weight per cell), the cells with weight 0 are
        left out of the loss and their per-cell terms zeroed: a minibatch padded to a fixed
        size (CUDA graph replays) then has the loss and the gradients of its real cells. It is
        an attribute, not an argument, so that ``loss`` keeps the reference's signature.
        """
        mask = self.loss_mask
        x = tensors[REGISTRY_KEYS.X_KEY]
        kl_divergence_z = _kl(
            inference_outputs[MODULE_KEYS.QZ_KEY], generative_outputs[MODULE_KEYS.PZ_KEY]
        ).sum(dim=-1)
        if not self.use_observed_lib_size:
            kl_divergence_l = _kl(
                inference_outputs[MODULE_KEYS.QL_KEY], generative_outputs[MODULE_KEYS.PL_KEY]
            ).sum(dim=1)
        else:
            kl_divergence_l = torch.zeros_like(kl_divergence_z)

        reconst_loss = -generative_outputs[MODULE_KEYS.PX_KEY].log_prob(x).sum(-1)

        if mask is not None:
            mask = mask.to(reconst_loss.dtype)
            reconst_loss = reconst_loss * mask
            kl_divergence_z = kl_divergence_z * mask
            kl_divergence_l = kl_divergence_l * mask
        weighted_kl_local = kl_weight * kl_divergence_z + kl_divergence_l
        if mask is None:
            loss = torch.mean(reconst_loss + weighted_kl_local)
        else:
            loss = torch.sum(reconst_loss + weighted_kl_local) / mask.sum()

        if self.extra_payload_autotune:
            extra_metrics = {
                "z": inference_outputs[MODULE_KEYS.Z_KEY],
                "batch": tensors[REGISTRY_KEYS.BATCH_KEY],
                "labels": tensors[REGISTRY_KEYS.LABELS_KEY],
            }
        else:
            extra_metrics = {}

        return LossOutput(
            loss=loss,
            reconstruction_loss=reconst_loss,
            kl_local={
                MODULE_KEYS.KL_L_KEY: kl_divergence_l,
                MODULE_KEYS.KL_Z_KEY: kl_divergence_z,
            },
            extra_metrics=extra_metrics,
        )

    @torch.inference_mode()
    def sample(
        self,
        tensors: dict[str, torch.Tensor],
        n_samples: int = 1,
        max_poisson_rate: float = 1e8,
        generative_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """Posterior predictive counts on the CPU.

        Shape ``(n_obs, n_vars)`` for one sample, else ``(n_obs, n_vars, n_samples)``.
        """
        _, generative_outputs = self.forward(
            tensors,
            inference_kwargs={"n_samples": n_samples},
            generative_kwargs=generative_kwargs,
            compute_loss=False,
        )
        dist = generative_outputs[MODULE_KEYS.PX_KEY]
        if self.gene_likelihood == "poisson":
            dist = torch.distributions.Poisson(
                torch.clamp(dist.rate, max=max_poisson_rate), validate_args=False
            )
        samples = dist.sample()
        if n_samples > 1:
            samples = torch.permute(samples, (1, 2, 0))
        return samples.cpu()

    @torch.inference_mode()
    @_unsupported_if_adata_minified
    @auto_move_data
    def marginal_ll(
        self,
        tensors: dict[str, torch.Tensor],
        n_mc_samples: int,
        return_mean: bool = False,
        n_mc_samples_per_pass: int = 1,
    ) -> torch.Tensor | float:
        """Importance-sampling estimate of ``log p(x)`` per cell.

        ``logsumexp_s[log p(z_s) + log p(x | z_s, l_s) - log q(z_s | x)
        (+ log p(l_s) - log q(l_s | x))] - log n_mc_samples``, drawn in passes of
        ``n_mc_samples_per_pass``. Returns a CPU tensor ``(n_obs,)`` or, with
        ``return_mean=True``, its mean as a Python float.
        """
        batch_index = tensors[REGISTRY_KEYS.BATCH_KEY]
        if n_mc_samples_per_pass > n_mc_samples:
            warnings.warn(
                "Number of chunks is larger than the total number of samples, setting it to "
                "the number of samples",
                RuntimeWarning,
                stacklevel=settings.warnings_stacklevel,
            )
            n_mc_samples_per_pass = n_mc_samples
        n_passes = int(np.ceil(n_mc_samples / n_mc_samples_per_pass))

        to_sum = []
        for _ in range(n_passes):
            inference_outputs, _, losses = self.forward(
                tensors,
                inference_kwargs={"n_samples": n_mc_samples_per_pass},
                get_inference_input_kwargs={"full_forward_pass": True},
            )
            qz = inference_outputs[MODULE_KEYS.QZ_KEY]
            ql = inference_outputs[MODULE_KEYS.QL_KEY]
            z = inference_outputs[MODULE_KEYS.Z_KEY]
            library = inference_outputs[MODULE_KEYS.LIBRARY_KEY]

            p_x_zl = -losses.dict_sum(losses.reconstruction_loss)
            p_z = (
                Normal(torch.zeros_like(qz.loc), torch.ones_like(qz.scale), validate_args=False)
                .log_prob(z)
                .sum(dim=-1)
            )
            q_z_x = qz.log_prob(z).sum(dim=-1)
            log_prob_sum = p_z + p_x_zl - q_z_x

            if not self.use_observed_lib_size:
                local_means, local_vars = self._compute_local_library_params(batch_index)
                p_l = (
                    Normal(local_means, local_vars.sqrt(), validate_args=False)
                    .log_prob(library)
                    .sum(dim=-1)
                )
                q_l_x = ql.log_prob(library).sum(dim=-1)
                log_prob_sum = log_prob_sum + p_l - q_l_x

            if n_mc_samples_per_pass == 1:
                log_prob_sum = log_prob_sum.unsqueeze(0)
            to_sum.append(log_prob_sum)

        log_prob_sum = torch.cat(to_sum, dim=0)
        batch_log_lkl = torch.logsumexp(log_prob_sum, dim=0) - np.log(n_mc_samples)
        if return_mean:
            return torch.mean(batch_log_lkl).item()
        return batch_log_lkl.cpu()
