"""MuData models in model files: ``var_names`` per modality, as scvi-tools 1.4.2 saves them.

A model set up with a MuData saves ``var_names`` as a dict from modality to its names
(``legacy_mudata_format=True``: one flat array of every modality's names, the older layout,
which still loads). The cross-checks run scvi-tools in a subprocess and are skipped where it
is missing (set ``SCVI_TOOLS_PYTHON`` to an interpreter that has it). scvi-tools' ``SCVI`` has
no ``setup_mudata``, so there a subclass registers the MuData with the same fields and
arguments as scvi_rs' ``SCVI.setup_mudata``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import scvi_rs
from scvi_rs.model import SCVI
from scvi_rs.model.base._files import safe_torch_load

mudata = pytest.importorskip("mudata")

MODEL_CODE = """
import numpy as np

import {package} as scvi
from {package} import REGISTRY_KEYS

fields = scvi.data.fields


class MuDataSCVI(scvi.model.SCVI):
    @classmethod
    def setup_mudata(
        cls,
        mdata,
        rna_layer=None,
        batch_key=None,
        labels_key=None,
        size_factor_key=None,
        categorical_covariate_keys=None,
        continuous_covariate_keys=None,
        modalities=None,
        **kwargs,
    ):
        setup_method_args = cls._get_setup_method_args(**locals())
        modalities = cls._create_modalities_attr_dict(modalities, setup_method_args)
        mudata_fields = [
            fields.MuDataLayerField(
                REGISTRY_KEYS.X_KEY,
                rna_layer,
                mod_key=modalities.rna_layer,
                is_count_data=True,
                mod_required=True,
            ),
            fields.MuDataCategoricalObsField(
                REGISTRY_KEYS.BATCH_KEY, batch_key, mod_key=modalities.batch_key
            ),
            fields.MuDataCategoricalObsField(
                REGISTRY_KEYS.LABELS_KEY, labels_key, mod_key=modalities.labels_key
            ),
            fields.MuDataNumericalObsField(
                REGISTRY_KEYS.SIZE_FACTOR_KEY,
                size_factor_key,
                mod_key=modalities.size_factor_key,
                required=False,
            ),
            fields.MuDataCategoricalJointObsField(
                REGISTRY_KEYS.CAT_COVS_KEY,
                categorical_covariate_keys,
                mod_key=modalities.categorical_covariate_keys,
            ),
            fields.MuDataNumericalJointObsField(
                REGISTRY_KEYS.CONT_COVS_KEY,
                continuous_covariate_keys,
                mod_key=modalities.continuous_covariate_keys,
            ),
        ]
        manager = scvi.data.AnnDataManager(fields=mudata_fields, setup_method_args=setup_method_args)
        manager.register_fields(mdata, **kwargs)
        cls.register_manager(manager)


def make_mdata():
    scvi.settings.seed = 0
    return scvi.data.synthetic_iid(batch_size=40, n_genes=15, n_proteins=6, n_regions=9,
                                   return_mudata=True)


def train_and_save(cls, path, legacy):
    mdata = make_mdata()
    cls.setup_mudata(mdata, modalities={{"rna_layer": "rna"}}, batch_key="batch")
    model = cls(mdata, n_latent=3, n_hidden=16)
    model.train(max_epochs=2, batch_size=40, accelerator="cpu")
    model.save(path, save_anndata=True, overwrite=True, legacy_mudata_format=legacy)
    return model
"""

DRIVER = """
import sys, warnings
warnings.simplefilter("ignore")
# scvi-tools only warns when the var_names differ: here that is a failure
warnings.filterwarnings("error", message=".*var_names.*")
args = sys.argv[1:]
while args:
    mode, path, extra = args[:3]
    args = args[3:]
    if mode == "save":
        model = train_and_save(MuDataSCVI, path, legacy=extra == "legacy")
    else:
        model = MuDataSCVI.load(path, accelerator="cpu", allowed_classes_names_list=["SCVI"])
        np.save(extra, model.get_latent_representation())
