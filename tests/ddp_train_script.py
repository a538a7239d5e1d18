"""Run by tests/test_train_ddp.py under torchrun: train SCVI with strategy="ddp" on CPU."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

import scvi_rs

torch.set_num_threads(1)
out_dir, mode = sys.argv[1], sys.argv[2]
rank = int(os.environ["RANK"])
scvi_rs.settings.seed = 0
adata = scvi_rs.data.synthetic_iid(batch_size=300)
scvi_rs.model.SCVI.setup_anndata(adata, batch_key="batch")
model = scvi_rs.model.SCVI(adata, n_hidden=16, n_latent=4)
extra = {}
if mode == "device_backed":
    extra["datamodule"] = scvi_rs.dataloaders.DeviceBackedDataSplitter(
        model.adata_manager, accelerator="cpu", batch_size=64, shuffle=True
    )
model.train(
    max_epochs=2,
    batch_size=64,
    accelerator="cpu",
    strategy="ddp",
    check_val_every_n_epoch=1,
    enable_progress_bar=False,
    **extra,
)
params = torch.cat([p.detach().reshape(-1) for p in model.module.parameters()]).numpy()
np.save(os.path.join(out_dir, f"params_{rank}.npy"), params)
report = {
    "rank": rank,
    "steps": model.trainer.global_step,
    "elbo_train": model.history["elbo_train"].iloc[:, 0].tolist(),
    "elbo_validation": model.history["elbo_validation"].iloc[:, 0].tolist(),
    "n_train": len(model.train_indices),
}
with open(os.path.join(out_dir, f"report_{rank}.json"), "w") as f:
    json.dump(report, f)
