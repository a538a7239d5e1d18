"""Pyro models in model files: the parameter store is saved, restored and safely unpickled.

A guide's ``pyro.param`` lives only in Pyro's parameter store (not in the module's state
dict); as in scvi-tools, ``save`` writes the store's state into ``model_state_dict`` under
``"pyro_param_store"`` and ``load`` hands it to ``module.on_load``. The cross-checks with
scvi-tools 1.4.2 run its interpreter in a subprocess and are skipped where it is missing
(set ``SCVI_TOOLS_PYTHON`` to an interpreter that has it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import scvi_rs
from scvi_rs.model.base._files import safe_pickle_load, safe_torch_load

pyro = pytest.importorskip("pyro")
from torch.distributions import constraints  # noqa: E402

# One model, written against the scvi-tools API, built here with scvi_rs and in the
# scvi-tools subprocess with scvi: the guide's Gamma parameters live only in the store.
MODEL_CODE = """
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from pyro.infer.autoguide import AutoNormal, init_to_mean
from pyro.nn import PyroModule, PyroSample

import {package} as scvi


class StoreParamModule(scvi.module.base.PyroBaseModuleClass):
    def __init__(self, n_genes):
        super().__init__()
        self.n_genes = n_genes
        self.log_scale = torch.nn.Parameter(torch.zeros(n_genes))

    @staticmethod
    def _get_fn_args_from_batch(tensors):
        return (tensors[scvi.REGISTRY_KEYS.X_KEY],), {{}}

    def model(self, x):
        pyro.module("store_param", self)
        ones = x.new_ones(self.n_genes)
        rate = pyro.sample("rate", dist.Gamma(ones, ones).to_event(1))
        with pyro.plate("cells", x.shape[0]):
            pyro.sample("obs", dist.Poisson(rate * self.log_scale.exp()).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("store_param", self)
        concentration = pyro.param(
            "rate_concentration",
            lambda: 2 * x.new_ones(self.n_genes),
            constraint=constraints.positive,
        )
        rate = pyro.param(
            "rate_rate", lambda: x.new_ones(self.n_genes), constraint=constraints.positive
        )
        pyro.sample("rate", dist.Gamma(concentration, rate).to_event(1))


class StoreParamModel(scvi.model.base.PyroSviTrainMixin, scvi.model.base.BaseModelClass):
    def __init__(self, adata):
        pyro.clear_param_store()
        super().__init__(adata)
        self.module = StoreParamModule(adata.n_vars)
        self._model_summary_string = "StoreParamModel"
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def setup_anndata(cls, adata, **kwargs):
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = [scvi.data.fields.LayerField(scvi.REGISTRY_KEYS.X_KEY, None, is_count_data=True)]
        manager = scvi.data.AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)


def train_and_save(path):
    scvi.settings.seed = 0
    adata = scvi.data.synthetic_iid(batch_size=40, n_genes=12, n_batches=1)
    StoreParamModel.setup_anndata(adata)
    model = StoreParamModel(adata)
    model.train(max_epochs=3, batch_size=40, lr=0.05, accelerator="cpu")
    model.save(path, save_anndata=True, overwrite=True)
    return model


def report(model):
    store = pyro.get_param_store()
    return {{
        "rate_concentration": pyro.param("rate_concentration").tolist(),
        "rate_rate": pyro.param("rate_rate").tolist(),
        "log_scale": model.module.log_scale.tolist(),
        "names": sorted(store.keys()),
    }}


# A PyroModule regression with an AutoNormal guide (scvi-tools' BayesianRegression in
# small): its scales are stored under pyro's own softplus_positive constraint.
class Regression(PyroModule):
    def __init__(self, n_in):
        super().__init__()
        self.register_buffer("zero", torch.tensor(0.0))
        self.register_buffer("one", torch.tensor(1.0))
        self.linear = PyroModule[torch.nn.Linear](n_in, 1)
        self.linear.weight = PyroSample(
            lambda m: dist.Normal(self.zero, self.one).expand([1, n_in]).to_event(2)
        )
        self.linear.bias = PyroSample(
            lambda m: dist.Normal(self.zero, self.one).expand([1]).to_event(1)
        )

    def forward(self, x, y):
        sigma = pyro.sample("sigma", dist.Exponential(self.one))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("obs_plate", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)


