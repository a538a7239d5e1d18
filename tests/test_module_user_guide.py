"""The module user guide (examples/module_user_guide.py) runs every cell against scvi_rs,
and the Pyro module it builds trains with our SVI plan."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyro")

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "module_user_guide.py"


def test_module_user_guide_runs_every_cell(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Last run with scvi-tools version:" in out
    assert "(transformation): Softmax(dim=-1)" in out
    assert out.count("MyModule(") == 1
    assert out.count("MyPyroModule(") == 1
    assert "grad_fn=<SoftmaxBackward0>" in out


def test_module_user_guide_pyro_module_trains_with_svi():
    import pyro

    import scvi_rs as scvi
    from scvi_rs.data import AnnDataManager, synthetic_iid
    from scvi_rs.data.fields import LayerField
    from scvi_rs.dataloaders import AnnDataLoader
    from scvi_rs.train import PyroTrainingPlan, Trainer

    namespace = runpy.run_path(str(EXAMPLE), run_name="module_user_guide")
    adata = synthetic_iid(batch_size=100, n_genes=30)
    manager = AnnDataManager(fields=[LayerField(scvi.REGISTRY_KEYS.X_KEY, None)])
    manager.register_fields(adata)
    loader = AnnDataLoader(manager, shuffle=True, batch_size=50)

    pyro.clear_param_store()
    module = namespace["MyPyroModule"](adata.n_vars, 4)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    plan = PyroTrainingPlan(module, optim_kwargs={"lr": 1e-2})
    plan.n_obs_training = adata.n_obs
    trainer = Trainer(accelerator="cpu", max_epochs=3, enable_progress_bar=False)
    trainer.fit(plan, loader)

    history = trainer.logger.history["elbo_train"]
    assert len(history) == 3
    assert np.isfinite(history["elbo_train"].to_numpy()).all()
    changed = [k for k, v in module.state_dict().items() if not (v == before[k]).all()]
    assert "decoder.neural_net.0.weight" in changed
    assert "mean_encoder.neural_net.0.weight" in changed
