"""strategy="ddp": two CPU processes under torchrun (gloo) train one model together."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

import scvi_rs

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("ddp_train_script.py")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("mode", ["host_loader", "device_backed"])
def test_two_processes_keep_one_model_and_one_history(tmp_path, mode):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(SCRIPT),
            str(tmp_path),
            mode,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"report_{r}.json").read_text()) for r in (0, 1)]
    params = [np.load(tmp_path / f"params_{r}.npy") for r in (0, 1)]
    # gradients are averaged: both replicas end with the same weights
    np.testing.assert_array_equal(params[0], params[1])
    # each process ran its half of every epoch's minibatches (n_train = 540 of 600 cells)
    n_train = reports[0]["n_train"]
    assert n_train == 540
    per_process = math.ceil(n_train / 2) if mode == "host_loader" else n_train // 2
    assert reports[0]["steps"] == reports[1]["steps"] == 2 * math.ceil(per_process / 64)
    # metrics are summed over processes before logging: one history, finite
    assert reports[0]["elbo_train"] == reports[1]["elbo_train"]
    assert reports[0]["elbo_validation"] == reports[1]["elbo_validation"]
    assert len(reports[0]["elbo_validation"]) == 2
    assert all(np.isfinite(reports[0]["elbo_train"]))


def test_ddp_without_a_launcher_is_a_clear_error(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    scvi_rs.settings.seed = 0
    adata = scvi_rs.data.synthetic_iid()
    scvi_rs.model.SCVI.setup_anndata(adata)
    model = scvi_rs.model.SCVI(adata, n_hidden=8, n_latent=2)
    with pytest.raises(RuntimeError, match="torchrun"):
        model.train(max_epochs=1, strategy="ddp", accelerator="cpu", enable_progress_bar=False)
    with pytest.raises(NotImplementedError, match="strategy='ddp'"):
        model.train(max_epochs=1, accelerator="cpu", devices=2, enable_progress_bar=False)
