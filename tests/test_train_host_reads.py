"""A training epoch reads tensors back to the host a fixed number of times, not per step.

On a GPU every such read (``.item()``, ``.cpu()``, ``bool(tensor)``, ...) stalls the
host until the device catches up. Here the CPU stands in: each reading method of
``torch.Tensor`` is counted over whole ``model.train`` calls with few and with many steps
per epoch; the counts must be equal.
"""

from __future__ import annotations

import collections
import contextlib

import pytest
import torch
from scipy import sparse

import scvi_rs
from scvi_rs.dataloaders import DeviceBackedDataSplitter
from scvi_rs.distributions import _negative_binomial as nb_module

# `.numpy()` is left out: it raises on a CUDA tensor, so it can only touch host memory
# (the loader fills its host-side batch buffers through numpy views).
_READING_METHODS = ("item", "cpu", "tolist", "nonzero", "__bool__", "__float__", "__int__")


@contextlib.contextmanager
def _count_host_reads():
    counts: collections.Counter[str] = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in _READING_METHODS}

    def _counting(name):
        original = originals[name]

        def wrapper(self, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)

        return wrapper

    try:
        for name in _READING_METHODS:
            setattr(torch.Tensor, name, _counting(name))
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _reads_per_train_call(
    batch_size: int, device_backed: bool = False, **train_kwargs
) -> collections.Counter[str]:
    scvi_rs.settings.seed = 0
    adata = scvi_rs.data.synthetic_iid(batch_size=512)
    adata.X = sparse.csr_matrix(adata.X)
    scvi_rs.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi_rs.model.SCVI(adata, n_hidden=16, n_latent=4)
    if device_backed:
        train_kwargs["datamodule"] = DeviceBackedDataSplitter(
            model.adata_manager, batch_size=batch_size, shuffle=True
        )
        train_kwargs["datamodule"].setup()  # the one-off upload is not part of a step
    with _count_host_reads() as counts:
        model.train(
            max_epochs=2,
            batch_size=batch_size,
            check_val_every_n_epoch=1,
            enable_progress_bar=False,
            **train_kwargs,
        )
    return counts


@pytest.mark.parametrize(
    "train_kwargs",
    [
        {},
        {"gradient_clip_val": 1.0, "plan_kwargs": {"n_steps_kl_warmup": 50}},
        {"device_backed": True},
    ],
    ids=["defaults", "clipping_and_step_warmup", "device_backed"],
)
def test_host_reads_do_not_grow_with_steps(monkeypatch, train_kwargs):
    # The eager CPU-only sparse lgamma path indexes non-zero counts; accelerators and
    # compiled steps take the dense path, which is the one counted here.
    monkeypatch.setattr(nb_module, "_sparse_lgamma_applies", lambda *args: False)
    few = _reads_per_train_call(batch_size=512, **train_kwargs)  # 2 train steps an epoch
    many = _reads_per_train_call(batch_size=32, **train_kwargs)  # 29 train steps an epoch
    assert few == many, (few, many)