"""


@pytest.fixture
def ns():
    namespace: dict = {"__name__": "mudata_files_model"}
    exec(MODEL_CODE.format(package="scvi_rs"), namespace)
    return namespace


def _saved(path) -> dict:
    return safe_torch_load(os.path.join(path, "model.pt"))


def _trained(ns, path, legacy=False):
    return ns["train_and_save"](SCVI, str(path), legacy)


def test_var_names_are_saved_per_modality(ns, tmp_path):
    model = _trained(ns, tmp_path / "m")
    var_names = _saved(tmp_path / "m")["var_names"]
    assert isinstance(var_names, dict)
    assert list(var_names) == list(model.adata.mod)
    for modality, names in var_names.items():
        np.testing.assert_array_equal(names, model.adata.mod[modality].var_names.astype(str))
    assert model.get_var_names().keys() == var_names.keys()


def test_legacy_layout_is_one_flat_array_and_still_loads(ns, tmp_path):
    model = _trained(ns, tmp_path / "m", legacy=True)
    var_names = _saved(tmp_path / "m")["var_names"]
    np.testing.assert_array_equal(var_names, model.adata.var_names.astype(str))
    loaded = SCVI.load(str(tmp_path / "m"))
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-6
    )
    renamed = model.adata.copy()
    renamed.mod["rna"].var_names = [f"other_{i}" for i in range(renamed.mod["rna"].n_vars)]
    renamed.update()
    with pytest.raises(
        ValueError, match=r"var_names of the MuData \(every modality's, in order\) do not match"
    ):
        SCVI.load(str(tmp_path / "m"), adata=renamed)


def test_a_saved_model_loads_with_its_mudata(ns, tmp_path):
    model = _trained(ns, tmp_path / "m")
    expected = model.get_latent_representation()
    loaded = SCVI.load(str(tmp_path / "m"))
    np.testing.assert_allclose(loaded.get_latent_representation(), expected, atol=1e-6)
    fresh = ns["make_mdata"]()
    given = SCVI.load(str(tmp_path / "m"), adata=fresh)
    np.testing.assert_allclose(given.get_latent_representation(), expected, atol=1e-6)
    bare = SCVI.load(str(tmp_path / "m"), adata=False)
    np.testing.assert_array_equal(bare.get_var_names(), model.adata.mod["rna"].var_names)


def test_genes_of_the_modality_the_model_reads_must_match(ns, tmp_path):
    _trained(ns, tmp_path / "m")
    mdata = ns["make_mdata"]()
    mdata.mod["rna"] = mdata.mod["rna"][:, ::-1].copy()
    mdata.update()
    with pytest.raises(ValueError, match=r"var_names of modality 'rna' do not match"):
        SCVI.load(str(tmp_path / "m"), adata=mdata)
    del mdata.mod["rna"]
    mdata.update()
    with pytest.raises(ValueError, match=r"lacks the modalities \['rna'\]"):
        SCVI.load(str(tmp_path / "m"), adata=mdata)


def test_other_modalities_only_warn_as_in_scvi_tools(ns, tmp_path):
    model = _trained(ns, tmp_path / "m")
    mdata = ns["make_mdata"]()
    mdata.mod["protein_expression"] = mdata.mod["protein_expression"][:, :2].copy()
    mdata.update()
    with pytest.warns(UserWarning, match="'protein_expression'.*does not read this modality"):
        loaded = SCVI.load(str(tmp_path / "m"), adata=mdata)
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-6
    )
    del mdata.mod["accessibility"]
    mdata.update()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SCVI.load(str(tmp_path / "m"), adata=mdata)


def test_an_anndata_cannot_stand_in_for_the_mudata(ns, tmp_path):
    model = _trained(ns, tmp_path / "m")
    with pytest.raises(ValueError, match="saved with a MuData"):
        SCVI.load(str(tmp_path / "m"), adata=model.adata.mod["rna"].copy())
    with pytest.raises(ValueError, match="use prepare_query_mudata"):
        SCVI.prepare_query_anndata(model.adata.mod["rna"].copy(), str(tmp_path / "m"))


def test_query_mudata_is_padded_per_modality_and_mapped(ns, tmp_path):
    model = _trained(ns, tmp_path / "m")
    reference = SCVI.prepare_query_mudata(None, str(tmp_path / "m"), True)
    np.testing.assert_array_equal(reference["rna"], model.adata.mod["rna"].var_names)

    query = ns["make_mdata"]()
    query.mod["rna"] = query.mod["rna"][:, 3:][:, ::-1].copy()  # 3 genes missing, reversed
    query.update()
    prepared = SCVI.prepare_query_mudata(query, model, inplace=False)
    assert list(prepared.mod) == ["rna"]
    np.testing.assert_array_equal(prepared.mod["rna"].var_names, reference["rna"])
    np.testing.assert_array_equal(prepared.mod["rna"].X[:, :3], 0)

    query_model = SCVI.load_query_data(prepared, str(tmp_path / "m"))
    query_model.train(max_epochs=1, batch_size=40)
    assert query_model.get_latent_representation().shape == (prepared.n_obs, 3)

    flat_dir = tmp_path / "flat"
    adata = scvi_rs.data.synthetic_iid(batch_size=20, n_genes=10)
    SCVI.setup_anndata(adata)
    SCVI(adata, n_latent=2).save(str(flat_dir))
    with pytest.raises(ValueError, match="use prepare_query_anndata"):
        SCVI.prepare_query_mudata(query, str(flat_dir))


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


def _run_scvi_tools(*args: str) -> None:
    python = _scvi_tools_python()
    if python is None:
        pytest.skip("scvi-tools is not installed (set SCVI_TOOLS_PYTHON to use another venv)")
    script = MODEL_CODE.format(package="scvi") + DRIVER
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)  # no import alias: `scvi` must be scvi-tools itself
    proc = subprocess.run(
        [python, "-c", script, *args], capture_output=True, text=True, env=env, timeout=600
    )
    if proc.returncode != 0 and "No module named 'scvi'" in proc.stderr:
        pytest.skip(f"{python} cannot import scvi")
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_scvi_tools_mudata_files_load_in_scvi_rs(ns, tmp_path):
    new, legacy = str(tmp_path / "new"), str(tmp_path / "legacy")
    _run_scvi_tools("save", new, "new", "load", new, str(tmp_path / "new.npy"))
    _run_scvi_tools("save", legacy, "legacy", "load", legacy, str(tmp_path / "legacy.npy"))
    assert isinstance(_saved(new)["var_names"], dict)
    assert not isinstance(_saved(legacy)["var_names"], dict)
    for path in (new, legacy):
        expected = np.load(f"{path}.npy")
        # with our SCVI (its own setup_mudata) and with the same subclass
        model = SCVI.load(path, allowed_classes_names_list=["MuDataSCVI"])
        np.testing.assert_allclose(model.get_latent_representation(), expected, atol=1e-5)
        same = ns["MuDataSCVI"].load(path, adata=ns["make_mdata"]())
        np.testing.assert_allclose(same.get_latent_representation(), expected, atol=1e-5)


def test_scvi_rs_mudata_files_load_in_scvi_tools(ns, tmp_path):
    new, legacy = tmp_path / "new", tmp_path / "legacy"
    latents = {
        "new": _trained(ns, new).get_latent_representation(),
        "legacy": _trained(ns, legacy, legacy=True).get_latent_representation(),
    }
    _run_scvi_tools(
        "load",
        str(new),
        str(tmp_path / "new.npy"),
        "load",
        str(legacy),
        str(tmp_path / "legacy.npy"),
    )
    for name, expected in latents.items():
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), expected, atol=1e-5)
