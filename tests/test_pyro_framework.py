"""Pyro modules on scvi_rs: base class, SVI and low-level plans, train/sample mixins, warm-ups.

Pyro is an optional extra, so the tests that need it skip without it; the test of the
missing-Pyro errors runs in a subprocess that hides Pyro.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

pyro = pytest.importorskip("pyro")

import pyro.distributions as dist  # noqa: E402
from pyro.infer.autoguide import AutoNormal, init_to_mean  # noqa: E402
from pyro.nn import PyroModule  # noqa: E402

from scvi_rs import REGISTRY_KEYS  # noqa: E402
from scvi_rs.data import AnnDataManager, synthetic_iid  # noqa: E402
from scvi_rs.data.fields import LayerField, NumericalObsField  # noqa: E402
from scvi_rs.dataloaders import AnnDataLoader  # noqa: E402
from scvi_rs.model.base import (  # noqa: E402
    BaseModelClass,
    PyroJitGuideWarmup,
    PyroModelGuideWarmup,
    PyroSampleMixin,
    PyroSviTrainMixin,
)
from scvi_rs.module.base import PyroBaseModuleClass  # noqa: E402
from scvi_rs.train import (  # noqa: E402
    LowLevelPyroTrainingPlan,
    LowLevelPyroTrainingPlanConfig,
    PyroTrainingPlan,
    PyroTrainingPlanConfig,
    Trainer,
)
from scvi_rs.train._trainingplans import _compute_kl_weight  # noqa: E402

N_CELLS, N_GENES = 120, 12


# -- a small hierarchical Poisson model: per-gene rates (global), per-cell offsets (local) --
class PoissonRates(PyroModule):
    def __init__(self, n_genes: int, local: bool = False):
        super().__init__()
        self.n_genes = n_genes
        self.local = local
        self.n_obs = None
        self.register_buffer("zero", torch.tensor(0.0))
        self.register_buffer("one", torch.tensor(1.0))

    def create_plates(self, x, ind):
        return pyro.plate("cells", size=self.n_obs, dim=-1, subsample=ind)

    def forward(self, x, ind):
        cells = self.create_plates(x, ind)
        log_rate = pyro.sample(
            "log_rate", dist.Normal(self.zero, self.one).expand([self.n_genes]).to_event(1)
        )
        with cells:
            offset = 0.0
            if self.local:
                offset = pyro.sample("cell_offset", dist.Normal(self.zero, self.one))
                offset = offset.unsqueeze(-1)
            rate = torch.exp(log_rate + offset).expand(x.shape)
            pyro.sample("obs", dist.Poisson(rate).to_event(1), obs=x)


class PoissonRatesModule(PyroBaseModuleClass):
    def __init__(self, n_genes: int, local: bool = False, on_load_kwargs: dict | None = None):
        super().__init__(on_load_kwargs=on_load_kwargs)
        self._model = PoissonRates(n_genes, local)
        self._guide = AutoNormal(
            self._model, init_loc_fn=init_to_mean, create_plates=self._model.create_plates
        )

    @staticmethod
    def _get_fn_args_from_batch(tensor_dict):
        ind = tensor_dict[REGISTRY_KEYS.INDICES_KEY].long().reshape(-1)
        return (tensor_dict[REGISTRY_KEYS.X_KEY], ind), {}

    @property
    def model(self):
        return self._model

    @property
    def guide(self):
        return self._guide

    @property
    def list_obs_plate_vars(self):
        return {"name": "cells", "in": [0], "sites": {"cell_offset": 1}}


class PoissonRatesModel(PyroSviTrainMixin, PyroSampleMixin, BaseModelClass):
    def __init__(self, adata, local: bool = False):
        pyro.clear_param_store()
        super().__init__(adata)
        self.module = PoissonRatesModule(adata.n_vars, local=local)
        self._model_summary_string = "PoissonRatesModel"
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def setup_anndata(cls, adata, **kwargs):
        setup_method_args = cls._get_setup_method_args(**locals())
        adata.obs["_indices"] = np.arange(adata.n_obs).astype("int64")
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, None, is_count_data=True),
            NumericalObsField(REGISTRY_KEYS.INDICES_KEY, "_indices"),
        ]
        manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)


# -- a function-based module: records the keywords its model receives -------------------
class RecordingModule(PyroBaseModuleClass):
    def __init__(self, n_genes: int):
        super().__init__()
        self.log_rate = torch.nn.Parameter(torch.zeros(n_genes))
        self.log_shift = torch.nn.Parameter(torch.zeros(n_genes))
        self.kl_weights: list[float] = []

    @staticmethod
    def _get_fn_args_from_batch(tensor_dict):
        return (tensor_dict[REGISTRY_KEYS.X_KEY],), {}

    def model(self, x, kl_weight: float = 1.0):
        self.kl_weights.append(kl_weight)
        pyro.module("recorder", self)
        rate = torch.exp(self.log_rate + self.log_shift).expand(x.shape)
        with pyro.plate("cells", x.shape[0]):
            pyro.sample("obs", dist.Poisson(rate).to_event(1), obs=x)

    def guide(self, x, kl_weight: float = 1.0):
        pyro.module("recorder", self)


@pytest.fixture
def counts():
    adata = synthetic_iid(batch_size=N_CELLS // 2, n_genes=N_GENES)
    PoissonRatesModel.setup_anndata(adata)
    return adata


def _loader(adata, batch_size=40, shuffle=True):
    manager = PoissonRatesModel._get_most_recent_anndata_manager(adata, required=True)
    return AnnDataLoader(manager, shuffle=shuffle, batch_size=batch_size)


def _fit(plan, loader, **trainer_kwargs):
    trainer_kwargs.setdefault("max_epochs", 2)
    trainer = Trainer(accelerator="cpu", enable_progress_bar=False, **trainer_kwargs)
    trainer.fit(plan, loader)
    return trainer


# -- Pyro is optional --------------------------------------------------------------------
def test_without_pyro_scvi_rs_imports_and_pyro_classes_name_the_extra():
    script = textwrap.dedent(
        """
        import sys
        import scvi_rs
        from scvi_rs.model.base import PyroJitGuideWarmup, PyroSviTrainMixin
        from scvi_rs.module.base import PyroBaseModuleClass
        from scvi_rs.train import PyroTrainingPlan

        # importing scvi_rs (and its Pyro names) leaves Pyro unimported
        assert "pyro" not in sys.modules, "importing scvi_rs imported pyro"
        sys.modules["pyro"] = None  # from here on `import pyro` raises ImportError

        class Module(PyroBaseModuleClass):
            pass

        for make in (Module, lambda: PyroTrainingPlan(None), PyroJitGuideWarmup):
            try:
                make()
            except ImportError as err:
                assert "pip install scvi-rs[pyro]" in str(err), err
                print("ImportError:", err)
            else:
                raise AssertionError("no ImportError without pyro")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ImportError:") == 3
    assert "Module needs Pyro" in result.stdout