class AutoGuideModule(scvi.module.base.PyroBaseModuleClass):
    def __init__(self, n_in):
        super().__init__()
        self._model = Regression(n_in)
        self._guide = AutoNormal(self._model, init_loc_fn=init_to_mean)

    @staticmethod
    def _get_fn_args_from_batch(tensors):
        x = torch.log1p(tensors[scvi.REGISTRY_KEYS.X_KEY])
        return (x, tensors[scvi.REGISTRY_KEYS.LABELS_KEY].squeeze(-1).float()), {{}}

    @property
    def model(self):
        return self._model

    @property
    def guide(self):
        return self._guide


class AutoGuideModel(scvi.model.base.PyroSviTrainMixin, scvi.model.base.BaseModelClass):
    def __init__(self, adata):
        pyro.clear_param_store()
        super().__init__(adata)
        self.module = AutoGuideModule(adata.n_vars)
        self._model_summary_string = "AutoGuideModel"
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def setup_anndata(cls, adata, **kwargs):
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = [
            scvi.data.fields.LayerField(scvi.REGISTRY_KEYS.X_KEY, None, is_count_data=True),
            scvi.data.fields.CategoricalObsField(scvi.REGISTRY_KEYS.LABELS_KEY, "labels"),
        ]
        manager = scvi.data.AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)


def train_and_save_auto(path):
    scvi.settings.seed = 0
    adata = scvi.data.synthetic_iid(batch_size=40, n_genes=12, n_batches=1)
    AutoGuideModel.setup_anndata(adata)
    model = AutoGuideModel(adata)
    model.train(max_epochs=3, batch_size=40, lr=0.05, accelerator="cpu")
    model.save(path, save_anndata=True, overwrite=True)
    return model


def report_auto(model):
    model.module.cpu()
    medians = model.module.guide.quantiles([0.5])
    return {{
        "sigma": medians["sigma"][0].tolist(),
        "linear.weight": medians["linear.weight"][0].tolist(),
        "names": sorted(pyro.get_param_store().keys()),
    }}


KINDS = {{
    "store": (StoreParamModel, train_and_save, report),
    "auto": (AutoGuideModel, train_and_save_auto, report_auto),
}}
"""

DRIVER = """
import json, sys, warnings
warnings.simplefilter("ignore")
mode, kind, path = sys.argv[1:4]
cls, train_and_save_kind, report_kind = KINDS[kind]
if mode == "save":
    model = train_and_save_kind(path)
else:
    model = cls.load(path, accelerator="cpu")
