"""The semi-supervised variational autoencoder of scANVI (``scvi.module.SCANVAE``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Normal
from torch.distributions import kl_divergence as torch_kl
from torch.nn import functional as F

from .._constants import REGISTRY_KEYS
from ..nn import Decoder, Encoder
from ._classifier import Classifier, SupervisedModuleClass
from ._constants import MODULE_KEYS
from ._vae import VAE, _kl, _norm_flags
from .base import LossOutput


def broadcast_labels(
    latent: torch.Tensor, n_broadcast: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair every cell with every label, for the unlabelled part of the scANVI bound.

    Parameters
    ----------
    latent
        ``(n, d)`` or ``(s, n, d)`` latent codes.
    n_broadcast
        Number of labels.

    Returns
    -------
    tuple of torch.Tensor
        One-hot labels ``(n * n_broadcast, n_broadcast)`` (label-major: all cells with
        label 0, then label 1, ...) and the codes repeated to match, ``(n * n_broadcast, d)``
        or ``(s, n * n_broadcast, d)``.
    """
    eye = torch.eye(n_broadcast, device=latent.device, dtype=torch.long)
    labels = eye.repeat_interleave(latent.size(-2), dim=0)
    if latent.ndim == 2:
        repeated = latent.repeat(n_broadcast, 1)
    else:
        repeated = latent.repeat(1, n_broadcast, 1)
    return labels, repeated


def _split_by_label(per_pair: torch.Tensor, latent: torch.Tensor, n_labels: int) -> torch.Tensor:
    """``(.., n * n_labels)`` values of :func:`broadcast_labels` pairs -> ``(.., n, n_labels)``."""
    if latent.ndim == 2:
        return per_pair.view(n_labels, -1).t()
    return torch.transpose(per_pair.view(latent.shape[0], n_labels, -1), -1, -2)


