"""The CUDA-graph training step (``model.train(..., cuda_graph=True)``).

On a CPU the graph cannot be captured: there the flag warns and trains eagerly, and the
static-buffer step the graph replays (padding of the last minibatch included) is run
eagerly to check that it trains the same model. The tests marked ``cuda`` capture real
graphs (``benches/gpu_run.sh`` runs them on a lent GPU).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import sparse

import scvi_rs
from scvi_rs import REGISTRY_KEYS
from scvi_rs.module import VAE
from scvi_rs.train import TrainingPlan
from scvi_rs.train import _cuda_graph as cuda_graph
from scvi_rs.train import _trainer as trainer_module

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def deterministic_sampling(monkeypatch):
    """z = mean + 0.3 * scale: the same for a cell however many rows its minibatch has."""

    def rsample(self, sample_shape=torch.Size()):
        return (self.loc + 0.3 * self.scale).expand(self._extended_shape(sample_shape))

    monkeypatch.setattr(torch.distributions.Normal, "rsample", rsample)


def _adata(n_per_batch: int = 200):
    scvi_rs.settings.seed = 0
    adata = scvi_rs.data.synthetic_iid(batch_size=n_per_batch)
    adata.X = sparse.csr_matrix(adata.X)
    scvi_rs.model.SCVI.setup_anndata(adata, batch_key="batch")
    return adata


def _batch(n_rows: int, n_genes: int = 30, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.full((n_rows, n_genes), 3.0), generator=generator)
    x[:, 0] += 1  # no empty cell: the observed library size is log(sum)
    return {
        REGISTRY_KEYS.X_KEY: x,
        REGISTRY_KEYS.BATCH_KEY: torch.randint(0, 2, (n_rows, 1), generator=generator).float(),
        REGISTRY_KEYS.LABELS_KEY: torch.zeros(n_rows, 1),
    }


def _loss_and_grads(module, batch, mask=None, **loss_kwargs):
    module.zero_grad(set_to_none=True)
    with cuda_graph.loss_masked(module, mask):
        _, _, output = module(batch, loss_kwargs=loss_kwargs)
    output.loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return output, grads


def _static_step_on_cpu(monkeypatch):
    """Make ``cuda_graph=True`` run the graph's static-buffer step, uncaptured, on the CPU."""
    monkeypatch.setattr(cuda_graph, "_device_reason", lambda trainer: None)
    made = []

    def make(trainer, plan, optimizers):
        assert cuda_graph.graph_unsupported_reason(trainer, plan, optimizers) is None
        made.append(cuda_graph.CudaGraphStep(trainer, plan, optimizers[0], capture=False))
        return made[-1]

    monkeypatch.setattr(trainer_module, "make_graph_step", make)
    return made


def _train(adata, model_kwargs=None, **train_kwargs):
    scvi_rs.settings.seed = 0
    model = scvi_rs.model.SCVI(adata, n_hidden=16, n_latent=4, **(model_kwargs or {}))
    model.train(
        max_epochs=3,
        batch_size=128,
        check_val_every_n_epoch=1,
        enable_progress_bar=False,
        **train_kwargs,
    )
    return model


def _assert_same_history(a, b, rtol=1e-5):
    assert set(a.history) == set(b.history)
    for key in a.history:
        np.testing.assert_allclose(
            a.history[key].to_numpy(dtype=float),
            b.history[key].to_numpy(dtype=float),
            rtol=rtol,
            err_msg=key,
        )


# -- the padding helper -------------------------------------------------------------------
def test_pad_batch_repeats_the_first_cell_and_masks_the_padding():
    batch = _batch(5)
    padded, mask = cuda_graph.pad_batch(batch, 8)
    assert mask.tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    for key, value in batch.items():
        assert padded[key].shape == (8, *value.shape[1:])
        torch.testing.assert_close(padded[key][:5], value, rtol=0, atol=0)
        torch.testing.assert_close(padded[key][5:], value[:1].expand(3, -1), rtol=0, atol=0)


def test_pad_batch_of_full_size_is_a_copy_with_a_mask_of_ones():
    batch = _batch(4)
    padded, mask = cuda_graph.pad_batch(batch, 4)
    assert mask.tolist() == [1, 1, 1, 1]
    assert padded[REGISTRY_KEYS.X_KEY].data_ptr() != batch[REGISTRY_KEYS.X_KEY].data_ptr()


@pytest.mark.parametrize(
    ("batch", "size", "message"),
    [
        ({}, 4, "equal row counts"),
        ({"X": torch.zeros(3, 2), "b": torch.zeros(4, 1)}, 4, "equal row counts"),
        ({"X": torch.zeros(3, 2), "b": [1, 2, 3]}, 4, "equal row counts"),
        ({"X": torch.zeros(6, 2)}, 4, "smaller than the batch's 6 rows"),
    ],
)
def test_pad_batch_refuses_bad_input(batch, size, message):
    with pytest.raises(ValueError, match=message):
        cuda_graph.pad_batch(batch, size)


