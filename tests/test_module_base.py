"""scvi_rs.module.base: LossOutput reductions, auto_move_data, the generic forward."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
from torch import nn

from scvi_rs.module._constants import MODULE_KEYS
from scvi_rs.module.base import (
    BaseMinifiedModeModuleClass,
    BaseModuleClass,
    EmbeddingModuleMixin,
    LossOutput,
    auto_move_data,
)
from scvi_rs.nn import Embedding


# ----------------------------------------------------------------------------------------
# LossOutput
# ----------------------------------------------------------------------------------------
def test_loss_output_fields_in_reference_order():
    names = [f.name for f in LossOutput.__dataclass_fields__.values()]
    assert names == [
        "loss",
        "reconstruction_loss",
        "kl_local",
        "kl_global",
        "classification_loss",
        "logits",
        "true_labels",
        "extra_metrics",
        "n_obs_minibatch",
        "reconstruction_loss_sum",
        "kl_local_sum",
        "kl_global_sum",
    ]


def test_loss_output_reductions():
    rec = torch.tensor([1.0, 2.0, 3.0])
    kl_a = torch.tensor([0.5, 0.5, 0.5])
    kl_b = torch.tensor([1.0, 0.0, 2.0])
    out = LossOutput(
        loss={"a": torch.tensor(2.0), "b": torch.tensor(3.0)},
        reconstruction_loss=rec,
        kl_local={"kl_a": kl_a, "kl_b": kl_b},
        kl_global=0.0,
    )
    assert out.loss == 5.0
    assert out.reconstruction_loss == {"reconstruction_loss": rec}
    assert out.reconstruction_loss_sum == 6.0
    assert out.kl_local_sum == 4.5
    assert out.kl_global == {"kl_global": 0.0}
    assert out.kl_global_sum == 0.0
    assert isinstance(out.kl_global_sum, float)
    assert out.n_obs_minibatch == 3
    assert out.extra_metrics == {}
    assert list(out.extra_metrics_keys) == []
    assert LossOutput.dict_sum({"x": 1, "y": 2}) == 3
    assert LossOutput.dict_sum(4) == 4


def test_loss_output_defaults_to_zero_times_loss():
    loss = torch.tensor(7.0, requires_grad=True)
    out = LossOutput(loss=loss, n_obs_minibatch=11)
    assert out.n_obs_minibatch == 11
    for name in ("reconstruction_loss", "kl_local", "kl_global"):
        value = getattr(out, name)
        assert list(value) == [name]
        assert value[name] == 0
        assert value[name].requires_grad
    assert out.kl_local_sum == 0
    assert out.kl_global_sum == 0


def test_loss_output_errors():
    with pytest.raises(
        ValueError, match="Must provide either n_obs_minibatch or reconstruction_loss"
    ):
        LossOutput(loss=torch.tensor(1.0))
    with pytest.raises(ValueError, match="Must provide `logits` and `true_labels`"):
        LossOutput(
            loss=torch.tensor(1.0),
            reconstruction_loss=torch.ones(2),
            classification_loss=torch.tensor(0.3),
        )
    ok = LossOutput(
        loss=torch.tensor(1.0),
        reconstruction_loss=torch.ones(2),
        classification_loss=torch.tensor(0.3),
        logits=torch.zeros(2, 3),
        true_labels=torch.zeros(2, 1),
        extra_metrics={"m": torch.tensor(1.0)},
    )
    assert list(ok.extra_metrics_keys) == ["m"]


# ----------------------------------------------------------------------------------------
# auto_move_data and device
# ----------------------------------------------------------------------------------------
Pair = namedtuple("Pair", ["a", "b"])


class _Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    @auto_move_data
    def call(self, *args, **kwargs):
        return args, kwargs


def test_auto_move_data_moves_nested_tensors_in_eval_mode_only():
    module = _Recorder().to("meta").eval()
    cpu = torch.ones(2)
    args, kwargs = module.call(
        cpu, [cpu, (cpu,)], Pair(cpu, "s"), "text", 3, d={"x": cpu, "y": {"z": cpu}}
    )
    assert args[0].device.type == "meta"
    assert args[1][0].device.type == "meta"
    assert isinstance(args[1][1], tuple)
    assert args[1][1][0].device.type == "meta"
    assert isinstance(args[2], Pair)
    assert args[2].a.device.type == "meta"
    assert args[2].b == "s"
    assert args[3:] == ("text", 3)
    assert kwargs["d"]["x"].device.type == "meta"
    assert kwargs["d"]["y"]["z"].device.type == "meta"

    module.train()
    args, _ = module.call(cpu)
    assert args[0] is cpu


def test_auto_move_data_and_device_reject_several_devices():
    module = _Recorder().eval()
    module.extra = nn.Linear(1, 1, device="meta")
    with pytest.raises(RuntimeError, match=r"Module tensors on multiple devices\."):
        module.call(torch.ones(1))


class _Toy(BaseModuleClass):
    """A minimal module in the style of the tutorial's custom module (no `sample`)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.seen_gi_kwargs = None

    def _get_inference_input(self, tensors, **kwargs):
        self.seen_gi_kwargs = kwargs
        return {"x": tensors["X"]}

    def _get_generative_input(self, tensors, inference_outputs, scale=1.0):
        return {"z": inference_outputs["z"] * scale}

    @auto_move_data
    def inference(self, x, shift=0.0):
        return {"z": self.lin(x) + shift, "qz_m": x}

    @auto_move_data
    def generative(self, z, offset=0.0):
        return {"px": z + offset}

    def loss(self, tensors, inference_outputs, generative_outputs, kl_weight=1.0):
        rec = generative_outputs["px"].sum(-1)
        return LossOutput(loss=rec.mean() * kl_weight, reconstruction_loss=rec, kl_global=0.0)


