"""Shared fixtures: small synthetic AnnData and a seeded environment."""

from __future__ import annotations

import pytest
import torch

import scvi_rs

# Two cores: keep torch from oversubscribing while tests run.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def adata():
    """A fresh 400 x 100 synthetic AnnData (2 batches, 3 labels), not set up."""
    scvi_rs.settings.seed = 0
    return scvi_rs.data.synthetic_iid()