class SCANVAE(SupervisedModuleClass, VAE):
    """scANVI's module: a VAE whose latent code is explained by a label and a second code.

    The state-dict layout is scvi-tools' (``classifier``, ``encoder_z2_z1``,
    ``decoder_z1_z2``, ``y_prior`` beside the :class:`~scvi_rs.module.VAE` weights), so
    model files load in both libraries.

    Parameters
    ----------
    n_input
        Number of genes.
    n_batch
        Number of batches.
    n_labels
        Number of labels (the unlabelled category excluded).
    n_hidden
        Width of the hidden layers.
    n_latent
        Dimensionality of the latent spaces ``z1`` and ``z2``.
    n_layers
        Number of hidden layers of the networks.
    n_continuous_cov
        Number of continuous covariates.
    n_cats_per_cov
        Number of categories of each extra categorical covariate.
    dropout_rate
        Dropout of the networks.
    dispersion
        ``"gene"``, ``"gene-batch"``, ``"gene-label"`` or ``"gene-cell"``.
    log_variational
        Apply ``log1p`` to the encoder input.
    gene_likelihood
        ``"zinb"``, ``"nb"`` or ``"poisson"``.
    use_observed_lib_size
        Use the observed log library size instead of a latent one.
    y_prior
        ``(1, n_labels)`` prior over labels; uniform by default.
    labels_groups
        Group of each label, for hierarchical classification.
    use_labels_groups
        Classify label groups first (needs ``labels_groups``).
    linear_classifier
        The classifier is a single linear layer.
    classifier_parameters
        Arguments of :class:`~scvi_rs.module.Classifier` (override the defaults).
    use_batch_norm
        Where to use batch norm: ``"encoder"``, ``"decoder"``, ``"none"`` or ``"both"``.
    use_layer_norm
        Where to use layer norm (same choices).
    **vae_kwargs
        Further arguments of :class:`~scvi_rs.module.VAE`.
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int = 0,
        n_labels: int = 0,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        n_continuous_cov: int = 0,
        n_cats_per_cov: Iterable[int] | None = None,
        dropout_rate: float = 0.1,
        dispersion: Literal["gene", "gene-batch", "gene-label", "gene-cell"] = "gene",
        log_variational: bool = True,
        gene_likelihood: Literal["zinb", "nb", "poisson"] = "zinb",
        use_observed_lib_size: bool = True,
        y_prior: torch.Tensor | None = None,
        labels_groups: Sequence[int] | None = None,
        use_labels_groups: bool = False,
        linear_classifier: bool = False,
        classifier_parameters: dict | None = None,
        use_batch_norm: Literal["encoder", "decoder", "none", "both"] = "both",
        use_layer_norm: Literal["encoder", "decoder", "none", "both"] = "none",
        **vae_kwargs: Any,
    ) -> None:
        super().__init__(
            n_input,
            n_batch=n_batch,
            n_labels=n_labels,
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            n_continuous_cov=n_continuous_cov,
            n_cats_per_cov=n_cats_per_cov,
            dropout_rate=dropout_rate,
            dispersion=dispersion,
            log_variational=log_variational,
            gene_likelihood=gene_likelihood,
            use_observed_lib_size=use_observed_lib_size,
            use_batch_norm=use_batch_norm,
            use_layer_norm=use_layer_norm,
            **vae_kwargs,
        )
        enc_bn, dec_bn = _norm_flags(use_batch_norm, "use_batch_norm")
        enc_ln, dec_ln = _norm_flags(use_layer_norm, "use_layer_norm")
        self.n_labels = n_labels

        classifier_kwargs = {
            "n_layers": 0 if linear_classifier else n_layers,
            "n_hidden": 0 if linear_classifier else n_hidden,
            "dropout_rate": dropout_rate,
            "logits": True,
            **(classifier_parameters or {}),
        }
        self.classifier = Classifier(
            n_latent,
            n_labels=n_labels,
            use_batch_norm=enc_bn,
            use_layer_norm=enc_ln,
            **classifier_kwargs,
        )
        self.encoder_z2_z1 = Encoder(
            n_latent,
            n_latent,
            n_cat_list=[n_labels],
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            use_batch_norm=enc_bn,
            use_layer_norm=enc_ln,
            return_dist=True,
        )
        self.decoder_z1_z2 = Decoder(
            n_latent,
            n_latent,
            n_cat_list=[n_labels],
            n_layers=n_layers,
            n_hidden=n_hidden,
            use_batch_norm=dec_bn,
            use_layer_norm=dec_ln,
        )
        if y_prior is None:
            y_prior = torch.ones(1, n_labels) / max(n_labels, 1)
        self.y_prior = nn.Parameter(
            torch.as_tensor(y_prior, dtype=torch.float32), requires_grad=False
        )

        self.use_labels_groups = use_labels_groups
        self.labels_groups = np.array(labels_groups) if labels_groups is not None else None
        if use_labels_groups:
            self._init_label_groups(n_latent, n_hidden, n_layers, dropout_rate)

    def _init_label_groups(
        self, n_latent: int, n_hidden: int, n_layers: int, dropout_rate: float
    ) -> None:
        if self.labels_groups is None:
            raise ValueError("Specify label groups")
        groups = np.unique(self.labels_groups)
        self.n_groups = len(groups)
        if not (groups == np.arange(self.n_groups)).all():
            raise ValueError(
                "`labels_groups` must number the groups 0, 1, ..., n_groups - 1; got "
                f"{groups.tolist()}."
            )
        self.classifier_groups = Classifier(
            n_latent, n_hidden, self.n_groups, n_layers, dropout_rate
        )
        self.groups_index = nn.ParameterList(
            [
                nn.Parameter(
                    torch.tensor((self.labels_groups == i).astype(np.uint8), dtype=torch.uint8),
                    requires_grad=False,
                )
                for i in range(self.n_groups)
            ]
        )

    def _label_probabilities(self, z1: torch.Tensor) -> torch.Tensor:
        scores = self.classifier(z1)
        return F.softmax(scores, dim=-1) if self.classifier.logits else scores

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, Any],
        generative_ouputs: dict[str, Any],
        kl_weight: float = 1.0,
        labelled_tensors: dict[str, torch.Tensor] | None = None,
        classification_ratio: float | None = None,
    ) -> LossOutput:
        """Negative ELBO of the M1+M2 model, plus the weighted classification loss.

        The label of every cell is marginalised under the classifier's probabilities:
        ``log q(z1|x) + sum_y q(y|z1) [-log p(z1|z2, y) + KL(q(z2|z1, y) || N(0, 1))]
        + KL(q(y|z1) || p(y))``, added to the count reconstruction loss. With
        ``labelled_tensors``, ``classification_ratio`` times the cross-entropy of the
        classifier on those cells is added.

        Parameters
        ----------
        tensors
            The minibatch.
        inference_outputs, generative_ouputs
            Outputs of :meth:`inference` and :meth:`generative` (the second name is the
            reference's spelling).
        kl_weight
            Weight of the KL terms (warm-up).
        labelled_tensors
            A minibatch of labelled cells for the classification loss.
        classification_ratio
            Weight of the classification loss.

        Returns
        -------
        LossOutput
            With ``classification_loss``, ``true_labels`` and ``logits`` when
            ``labelled_tensors`` is given.
        """
        px = generative_ouputs[MODULE_KEYS.PX_KEY]
        qz1 = inference_outputs[MODULE_KEYS.QZ_KEY]
        z1 = inference_outputs[MODULE_KEYS.Z_KEY]
        x = tensors[REGISTRY_KEYS.X_KEY]
        batch_index = tensors[REGISTRY_KEYS.BATCH_KEY]

        ys, z1s = broadcast_labels(z1, n_broadcast=self.n_labels)
        qz2, z2 = self.encoder_z2_z1(z1s, ys)
        pz1_m, pz1_v = self.decoder_z1_z2(z2, ys)

        reconst_loss = -px.log_prob(x).sum(-1)
        standard = Normal(torch.zeros_like(qz2.loc), torch.ones_like(qz2.scale))
        kl_z2 = _split_by_label(_kl(qz2, standard).sum(dim=-1), z1, self.n_labels)
        nll_z1 = _split_by_label(
            -Normal(pz1_m, torch.sqrt(pz1_v)).log_prob(z1s).sum(dim=-1), z1, self.n_labels
        )
        log_qz1 = qz1.log_prob(z1).sum(dim=-1)

        probs = self._label_probabilities(z1)
        reconst_loss = reconst_loss + log_qz1 + (nll_z1 * probs).sum(dim=-1)
        prior = self.y_prior.expand(*probs.shape[:-1], self.y_prior.shape[-1])
        kl_divergence = (kl_z2 * probs).sum(dim=-1) + torch_kl(
            Categorical(probs=probs), Categorical(probs=prior)
        )
        if not self.use_observed_lib_size:
            local_means, local_vars = self._compute_local_library_params(batch_index)
            kl_l = _kl(
                inference_outputs[MODULE_KEYS.QL_KEY], Normal(local_means, torch.sqrt(local_vars))
            ).sum(dim=1)
            kl_divergence = kl_divergence + kl_l

        loss = torch.mean(reconst_loss + kl_divergence * kl_weight)

        if self.extra_payload_autotune:
            extra_metrics = {
                "z": inference_outputs[MODULE_KEYS.Z_KEY],
                "batch": tensors[REGISTRY_KEYS.BATCH_KEY],
                "labels": tensors[REGISTRY_KEYS.LABELS_KEY],
            }
        else:
            extra_metrics = {}

        if labelled_tensors is None:
            return LossOutput(
                loss=loss,
                reconstruction_loss=reconst_loss,
                kl_local=kl_divergence,
                extra_metrics=extra_metrics,
            )
        ce_loss, true_labels, logits = self.classification_loss(labelled_tensors)
        ratio = 0.0 if classification_ratio is None else classification_ratio
        return LossOutput(
            loss=loss + ce_loss * ratio,
            reconstruction_loss=reconst_loss,
            kl_local=kl_divergence,
            classification_loss=ce_loss,
            true_labels=true_labels,
            logits=logits,
            extra_metrics=extra_metrics,
        )


__all__ = ["SCANVAE", "Decoder", "broadcast_labels"]