# -- the module base class -------------------------------------------------------------
def test_module_forward_calls_model_and_list_obs_plate_vars_defaults():
    module = RecordingModule(3)
    x = torch.ones(2, 3)
    module(x, kl_weight=0.5)
    assert module.kl_weights == [0.5]
    assert PyroBaseModuleClass.list_obs_plate_vars.fget(module) == {
        "name": "",
        "in": [],
        "sites": {},
    }
    assert module.device == torch.device("cpu")
    with pytest.raises(TypeError, match="on_load_kwargs"):
        PoissonRatesModule(3, on_load_kwargs=[("batch_size", 8)])


def test_create_predictive_draws_num_samples(counts):
    pyro.clear_param_store()
    module = PoissonRatesModule(N_GENES)
    loader = _loader(counts)
    plan = PyroTrainingPlan(module)
    plan.n_obs_training = counts.n_obs
    _fit(plan, loader, max_epochs=1)
    predictive = module.create_predictive(num_samples=4, return_sites=("log_rate",))
    batch = next(iter(loader))
    args, kwargs = module._get_fn_args_from_batch(batch)
    draws = predictive(*args, **kwargs)
    assert set(draws) == {"log_rate"}
    assert draws["log_rate"].shape == (4, 1, N_GENES)
    assert not predictive.training


# -- the training plans ----------------------------------------------------------------
def test_svi_plan_lowers_the_elbo_and_sets_n_obs(counts):
    pyro.clear_param_store()
    module = PoissonRatesModule(N_GENES)
    plan = PyroTrainingPlan(module, optim_kwargs={"lr": 0.05})
    plan.n_obs_training = counts.n_obs
    assert module.model.n_obs == counts.n_obs
    assert plan.optim_kwargs == {"lr": 0.05}
    assert isinstance(plan.optim, pyro.optim.PyroOptim)
    assert plan.configure_optimizers() is None
    trainer = _fit(plan, _loader(counts), max_epochs=15)
    elbo = trainer.logger.history["elbo_train"]["elbo_train"].to_numpy()
    assert len(elbo) == 15
    assert elbo[-1] < elbo[0]
    assert trainer.global_step == 15 * 3