# -- the masked loss ----------------------------------------------------------------------
@pytest.mark.parametrize("use_observed_lib_size", [True, False])
def test_padded_masked_batch_has_the_loss_and_gradients_of_the_plain_batch(
    deterministic_sampling, use_observed_lib_size
):
    torch.manual_seed(0)
    module = VAE(
        n_input=30,
        n_batch=2,
        n_hidden=16,
        n_latent=4,
        dropout_rate=0.0,
        use_batch_norm="none",
        use_layer_norm="both",
        use_observed_lib_size=use_observed_lib_size,
        library_log_means=np.zeros((1, 2)),
        library_log_vars=np.ones((1, 2)),
    )
    batch = _batch(37)
    plain, plain_grads = _loss_and_grads(module, batch, kl_weight=0.4)
    padded, mask = cuda_graph.pad_batch(batch, 64)
    masked, masked_grads = _loss_and_grads(module, padded, kl_weight=0.4, mask=mask)

    torch.testing.assert_close(masked.loss, plain.loss, rtol=1e-6, atol=1e-6)
    for name in ("reconstruction_loss_sum", "kl_local_sum"):
        torch.testing.assert_close(
            getattr(masked, name), getattr(plain, name), rtol=1e-6, atol=1e-4
        )
    assert masked_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(masked_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_mask_of_ones_changes_nothing():
    torch.manual_seed(0)
    module = VAE(n_input=30, n_batch=2, n_hidden=16, n_latent=4, use_batch_norm="none")
    module.eval()
    batch = _batch(16)
    with torch.no_grad():
        torch.manual_seed(1)
        _, _, plain = module(batch)
        torch.manual_seed(1)
        with cuda_graph.loss_masked(module, torch.ones(16)):
            _, _, masked = module(batch)
    assert module.loss_mask is None  # only for the duration of the step
    torch.testing.assert_close(masked.loss, plain.loss, rtol=1e-6, atol=1e-6)


# -- the flag on a CPU: a warning, then the eager step --------------------------------------
def test_flag_on_cpu_warns_once_and_trains_like_the_eager_step():
    adata = _adata()
    eager = _train(adata)
    with pytest.warns(UserWarning, match="runs eagerly: the training device is cpu") as record:
        flagged = _train(adata, cuda_graph=True)
    assert sum("cuda_graph" in str(w.message) for w in record) == 1
    _assert_same_history(flagged, eager, rtol=0)
    assert flagged.trainer.cuda_graph_stats == {}


def test_flag_is_off_by_default():
    adata = _adata(100)
    model = scvi_rs.model.SCVI(adata, n_hidden=8, n_latent=2)
    model.train(max_epochs=1, enable_progress_bar=False, accelerator="cpu")
    assert model.trainer.cuda_graph is False
    assert model.trainer.cuda_graph_stats == {}


# -- the static-buffer step the graph replays, uncaptured on the CPU ------------------------
def test_static_step_with_batch_norm_leaves_the_last_batch_to_the_plain_step(monkeypatch):
    adata = _adata()  # 360 training cells: batches of 128, 128 and 104
    eager = _train(adata)
    made = _static_step_on_cpu(monkeypatch)
    static = _train(adata, cuda_graph=True)
    stats = made[0].stats
    assert made[0].pads is False
    assert stats["eager_steps"] == 3 and stats["padded_steps"] == 0
    assert static.trainer.cuda_graph_stats == stats
    # the full batches see the same random draws as the eager loop: the same model
    _assert_same_history(static, eager)
    for key, value in static.module.state_dict().items():
        torch.testing.assert_close(value, eager.module.state_dict()[key], msg=key)


def test_static_step_without_batch_norm_pads_the_last_batch(monkeypatch, deterministic_sampling):
    adata = _adata()
    kwargs = {"model_kwargs": {"use_batch_norm": "none", "dropout_rate": 0.0}}
    eager = _train(adata, gradient_clip_val=5.0, **kwargs)
    made = _static_step_on_cpu(monkeypatch)
    static = _train(adata, cuda_graph=True, gradient_clip_val=5.0, **kwargs)
    assert made[0].pads is True
    assert made[0].stats["padded_steps"] == 3 and made[0].stats["eager_steps"] == 0
    _assert_same_history(static, eager, rtol=1e-4)
    state = eager.module.state_dict()
    for key, value in static.module.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=1e-4, atol=1e-5, msg=key)


def test_static_step_follows_step_kl_warmup_and_per_step_logging(monkeypatch):
    adata = _adata()
    plan_kwargs = {"n_steps_kl_warmup": 5, "n_epochs_kl_warmup": None, "on_step": True}
    eager = _train(adata, plan_kwargs=plan_kwargs, log_every_n_steps=1)
    _static_step_on_cpu(monkeypatch)
    static = _train(adata, plan_kwargs=plan_kwargs, log_every_n_steps=1, cuda_graph=True)
    assert "kl_weight" in static.history and "train_loss_step" in static.history
    _assert_same_history(static, eager)


# -- what keeps the step eager ---------------------------------------------------------------
class _ManualPlan(TrainingPlan):
    def __init__(self, module, **kwargs):
        super().__init__(module, **kwargs)
        self.automatic_optimization = False