def test_generic_forward_threads_kwargs():
    module = _Toy()
    tensors = {"X": torch.ones(4, 3)}
    gi_kwargs = {"full_forward_pass": True}
    inf, gen, loss = module(
        tensors,
        get_inference_input_kwargs=gi_kwargs,
        get_generative_input_kwargs={"scale": 2.0},
        inference_kwargs={"shift": 1.0},
        generative_kwargs={"offset": 3.0},
        loss_kwargs={"kl_weight": 0.5},
    )
    expected_z = module.lin(torch.ones(4, 3)) + 1.0
    torch.testing.assert_close(inf["z"], expected_z)
    torch.testing.assert_close(gen["px"], expected_z * 2.0 + 3.0)
    assert isinstance(loss, LossOutput)
    torch.testing.assert_close(loss.loss, gen["px"].sum(-1).mean() * 0.5)
    # `full_forward_pass` is dropped for non-minified minibatches, without touching the
    # caller's dict.
    assert module.seen_gi_kwargs == {}
    assert gi_kwargs == {"full_forward_pass": True}

    pair = module(tensors, compute_loss=False)
    assert isinstance(pair, tuple)
    assert len(pair) == 2

    minified = {
        "X": torch.ones(4, 3),
        "latent_qzm": torch.ones(4, 2),
        "latent_qzv": torch.ones(4, 2),
    }
    module(minified, get_inference_input_kwargs={"full_forward_pass": True})
    assert module.seen_gi_kwargs == {"full_forward_pass": True}
    # non-dict kwargs are treated as empty
    module(tensors, inference_kwargs="ignored", loss_kwargs=None)


def test_base_module_device_and_hooks():
    module = _Toy()
    assert module.device == torch.device("cpu")
    assert module.on_load(model=None) is None
    assert BaseModuleClass().device == torch.device("cpu")


class _Minified(BaseMinifiedModeModuleClass):
    def _regular_inference(self, x, n_samples=1):
        return {"path": "regular"}

    def _cached_inference(self, qzm, qzv, n_samples=1):
        return {"path": "cached"}


def test_minified_mode_dispatch():
    module = _Minified()
    assert module.minified_data_type is None
    assert module.inference(x=torch.ones(1))["path"] == "regular"
    assert module.inference(qzm=torch.ones(1), qzv=torch.ones(1))["path"] == "cached"
    module.minified_data_type = "latent_posterior_parameters"
    assert module.minified_data_type == "latent_posterior_parameters"


def test_module_keys():
    assert MODULE_KEYS.X_KEY == "x"
    assert MODULE_KEYS.QZ_KEY == "qz"
    assert MODULE_KEYS.QZM_KEY == "qzm"
    assert MODULE_KEYS.KL_L_KEY == "kl_divergence_l"
    assert MODULE_KEYS.KL_Z_KEY == "kl_divergence_z"
    assert len(MODULE_KEYS._fields) == 17


class _WithEmbeddings(EmbeddingModuleMixin, BaseModuleClass):
    pass


def test_embedding_mixin():
    module = _WithEmbeddings()
    module.init_embedding("batch", 4)
    emb = module.get_embedding("batch")
    assert isinstance(emb, Embedding)
    assert emb.embedding_dim == 5
    assert "_embeddings_dict.batch.weight" in module.state_dict()
    with pytest.raises(KeyError, match=r"Embedding batch already exists\."):
        module.add_embedding("batch", nn.Embedding(2, 2))
    module.add_embedding("batch", nn.Embedding(2, 3), overwrite=True)
    out = module.compute_embedding("batch", torch.tensor([[0], [1], [1]]))
    assert out.shape == (3, 3)
    module.remove_embedding("batch")
    with pytest.raises(KeyError, match=r"Embedding batch not found\."):
        module.get_embedding("batch")
    with pytest.raises(KeyError, match=r"Embedding batch not found\."):
        module.remove_embedding("batch")