def test_svi_plan_blocked_parameters_stay_put(counts):
    pyro.clear_param_store()
    module = RecordingModule(N_GENES)
    plan = PyroTrainingPlan(module, blocked=["recorder$$$log_shift"], optim_kwargs={"lr": 0.1})
    _fit(plan, _loader(counts))
    assert torch.equal(module.log_shift.detach(), torch.zeros(N_GENES))
    assert not torch.equal(module.log_rate.detach(), torch.zeros(N_GENES))


def test_low_level_plan_steps_a_torch_optimizer_and_passes_kl_weight(counts):
    pyro.clear_param_store()
    module = RecordingModule(N_GENES)
    plan = LowLevelPyroTrainingPlan(
        module, optim=torch.optim.SGD, n_epochs_kl_warmup=None, n_steps_kl_warmup=4
    )
    assert plan.use_kl_weight
    assert plan.optim_kwargs == {"lr": 1e-3}
    trainer = _fit(plan, _loader(counts))
    assert isinstance(trainer.optimizers[0], torch.optim.SGD)
    expected = [_compute_kl_weight(0, step, None, 4, 1.0, 1e-6) for step in range(6)]
    assert module.kl_weights == pytest.approx(expected)
    assert not torch.equal(module.log_rate.detach(), torch.zeros(N_GENES))
    assert "elbo_train" in trainer.logger.history


def test_low_level_plan_with_autoguide_warms_up_before_optimizers(counts):
    pyro.clear_param_store()
    module = PoissonRatesModule(N_GENES)
    loader = _loader(counts)
    plan = LowLevelPyroTrainingPlan(module)
    with pytest.raises(ValueError, match="PyroModelGuideWarmup"):
        plan.configure_optimizers()
    plan.n_obs_training = counts.n_obs
    _fit(plan, loader, callbacks=[PyroModelGuideWarmup(loader)])
    assert module.guide.state_dict()["locs.log_rate_unconstrained"].shape == (N_GENES,)


def test_jit_elbo_with_guide_warmup(counts):
    pyro.clear_param_store()
    module = PoissonRatesModule(N_GENES)
    loader = _loader(counts)
    plan = PyroTrainingPlan(module, loss_fn=pyro.infer.JitTrace_ELBO())
    plan.n_obs_training = counts.n_obs
    trainer = _fit(plan, loader, callbacks=[PyroJitGuideWarmup(loader)])
    assert np.isfinite(trainer.logger.history["elbo_train"]["elbo_train"]).all()


def test_scale_elbo_scales_the_loss(counts):
    batch = next(iter(_loader(counts)))
    losses = []
    for scale in (1.0, 3.0):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        module = RecordingModule(N_GENES)
        plan = LowLevelPyroTrainingPlan(module, scale_elbo=scale)
        losses.append(float(plan.training_step(batch, 0)["loss"].detach()))
    assert losses[1] == pytest.approx(3 * losses[0], rel=1e-5)


def test_plan_configs_build_the_same_plans():
    assert PyroTrainingPlanConfig(blocked=["a"]).to_kwargs() == {
        "loss_fn": None,
        "optim": None,
        "optim_kwargs": None,
        "n_steps_kl_warmup": None,
        "n_epochs_kl_warmup": 400,
        "scale_elbo": 1.0,
        "blocked": ["a"],
    }
    assert "blocked" not in LowLevelPyroTrainingPlanConfig().to_kwargs()
    plan = PyroTrainingPlan(RecordingModule(2), **PyroTrainingPlanConfig(scale_elbo=2).to_kwargs())
    assert plan.scale_elbo == 2


def test_plans_refuse_bad_arguments():
    module = RecordingModule(2)
    with pytest.raises(TypeError, match="Pyro optimizer instance"):
        PyroTrainingPlan(module, optim=torch.optim.Adam)
    with pytest.raises(ValueError, match="min_kl_weight"):
        PyroTrainingPlan(module, min_kl_weight=2.0, max_kl_weight=1.0)

    class NoGuide(RecordingModule):
        guide = None

    with pytest.raises(TypeError, match="callable `guide`"):
        LowLevelPyroTrainingPlan(NoGuide(2))