print(json.dumps(report_kind(model)))
"""


def _scvi_rs_namespace() -> dict:
    namespace: dict = {"__name__": "pyro_files_model"}
    exec(MODEL_CODE.format(package="scvi_rs"), namespace)
    return namespace


@pytest.fixture
def ns():
    namespace = _scvi_rs_namespace()
    yield types.SimpleNamespace(**namespace)
    pyro.clear_param_store()


def _store_only_values(report: dict) -> dict:
    return {key: np.asarray(report[key]) for key in ("rate_concentration", "rate_rate")}


def test_param_held_only_in_the_store_survives_save_and_load(ns, tmp_path):
    model = ns.train_and_save(str(tmp_path / "m"))
    before = ns.report(model)
    assert "rate_concentration" not in dict(model.module.named_parameters())
    # training moved the guide's parameters away from their initial values
    assert not np.allclose(before["rate_concentration"], 2.0)

    pyro.clear_param_store()
    loaded = ns.StoreParamModel.load(str(tmp_path / "m"), accelerator="cpu")
    after = ns.report(loaded)
    for key, value in _store_only_values(before).items():
        np.testing.assert_array_equal(after[key], value)
    np.testing.assert_array_equal(after["log_scale"], before["log_scale"])
    assert after["names"] == before["names"]


def test_model_file_holds_the_store_with_its_constraints(ns, tmp_path):
    model = ns.train_and_save(str(tmp_path / "m"))
    saved = safe_torch_load(str(tmp_path / "m" / "model.pt"))
    store = saved["model_state_dict"]["pyro_param_store"]
    assert set(store) == {"params", "constraints"}
    assert {"rate_concentration", "rate_rate", "store_param$$$log_scale"} <= set(store["params"])
    constraint = store["constraints"]["rate_concentration"]
    assert isinstance(constraint, type(constraints.positive))
    assert constraint.lower_bound == 0.0
    np.testing.assert_allclose(
        constraints.positive.check(torch.tensor([1.0])), constraint.check(torch.tensor([1.0]))
    )
    # the store holds unconstrained values: positive is mapped through exp
    unconstrained = store["params"]["rate_concentration"]
    np.testing.assert_allclose(
        unconstrained.exp().detach().numpy(),
        pyro.param("rate_concentration").detach().numpy(),
        rtol=1e-6,
    )
    # the module's own weights are still all a plain state dict holds besides the store
    assert set(saved["model_state_dict"]) == {"log_scale", "pyro_param_store"}
    assert model.is_trained


def test_non_pyro_model_file_holds_an_empty_store_or_the_current_one(tmp_path):
    pyro.clear_param_store()
    adata = scvi_rs.data.synthetic_iid(batch_size=30, n_genes=10, n_batches=1)
    scvi_rs.model.SCVI.setup_anndata(adata)
    model = scvi_rs.model.SCVI(adata, n_latent=2, n_hidden=8)
    model.save(str(tmp_path / "scvi"))
    store = safe_torch_load(str(tmp_path / "scvi" / "model.pt"))["model_state_dict"][
        "pyro_param_store"
    ]
    assert store == {"params": {}, "constraints": {}}
    loaded = scvi_rs.model.SCVI.load(str(tmp_path / "scvi"), adata=adata)
    assert set(loaded.module.state_dict()) == set(model.module.state_dict())


def test_query_model_takes_the_reference_store(ns, tmp_path):
    """``_arches_pyro_setup`` refills the store with the reference's values, by name."""
    model = ns.train_and_save(str(tmp_path / "m"))
    before = ns.report(model)
    reference_store = safe_torch_load(str(tmp_path / "m" / "model.pt"))["model_state_dict"][
        "pyro_param_store"
    ]
    query = ns.StoreParamModel(model.adata)
    query._block_parameters = None
    scvi_rs.model.base.ArchesMixin._arches_pyro_setup(query, reference_store)
    after = ns.report(query)
    for key, value in _store_only_values(before).items():
        np.testing.assert_allclose(after[key], value, rtol=1e-6)
    assert "rate_concentration" in query._block_parameters


# -- the allow-list of constraint classes -------------------------------------------------------
def _save_and_load(obj, tmp_path):
    path = tmp_path / "obj.pt"
    torch.save(obj, path)
    return safe_torch_load(str(path))


@pytest.mark.parametrize(
    "constraint",
    [
        constraints.positive,
        constraints.real,
        constraints.simplex,
        constraints.unit_interval,
        constraints.interval(-1.0, torch.tensor(3.0)),
        constraints.independent(constraints.positive, 1),
        constraints.greater_than_eq(2.0),
        constraints.lower_cholesky,
        pyro.distributions.constraints.softplus_positive,
        pyro.distributions.constraints.ordered_vector,
    ],
    ids=repr,
)
def test_store_constraints_round_trip(constraint, tmp_path):
    loaded = _save_and_load({"c": constraint}, tmp_path)["c"]
    assert type(loaded) is type(constraint)
    assert vars(loaded).keys() == vars(constraint).keys()
    value = torch.tensor([[0.5, 0.0], [0.2, 0.8]])
    torch.testing.assert_close(loaded.check(value), constraint.check(value))
    transform, expected = (
        torch.distributions.transform_to(loaded),
        (torch.distributions.transform_to(constraint)),
    )
    torch.testing.assert_close(transform(value), expected(value))


