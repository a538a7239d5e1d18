"""Fully connected building blocks of the VAE: ``FCLayers``, ``Encoder``, ``DecoderSCVI``.

Sub-module names and nesting follow the reference so that ``state_dict`` keys and shapes
are identical (``fc_layers.Layer 0.0.weight`` is the first linear layer,
``fc_layers.Layer 0.1.*`` its batch norm, ...). Nothing here reads tensor values on the
host, so a forward pass can be captured in a CUDA graph.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import nn
from torch.distributions import Normal


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _one_hot_like(index: torch.Tensor, n_cat: int, dtype: torch.dtype) -> torch.Tensor:
    """One-hot encode ``index`` (shape ``(n,)`` or ``(n, 1)``) into ``(n, n_cat)`` floats.

    A comparison against ``arange`` instead of ``F.one_hot``: no value checks, so no host
    synchronisation on any device (out-of-range codes give an all-zero row).
    """
    if index.dim() > 1:
        index = index.reshape(index.shape[0], -1)[:, 0]
    codes = torch.arange(n_cat, device=index.device)
    return (index.to(torch.long).unsqueeze(-1) == codes).to(dtype)


class FCLayers(nn.Module):
    """A stack of fully connected layers with optional covariate injection.

    Parameters
    ----------
    n_in
        Input width.
    n_out
        Output width.
    n_cat_list
        Number of categories of each categorical covariate; each is one-hot encoded and
        concatenated to the layer inputs. Entries ``<= 1`` are ignored.
    n_cont
        Width of the continuous covariates (passed as ``cont=`` to ``forward``).
    n_layers
        Number of layers.
    n_hidden
        Width of the hidden layers.
    dropout_rate
        Dropout probability (no dropout module when 0).
    use_batch_norm
        Batch norm after each linear layer (momentum 0.01, eps 0.001).
    use_layer_norm
        Layer norm (without affine parameters) after each linear layer.
    use_activation
        Apply ``activation_fn`` after each layer.
    bias
        Linear layers have a bias.
    inject_covariates
        Concatenate covariates to the input of every layer, not only the first.
    activation_fn
        Activation module class.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        n_cat_list: Iterable[int] | None = None,
        n_cont: int = 0,
        n_layers: int = 1,
        n_hidden: int = 128,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        use_activation: bool = True,
        bias: bool = True,
        inject_covariates: bool = True,
        activation_fn: nn.Module = nn.ReLU,
    ) -> None:
        super().__init__()
        self.inject_covariates = inject_covariates
        # Categories of size 0 or 1 carry no information: keep a 0 placeholder for them.
        self.n_cat_list = [n if n > 1 else 0 for n in (n_cat_list or [])]
        self.n_cov = n_cont + sum(self.n_cat_list)
        widths = [n_in] + (n_layers - 1) * [n_hidden] + [n_out]

        blocks = []
        for i, (w_in, w_out) in enumerate(itertools.pairwise(widths)):
            # Slot order is part of the state-dict layout: 0 linear, 1 batch norm,
            # 2 layer norm, 3 activation, 4 dropout (unused slots hold None).
            block = nn.Sequential(
                nn.Linear(w_in + self.n_cov * self.inject_into_layer(i), w_out, bias=bias),
                nn.BatchNorm1d(w_out, momentum=0.01, eps=0.001) if use_batch_norm else None,
                nn.LayerNorm(w_out, elementwise_affine=False) if use_layer_norm else None,
                activation_fn() if use_activation else None,
                nn.Dropout(p=dropout_rate) if dropout_rate > 0 else None,
            )
            blocks.append((f"Layer {i}", block))
        self.fc_layers = nn.Sequential(collections.OrderedDict(blocks))

    def inject_into_layer(self, layer_num: int) -> bool:
        """Whether layer ``layer_num`` receives the covariates."""
        return layer_num == 0 or (layer_num > 0 and self.inject_covariates)

    def set_online_update_hooks(self, hook_first_layer: bool = True) -> None:
        """Mask gradients for query-time (scArches) training.

        Only the weight columns of the one-hot covariates of injected layers keep their
        gradient; every other weight and every bias gets a zero gradient.
        """
        self.hooks = []
        n_cat_dims = sum(self.n_cat_list)

        def _keep_covariate_columns(grad: torch.Tensor) -> torch.Tensor:
            masked = torch.zeros_like(grad)
            if n_cat_dims > 0:
                masked[:, -n_cat_dims:] = grad[:, -n_cat_dims:]
            return masked

        def _zero(grad: torch.Tensor) -> torch.Tensor:
            return grad * 0

        for i, block in enumerate(self.fc_layers):
            if i == 0 and not hook_first_layer:
                continue
            for layer in block:
                if not isinstance(layer, nn.Linear):
                    continue
                weight_hook = _keep_covariate_columns if self.inject_into_layer(i) else _zero
                self.hooks.append(layer.weight.register_hook(weight_hook))
                if layer.bias is not None:
                    self.hooks.append(layer.bias.register_hook(_zero))

    def forward(
        self, x: torch.Tensor, *cat_list: torch.Tensor, cont: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the stack on ``x`` (``(n, d)`` or ``(s, n, d)``).

        ``cat_list`` holds one code tensor (``(n, 1)``) or one-hot tensor per configured
        category; extra trailing entries are ignored.
        """
        if len(self.n_cat_list) > len(cat_list):
            raise ValueError("nb. categorical args provided doesn't match init. params.")
        covariates = [] if cont is None else [cont]
        for n_cat, cat in zip(self.n_cat_list, cat_list, strict=False):
            if n_cat and cat is None:
                raise ValueError("cat not provided while n_cat != 0 in init. params.")
            if n_cat > 1:
                if cat.dim() == 2 and cat.size(1) == n_cat:
                    covariates.append(cat.to(x.dtype))
                else:
                    covariates.append(_one_hot_like(cat, n_cat, x.dtype))

        for i, block in enumerate(self.fc_layers):
            for layer in block:
                if layer is None:
                    continue
                if isinstance(layer, nn.BatchNorm1d) and x.dim() == 3:
                    # Batch statistics per Monte-Carlo slice, as for a 2-D minibatch.
                    x = torch.cat([layer(part).unsqueeze(0) for part in x], dim=0)
                    continue
                if isinstance(layer, nn.Linear) and self.inject_into_layer(i) and covariates:
                    if x.dim() == 3:
                        layer_covs = [
                            c.unsqueeze(0).expand(x.size(0), c.size(0), c.size(1))
                            for c in covariates
                        ]
                    else:
                        layer_covs = covariates
                    x = torch.cat((x, *layer_covs), dim=-1)
                x = layer(x)
        return x


class Encoder(nn.Module):
    """Maps data to the mean and variance of a Gaussian and samples from it.

    Parameters
    ----------
    n_input
        Input width.
    n_output
        Latent width.
    n_cat_list
        Categories of each categorical covariate (see :class:`FCLayers`).
    n_layers
        Number of hidden layers.
    n_hidden
        Width of the hidden layers.
    dropout_rate
        Dropout probability.
    distribution
        ``"normal"`` or ``"ln"`` (logistic normal: the sample is passed through softmax).
    var_eps
        Added to the variance for numerical stability.
    var_activation
        Positivity map for the variance; default ``torch.exp``.
    return_dist
        Return ``(dist, latent)`` instead of ``(q_m, q_v, latent)``.
    **kwargs
        Passed to :class:`FCLayers`.
    """

    def __init__(
        self,
        n_input: int,
        n_output: int,
        n_cat_list: Iterable[int] | None = None,
        n_layers: int = 1,
        n_hidden: int = 128,
        dropout_rate: float = 0.1,
        distribution: str = "normal",
        var_eps: float = 1e-4,
        var_activation: Callable | None = None,
        return_dist: bool = False,
        **kwargs,
    ) -> None:
        super().__init__()
        self.distribution = distribution
        self.var_eps = var_eps
        self.encoder = FCLayers(
            n_in=n_input,
            n_out=n_hidden,
            n_cat_list=n_cat_list,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            **kwargs,
        )
        self.mean_encoder = nn.Linear(n_hidden, n_output)
        self.var_encoder = nn.Linear(n_hidden, n_output)
        self.return_dist = return_dist
        if distribution == "ln":
            self.z_transformation = nn.Softmax(dim=-1)
        else:
            self.z_transformation = _identity
        self.var_activation = torch.exp if var_activation is None else var_activation

    def forward(self, x: torch.Tensor, *cat_list: torch.Tensor):
        """Encode ``x``; returns ``(dist, latent)`` or ``(q_m, q_v, latent)``."""
        q = self.encoder(x, *cat_list)
        q_m = self.mean_encoder(q)
        q_v = self.var_activation(self.var_encoder(q)) + self.var_eps
        dist = Normal(q_m, q_v.sqrt(), validate_args=False)
        latent = self.z_transformation(dist.rsample())
        if self.return_dist:
            return dist, latent
        return q_m, q_v, latent


class DecoderSCVI(nn.Module):
    """Decodes a latent code into the parameters of the count likelihood.

    Parameters
    ----------
    n_input
        Latent (plus covariate) width.
    n_output
        Number of genes.
    n_cat_list
        Categories of each categorical covariate (see :class:`FCLayers`).
    n_layers
        Number of hidden layers.
    n_hidden
        Width of the hidden layers.
    inject_covariates
        Concatenate covariates to every hidden layer's input.
    use_batch_norm
        Batch norm in the hidden layers.
    use_layer_norm
        Layer norm in the hidden layers.
    scale_activation
        ``"softmax"`` (expression proportions) or ``"softplus"``.
    **kwargs
        Passed to :class:`FCLayers`.
    """

    def __init__(
        self,
        n_input: int,
        n_output: int,
        n_cat_list: Iterable[int] | None = None,
        n_layers: int = 1,
        n_hidden: int = 128,
        inject_covariates: bool = True,
        use_batch_norm: bool = False,
        use_layer_norm: bool = False,
        scale_activation: Literal["softmax", "softplus"] = "softmax",
        **kwargs,
    ) -> None:
        super().__init__()
        self.px_decoder = FCLayers(
            n_in=n_input,
            n_out=n_hidden,
            n_cat_list=n_cat_list,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=0,
            inject_covariates=inject_covariates,
            use_batch_norm=use_batch_norm,
            use_layer_norm=use_layer_norm,
            **kwargs,
        )
        if scale_activation == "softmax":
            scale_act = nn.Softmax(dim=-1)
        elif scale_activation == "softplus":
            scale_act = nn.Softplus()
        else:
            raise ValueError("`scale_activation` must be one of 'softmax', 'softplus'.")
        self.px_scale_decoder = nn.Sequential(nn.Linear(n_hidden, n_output), scale_act)
        self.px_r_decoder = nn.Linear(n_hidden, n_output)
        self.px_dropout_decoder = nn.Linear(n_hidden, n_output)

    def forward(
        self,
        dispersion: str,
        z: torch.Tensor,
        library: torch.Tensor,
        *cat_list: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Return ``(px_scale, px_r, px_rate, px_dropout)``.

        ``px_rate = exp(library) * px_scale``; ``px_r`` is only decoded for
        ``dispersion == "gene-cell"`` (else ``None``).
        """
        px = self.px_decoder(z, *cat_list)
        px_scale = self.px_scale_decoder(px)
        px_dropout = self.px_dropout_decoder(px)
        px_rate = torch.exp(library) * px_scale
        px_r = self.px_r_decoder(px) if dispersion == "gene-cell" else None
        return px_scale, px_r, px_rate, px_dropout


class Decoder(nn.Module):
    """Maps a code to the mean and variance of a Gaussian (scvi-tools' ``scvi.nn.Decoder``).

    Parameters
    ----------
    n_input
        Input width.
    n_output
        Output width.
    n_cat_list
        Categories of each categorical covariate (see :class:`FCLayers`).
    n_layers
        Number of hidden layers.
    n_hidden
        Width of the hidden layers.
    **kwargs
        Further arguments of :class:`FCLayers` (no dropout).
    """

    def __init__(
        self,
        n_input: int,
        n_output: int,
        n_cat_list: Iterable[int] | None = None,
        n_layers: int = 1,
        n_hidden: int = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.decoder = FCLayers(
            n_in=n_input,
            n_out=n_hidden,
            n_cat_list=n_cat_list,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=0,
            **kwargs,
        )
        self.mean_decoder = nn.Linear(n_hidden, n_output)
        self.var_decoder = nn.Linear(n_hidden, n_output)

    def forward(
        self, x: torch.Tensor, *cat_list: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance, each ``(..., n_output)``."""
        hidden = self.decoder(x, *cat_list)
        return self.mean_decoder(hidden), torch.exp(self.var_decoder(hidden))