class _OwnStepPlan(TrainingPlan):
    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx)


class _BackwardHookPlan(TrainingPlan):
    def on_after_backward(self):
        pass


@pytest.mark.parametrize(
    ("plan_cls", "plan_kwargs", "reason"),
    [
        (_ManualPlan, {}, "the plan does manual optimization"),
        (_OwnStepPlan, {}, "_OwnStepPlan overrides training_step"),
        (_BackwardHookPlan, {}, "_BackwardHookPlan runs code in on_after_backward"),
        (TrainingPlan, {"compile": True}, "the plan.s forward is compiled or wrapped"),
    ],
)
def test_unsupported_plans_are_named(monkeypatch, plan_cls, plan_kwargs, reason):
    monkeypatch.setattr(cuda_graph, "_device_reason", lambda trainer: None)
    module = VAE(n_input=10, n_batch=2)
    plan = plan_cls(module, **plan_kwargs)
    trainer = scvi_rs.train.Trainer(accelerator="cpu", cuda_graph=True, logger=False)
    optimizer = plan.configure_optimizers()
    with pytest.warns(UserWarning, match=f"runs eagerly: {reason}"):
        assert cuda_graph.make_graph_step(trainer, plan, [optimizer]) is None


def test_optimizer_without_capturable_is_named(monkeypatch):
    monkeypatch.setattr(cuda_graph, "_device_reason", lambda trainer: None)
    module = VAE(n_input=10, n_batch=2)
    plan = TrainingPlan(module)
    trainer = scvi_rs.train.Trainer(accelerator="cpu", cuda_graph=True, logger=False)
    sgd = torch.optim.LBFGS(module.parameters())
    assert "has no 'capturable' option" in cuda_graph.graph_unsupported_reason(
        trainer, plan, [sgd]
    )


def test_batches_that_do_not_fit_the_static_buffers_run_eagerly(monkeypatch):
    module = VAE(n_input=30, n_batch=2, use_batch_norm="none")
    plan = TrainingPlan(module)
    trainer = scvi_rs.train.Trainer(accelerator="cpu", logger=False)
    plan.trainer = trainer
    step = cuda_graph.CudaGraphStep(trainer, plan, plan.configure_optimizers(), capture=False)
    assert step.step(_batch(8), 0) is not None and step.batch_size == 8
    assert step.step(_batch(9), 1) is None  # more rows
    assert step.step({**_batch(8), "extra": torch.zeros(8, 1)}, 2) is None  # other keys
    assert step.step(_batch(8, n_genes=31), 3) is None  # other trailing shape
    assert step.step(_batch(3), 4) is not None  # padded
    assert step.stats["eager_steps"] == 3 and step.stats["padded_steps"] == 1


# -- host reads: none per step, flag on --------------------------------------------------------
@pytest.mark.parametrize("static_step", [False, True], ids=["cpu_fallback", "static_step"])
def test_no_host_reads_per_step_with_the_flag(monkeypatch, static_step):
    from scvi_rs.distributions import _negative_binomial as nb_module
    from test_train_host_reads import _reads_per_train_call

    monkeypatch.setattr(nb_module, "_sparse_lgamma_applies", lambda *args: False)
    if static_step:
        _static_step_on_cpu(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the CPU fallback's warning
        few = _reads_per_train_call(batch_size=512, cuda_graph=True)  # 2 steps an epoch
        many = _reads_per_train_call(batch_size=32, cuda_graph=True)  # 29 steps an epoch
    assert few == many, (few, many)


# -- on a GPU: real captures ------------------------------------------------------------------
@needs_cuda
def test_cuda_graph_replays_and_matches_the_eager_step(deterministic_sampling):
    adata = _adata(1000)  # 1,800 training cells: 14 full batches of 128 and one of 8
    kwargs = {
        "model_kwargs": {"use_batch_norm": "none", "dropout_rate": 0.0},
        "accelerator": "gpu",
        "devices": 1,
    }
    eager = _train(adata, **kwargs)
    graphed = _train(adata, cuda_graph=True, **kwargs)
    stats = graphed.trainer.cuda_graph_stats
    assert stats["captures"] == 1 and stats["replays"] > 30, stats
    assert stats["padded_steps"] == 3 and stats["eager_steps"] == 0, stats
    _assert_same_history(graphed, eager, rtol=1e-3)


@needs_cuda
def test_cuda_graph_with_batch_norm_and_a_plateau_scheduler():
    adata = _adata(1000)
    graphed = _train(
        adata,
        accelerator="gpu",
        devices=1,
        cuda_graph=True,
        plan_kwargs={"reduce_lr_on_plateau": True, "lr_patience": 0, "lr_factor": 0.5},
    )
    stats = graphed.trainer.cuda_graph_stats
    assert stats["eager_steps"] == 3 and stats["replays"] > 30, stats
    assert np.isfinite(graphed.history["elbo_validation"].to_numpy()).all()
    assert graphed.trainer.optimizers[0].param_groups[0]["capturable"] is False