@pytest.mark.parametrize(
    "name",
    # `dependent_property` also derives from `property`; `is_dependent` is a function;
    # `torch` is a module the constraints module imports; a dotted name reaches into a class
    ["dependent_property", "is_dependent", "torch", "Constraint.check", "_Real.__init__"],
)
def test_other_attributes_of_the_constraints_module_are_refused(name, tmp_path):
    path = tmp_path / "forged.pkl"
    path.write_bytes(b"\x80\x02ctorch.distributions.constraints\n" + name.encode() + b"\n.")
    with pytest.raises(ValueError, match="not allowed"):
        safe_pickle_load(str(path))


def test_a_class_outside_the_constraint_modules_is_refused(tmp_path):
    # a Transform is as harmless as a constraint, but no parameter store holds one
    with pytest.raises(ValueError, match=r"torch.distributions.transforms.ExpTransform"):
        _save_and_load({"t": torch.distributions.transforms.ExpTransform()}, tmp_path)


# -- cross-checks with scvi-tools 1.4.2 --------------------------------------------------------
def _scvi_tools_python() -> str | None:
    candidates = [os.environ.get("SCVI_TOOLS_PYTHON")]
    if importlib.util.find_spec("scvi") is not None:
        candidates.append(sys.executable)
    for venv in ("scvi-tools", "scvi-rs-compat"):
        candidates.append(os.path.expanduser(f"~/.venvs/{venv}/bin/python"))
    for candidate in candidates:
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def _run_scvi_tools(mode: str, path: str, kind: str = "store") -> dict:
    python = _scvi_tools_python()
    if python is None:
        pytest.skip("scvi-tools is not installed (set SCVI_TOOLS_PYTHON to use another venv)")
    script = MODEL_CODE.format(package="scvi") + DRIVER
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)  # no import alias: `scvi` must be scvi-tools itself
    proc = subprocess.run(
        [python, "-c", script, mode, kind, path],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if proc.returncode != 0 and "No module named 'scvi'" in proc.stderr:
        pytest.skip(f"{python} cannot import scvi")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_scvi_tools_pyro_file_loads_in_scvi_rs(ns, tmp_path):
    path = str(tmp_path / "reference")
    theirs = _run_scvi_tools("save", path)
    pyro.clear_param_store()
    model = ns.StoreParamModel.load(path, accelerator="cpu")
    ours = ns.report(model)
    for key, value in _store_only_values(theirs).items():
        np.testing.assert_allclose(ours[key], value, rtol=1e-6)
    np.testing.assert_allclose(ours["log_scale"], theirs["log_scale"], rtol=1e-6)
    assert ours["names"] == theirs["names"]


def test_scvi_rs_pyro_file_loads_in_scvi_tools(ns, tmp_path):
    path = str(tmp_path / "ours")
    ours = ns.report(ns.train_and_save(path))
    theirs = _run_scvi_tools("load", path)
    for key, value in _store_only_values(ours).items():
        np.testing.assert_allclose(theirs[key], value, rtol=1e-6)
    np.testing.assert_allclose(theirs["log_scale"], ours["log_scale"], rtol=1e-6)
    assert theirs["names"] == ours["names"]


def test_best_checkpoint_of_a_pyro_model_restores_the_store(ns, tmp_path):
    """``SaveCheckpoint(load_best_on_end=True)`` puts back the best save's store values."""
    scvi_rs.settings.seed = 0
    adata = scvi_rs.data.synthetic_iid(batch_size=40, n_genes=12, n_batches=1)
    ns.StoreParamModel.setup_anndata(adata)
    model = ns.StoreParamModel(adata)
    # the highest loss is the best, here (seed 0) an earlier epoch's save, not the last state
    checkpoint = scvi_rs.train.SaveCheckpoint(
        dirpath=str(tmp_path / "ckpt"), monitor="elbo_train", mode="max", load_best_on_end=True
    )
    model.train(max_epochs=4, batch_size=40, lr=0.05, accelerator="cpu", callbacks=[checkpoint])
    assert not os.path.basename(checkpoint.best_model_path).startswith("epoch=3-")
    best = safe_torch_load(os.path.join(checkpoint.best_model_path, "model.pt"))
    store = best["model_state_dict"]["pyro_param_store"]
    expected = store["params"]["rate_concentration"].exp().detach().numpy()
    np.testing.assert_allclose(pyro.param("rate_concentration").detach().numpy(), expected)
    # the Pyro plan logs no validation metric, as in scvi-tools
    assert not any("validation" in key for key in model.history)


# -- scvi-tools' private import paths of the Pyro classes ----------------------------------------
def test_scvi_tools_private_paths_of_the_pyro_classes():
    from scvi_rs.model.base import _pyromixin
    from scvi_rs.module.base import _base_module, _pyro
    from scvi_rs.train import _trainingplans

    assert _trainingplans.PyroTrainingPlan is scvi_rs.train.PyroTrainingPlan
    assert _trainingplans.LowLevelPyroTrainingPlan is scvi_rs.train.LowLevelPyroTrainingPlan
    assert _base_module.PyroBaseModuleClass is scvi_rs.module.base.PyroBaseModuleClass
    assert _base_module.AutoMoveDataPredictive is _pyro.AutoMoveDataPredictive
    assert _pyromixin.PyroSviTrainMixin is scvi_rs.model.base.PyroSviTrainMixin
    with pytest.raises(AttributeError, match="no attribute 'NoSuchPlan'"):
        _trainingplans.NoSuchPlan  # noqa: B018


def test_the_private_paths_resolve_without_pyro(tmp_path):
    code = (
        "import sys; sys.modules['pyro'] = None\n"
        "import scvi_rs\n"
        "from scvi_rs.train._trainingplans import PyroTrainingPlan\n"
        "from scvi_rs.module.base._base_module import PyroBaseModuleClass\n"
        "adata = scvi_rs.data.synthetic_iid(batch_size=20, n_genes=8, n_batches=1)\n"
        "scvi_rs.model.SCVI.setup_anndata(adata)\n"
        f"scvi_rs.model.SCVI(adata, n_latent=2).save({str(tmp_path / 'm')!r})\n"
        f"scvi_rs.model.SCVI.load({str(tmp_path / 'm')!r}, adata=adata)\n"
        "assert sys.modules['pyro'] is None\n"
        # a Pyro constraint cannot be rebuilt without Pyro: refused, saying so
        "from scvi_rs.model.base._files import safe_pickle_load\n"
        f"path = {str(tmp_path / 'c.pkl')!r}\n"
        "open(path, 'wb').write(b'\\x80\\x02cpyro.distributions.constraints\\n"
        "_SoftplusPositive\\n.')\n"
        "try:\n    safe_pickle_load(path)\nexcept ValueError as err:\n"
        "    assert 'it needs Pyro, which is not installed' in str(err), err\n"
        "else:\n    raise AssertionError('loaded')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_autoguide_files_of_either_library_load_in_the_other(ns, tmp_path):
    """AutoNormal keeps its scales under pyro's softplus_positive constraint."""
    theirs_dir, ours_dir = str(tmp_path / "reference"), str(tmp_path / "ours")
    theirs = _run_scvi_tools("save", theirs_dir, kind="auto")
    constraint = safe_torch_load(os.path.join(theirs_dir, "model.pt"))["model_state_dict"][
        "pyro_param_store"
    ]["constraints"]["AutoNormal.scales.sigma"]
    assert type(constraint).__name__ == "_SoftplusPositive"
    pyro.clear_param_store()
    loaded = ns.report_auto(ns.AutoGuideModel.load(theirs_dir, accelerator="cpu"))
    for key in ("sigma", "linear.weight"):
        np.testing.assert_allclose(loaded[key], theirs[key], rtol=1e-6)
    assert loaded["names"] == theirs["names"]

    ours = ns.report_auto(ns.train_and_save_auto(ours_dir))
    back = _run_scvi_tools("load", ours_dir, kind="auto")
    for key in ("sigma", "linear.weight"):
        np.testing.assert_allclose(back[key], ours[key], rtol=1e-6)
    assert back["names"] == ours["names"]