# -- the model mixins ------------------------------------------------------------------
def test_train_mixin_builds_the_svi_plan_and_records_history(counts):
    model = PoissonRatesModel(counts)
    callbacks: list = []
    model.train(max_epochs=2, batch_size=40, lr=0.02, callbacks=callbacks)
    assert callbacks == []
    plan = model.trainer.lightning_module
    assert isinstance(plan, PyroTrainingPlan)
    assert plan.optim_kwargs == {"lr": 0.02}
    assert any(isinstance(c, PyroJitGuideWarmup) for c in model.trainer.callbacks)
    assert model.is_trained
    assert list(model.history["elbo_train"].index) == [0, 1]
    assert plan.n_obs_training == len(model.train_indices)


def test_train_mixin_without_batch_size_trains_on_device_backed_data(counts):
    model = PoissonRatesModel(counts)
    model.train(max_epochs=1, batch_size=None, train_size=1.0)
    assert type(model.trainer.datamodule).__name__ == "DeviceBackedDataSplitter"
    assert model.is_trained


def test_sample_posterior_summarises_global_and_local_sites_in_cell_order(counts):
    model = PoissonRatesModel(counts, local=True)
    model.train(max_epochs=3, batch_size=40, lr=0.05, train_size=1.0)
    locs = model.module.guide.locs.cell_offset.detach().numpy()
    scale = model.module.guide.scales.cell_offset.detach().numpy()

    n_samples = 60
    results = model.sample_posterior(num_samples=n_samples, batch_size=50, return_samples=True)
    assert set(results) == {
        "post_sample_means",
        "post_sample_stds",
        "post_sample_q05",
        "post_sample_q95",
        "posterior_samples",
    }
    assert results["posterior_samples"]["log_rate"].shape == (n_samples, N_GENES)
    assert results["posterior_samples"]["cell_offset"].shape == (n_samples, counts.n_obs)
    assert "obs" not in results["post_sample_means"]
    # minibatches are joined in cell order: each cell's mean is near its guide location
    np.testing.assert_allclose(
        results["post_sample_means"]["cell_offset"],
        locs,
        atol=4 * scale.max() / np.sqrt(n_samples),
    )

    subset = np.array([3, 70, 100])
    chunked = model.sample_posterior(
        indices=subset,
        num_samples=5,
        batch_size=1,
        return_sites=["cell_offset"],
        summary_frequency=1,
        summary_fun={"means": np.mean},
    )
    assert list(chunked) == ["means"]
    assert list(chunked["means"]) == ["cell_offset"]
    assert chunked["means"]["cell_offset"].shape == (3,)


def test_sample_posterior_refuses_an_empty_selection(counts):
    model = PoissonRatesModel(counts)
    model.train(max_epochs=1, batch_size=40)
    with pytest.raises(ValueError, match="no cells"):
        model.sample_posterior(indices=np.array([], dtype=int), num_samples=2)
    with pytest.raises(ValueError, match="num_samples"):
        model.sample_posterior(num_samples=0)


def test_save_load_round_trip_keeps_the_guide(counts, tmp_path):
    model = PoissonRatesModel(counts)
    model.train(max_epochs=2, batch_size=40, lr=0.05)
    medians = model.module.guide.quantiles([0.5])["log_rate"][0].detach().numpy()
    model.save(tmp_path / "model")

    loaded = PoissonRatesModel.load(tmp_path / "model", adata=counts)
    loaded_medians = loaded.module.guide.quantiles([0.5])["log_rate"][0].detach().numpy()
    np.testing.assert_array_equal(loaded_medians, medians)
    # on_load's one training step leaves the saved history as it was
    assert list(loaded.history) == ["elbo_train"]
    np.testing.assert_array_equal(loaded.history["elbo_train"], model.history["elbo_train"])


def test_on_load_restores_a_given_param_store(counts):
    model = PoissonRatesModel(counts)
    pyro.param("extra", torch.tensor([1.5, 2.5]))
    state = pyro.get_param_store().get_state()
    model.module.on_load(model, pyro_param_store=state)
    assert torch.equal(pyro.param("extra").detach(), torch.tensor([1.5, 2.5]))


def test_plans_refuse_data_parallel_runs():
    from types import SimpleNamespace

    plan = PyroTrainingPlan(RecordingModule(2))
    plan.trainer = SimpleNamespace(world_size=2)
    with pytest.raises(NotImplementedError, match="DDP"):
        plan.setup("fit")
    plan.trainer = SimpleNamespace(world_size=1)
    plan.setup("fit")
