"""scvi_rs.nn: layer structure (state-dict names), covariate injection, encoder/decoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scvi_rs.nn import DecoderSCVI, Embedding, Encoder, FCLayers, one_hot


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_one_hot_is_torchs():
    assert one_hot is torch.nn.functional.one_hot


def test_fclayers_state_dict_layout_with_batch_norm():
    layers = FCLayers(10, 7, n_cat_list=[3], n_layers=2, n_hidden=16)
    assert _shapes(layers) == {
        "fc_layers.Layer 0.0.weight": (16, 13),
        "fc_layers.Layer 0.0.bias": (16,),
        "fc_layers.Layer 0.1.weight": (16,),
        "fc_layers.Layer 0.1.bias": (16,),
        "fc_layers.Layer 0.1.running_mean": (16,),
        "fc_layers.Layer 0.1.running_var": (16,),
        "fc_layers.Layer 0.1.num_batches_tracked": (),
        "fc_layers.Layer 1.0.weight": (7, 19),
        "fc_layers.Layer 1.0.bias": (7,),
        "fc_layers.Layer 1.1.weight": (7,),
        "fc_layers.Layer 1.1.bias": (7,),
        "fc_layers.Layer 1.1.running_mean": (7,),
        "fc_layers.Layer 1.1.running_var": (7,),
        "fc_layers.Layer 1.1.num_batches_tracked": (),
    }
    block = layers.fc_layers[0]
    assert isinstance(block[0], nn.Linear)
    assert isinstance(block[1], nn.BatchNorm1d)
    assert block[1].momentum == 0.01
    assert block[1].eps == 0.001
    assert block[2] is None
    assert isinstance(block[3], nn.ReLU)
    assert isinstance(block[4], nn.Dropout)
    assert block[4].p == 0.1


def test_fclayers_layer_norm_no_dropout_no_bias():
    layers = FCLayers(
        4, 3, use_batch_norm=False, use_layer_norm=True, dropout_rate=0.0, bias=False
    )
    assert _shapes(layers) == {"fc_layers.Layer 0.0.weight": (3, 4)}
    block = layers.fc_layers[0]
    assert block[1] is None
    assert isinstance(block[2], nn.LayerNorm)
    assert not block[2].elementwise_affine
    assert block[4] is None


def test_fclayers_covariate_widths():
    # n_cat <= 1 is ignored; continuous covariates count towards the injected width.
    layers = FCLayers(5, 2, n_cat_list=[1, 4, 0], n_cont=3, n_layers=3, n_hidden=8)
    assert layers.n_cat_list == [0, 4, 0]
    assert layers.n_cov == 7
    widths = [layers.fc_layers[i][0].in_features for i in range(3)]
    assert widths == [12, 15, 15]
    shallow = FCLayers(
        5, 2, n_cat_list=[4], n_cont=3, n_layers=3, n_hidden=8, inject_covariates=False
    )
    assert [shallow.fc_layers[i][0].in_features for i in range(3)] == [12, 8, 8]
    assert shallow.inject_into_layer(0)
    assert not shallow.inject_into_layer(1)


def test_fclayers_forward_concatenates_x_cont_then_one_hots():
    torch.manual_seed(0)
    layers = FCLayers(
        2,
        1,
        n_cat_list=[3, 2],
        n_cont=1,
        use_batch_norm=False,
        use_activation=False,
        dropout_rate=0.0,
    )
    linear = layers.fc_layers[0][0]
    x = torch.tensor([[1.0, 2.0]])
    cont = torch.tensor([[5.0]])
    cat1 = torch.tensor([[2]])
    cat2 = torch.tensor([[0]])
    expected_input = torch.tensor([[1.0, 2.0, 5.0, 0.0, 0.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(layers(x, cat1, cat2, cont=cont), linear(expected_input))
    # Pre-encoded one-hot categories give the same output; extra categories are ignored.
    pre = layers(x, torch.tensor([[0.0, 0.0, 1.0]]), cat2, torch.tensor([[7]]), cont=cont)
    torch.testing.assert_close(pre, linear(expected_input))


def test_fclayers_category_errors():
    layers = FCLayers(2, 1, n_cat_list=[3, 2])
    with pytest.raises(ValueError, match=r"nb\. categorical args provided doesn't match"):
        layers(torch.ones(4, 2), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="cat not provided while n_cat != 0"):
        layers(torch.ones(4, 2), torch.zeros(4, 1), None)


def test_fclayers_three_dimensional_input():
    torch.manual_seed(0)
    layers = FCLayers(6, 4, n_cat_list=[3], n_layers=2, n_hidden=5, dropout_rate=0.0)
    layers.eval()
    x = torch.randn(3, 8, 6)
    cat = torch.randint(0, 3, (8, 1))
    out = layers(x, cat)
    assert out.shape == (3, 8, 4)
    for s in range(3):
        torch.testing.assert_close(out[s], layers(x[s], cat))


def test_fclayers_online_update_hooks_mask_gradients():
    layers = FCLayers(3, 2, n_cat_list=[4], n_layers=2, n_hidden=5, inject_covariates=False)
    layers.set_online_update_hooks()
    out = layers(torch.randn(6, 3), torch.randint(0, 4, (6, 1)))
    out.sum().backward()
    first = layers.fc_layers[0][0]
    assert torch.count_nonzero(first.weight.grad[:, :3]) == 0
    assert torch.count_nonzero(first.weight.grad[:, 3:]) > 0
    assert torch.count_nonzero(first.bias.grad) == 0
    second = layers.fc_layers[1][0]
    assert torch.count_nonzero(second.weight.grad) == 0
    assert len(layers.hooks) == 4


def test_encoder_outputs_and_layout():
    torch.manual_seed(0)
    enc = Encoder(12, 3, n_cat_list=[2], n_layers=1, n_hidden=8)
    keys = set(enc.state_dict())
    assert "encoder.fc_layers.Layer 0.0.weight" in keys
    assert enc.mean_encoder.weight.shape == (3, 8)
    assert enc.var_encoder.weight.shape == (3, 8)
    x = torch.randn(5, 12)
    batch = torch.randint(0, 2, (5, 1))
    q_m, q_v, latent = enc(x, batch)
    assert q_m.shape == q_v.shape == latent.shape == (5, 3)
    assert (q_v >= 1e-4).all()
    enc.return_dist = True
    dist, latent = enc(x, batch)
    assert isinstance(dist, torch.distributions.Normal)
    assert latent.requires_grad


def test_encoder_ln_and_var_activation():
    torch.manual_seed(0)
    enc = Encoder(6, 4, distribution="ln", var_activation=nn.functional.softplus, var_eps=0.0)
    enc.eval()
    _, _, latent = enc(torch.randn(7, 6))
    torch.testing.assert_close(latent.sum(-1), torch.ones(7))
    h = enc.encoder(torch.randn(1, 6))
    assert enc.var_activation is nn.functional.softplus
    assert h.shape == (1, 128)


def test_decoder_outputs():
    torch.manual_seed(0)
    dec = DecoderSCVI(4, 9, n_cat_list=[3], n_hidden=8)
    keys = set(dec.state_dict())
    assert {
        "px_decoder.fc_layers.Layer 0.0.weight",
        "px_scale_decoder.0.weight",
        "px_scale_decoder.0.bias",
        "px_r_decoder.weight",
        "px_dropout_decoder.weight",
    } <= keys
    # decoder hidden layers have no batch norm by default and never dropout
    assert dec.px_decoder.fc_layers[0][1] is None
    assert dec.px_decoder.fc_layers[0][4] is None
    z = torch.randn(5, 4)
    library = torch.log(torch.full((5, 1), 100.0))
    cat = torch.randint(0, 3, (5, 1))
    px_scale, px_r, px_rate, px_dropout = dec("gene", z, library, cat)
    assert px_r is None
    torch.testing.assert_close(px_scale.sum(-1), torch.ones(5))
    torch.testing.assert_close(px_rate, 100.0 * px_scale)
    assert px_dropout.shape == (5, 9)
    _, px_r, _, _ = dec("gene-cell", z, library, cat)
    assert px_r.shape == (5, 9)


def test_decoder_softplus_scale():
    dec = DecoderSCVI(4, 9, scale_activation="softplus")
    assert isinstance(dec.px_scale_decoder[1], nn.Softplus)
    px_scale, _, _, _ = dec("gene", torch.randn(3, 4), torch.zeros(3, 1))
    assert (px_scale > 0).all()


def test_embedding_extend():
    torch.manual_seed(0)
    emb = Embedding(3, 5)
    assert isinstance(emb, nn.Embedding)
    assert set(emb.state_dict()) == {"weight"}
    bigger = Embedding.extend(emb, init=2)
    assert bigger.weight.shape == (5, 5)
    torch.testing.assert_close(bigger.weight[:3], emb.weight)
    bigger(torch.tensor([0, 4])).sum().backward()
    assert torch.count_nonzero(bigger.weight.grad[:3]) == 0
    assert torch.count_nonzero(bigger.weight.grad[4]) > 0
    copied = Embedding.extend(emb, init=[1], freeze_prev=False)
    torch.testing.assert_close(copied.weight[3], emb.weight[1])
