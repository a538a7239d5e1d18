"""scvi_rs.settings and scvi_rs.REGISTRY_KEYS (spec §1.1, §1.2)."""
# ruff: noqa: NPY002 - these tests exercise numpy's global legacy RNG on purpose

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest

import scvi_rs
from scvi_rs import REGISTRY_KEYS, settings
from scvi_rs._settings import ScviConfig


@pytest.fixture
def restore_settings():
    saved = {
        name: getattr(settings, name)
        for name in (
            "verbosity",
            "progress_bar_style",
            "batch_size",
            "logging_dir",
            "dl_num_workers",
            "dl_persistent_workers",
            "warnings_stacklevel",
        )
    }
    seed = settings.seed
    yield
    for name, value in saved.items():
        setattr(settings, name, value)
    settings._seed = seed


def test_registry_keys_values_and_order():
    expected = [
        ("X_KEY", "X"),
        ("ATAC_X_KEY", "atac"),
        ("BATCH_KEY", "batch"),
        ("SAMPLE_KEY", "sample"),
        ("LABELS_KEY", "labels"),
        ("PROTEIN_EXP_KEY", "proteins"),
        ("CAT_COVS_KEY", "extra_categorical_covs"),
        ("CONT_COVS_KEY", "extra_continuous_covs"),
        ("INDICES_KEY", "ind_x"),
        ("SIZE_FACTOR_KEY", "size_factor"),
        ("MINIFY_TYPE_KEY", "minify_type"),
        ("LATENT_QZM_KEY", "latent_qzm"),
        ("LATENT_QZV_KEY", "latent_qzv"),
        ("OBSERVED_LIB_SIZE", "observed_lib_size"),
    ]
    assert list(REGISTRY_KEYS._fields) == [k for k, _ in expected]
    assert list(REGISTRY_KEYS) == [v for _, v in expected]
    for key, value in expected:
        assert getattr(REGISTRY_KEYS, key) == value
    assert scvi_rs.REGISTRY_KEYS is REGISTRY_KEYS


def test_defaults_of_a_fresh_config():
    config = ScviConfig()
    assert config.verbosity == logging.INFO == 20
    assert config.progress_bar_style == "tqdm"
    assert config.batch_size == 128
    assert config.seed is None
    assert config.logging_dir == Path("./scvi_log/").resolve()
    assert config.logging_dir.is_absolute()
    assert config.dl_num_workers == 0
    assert config.dl_persistent_workers is False
    assert config.warnings_stacklevel == 2
    assert config.mlflow_set_tracking_uri == ""
    assert config.mlflow_set_experiment == "mlflow_experiment"
    assert config.num_threads is None


def test_bad_progress_bar_style():
    with pytest.raises(ValueError, match=r"Progress bar style must be in \['rich', 'tqdm'\]"):
        ScviConfig(progress_bar_style="fancy")


def test_verbosity_accepts_level_names(restore_settings):
    settings.verbosity = "warning"
    assert settings.verbosity == logging.WARNING
    assert logging.getLogger("scvi_rs").level == logging.WARNING
    settings.verbosity = logging.DEBUG
    assert logging.getLogger("scvi_rs").level == logging.DEBUG
    assert logging.getLogger("scvi_rs").handlers


def test_plain_settings_round_trip(restore_settings):
    settings.batch_size = 64
    settings.dl_num_workers = 1
    settings.dl_persistent_workers = True
    settings.logging_dir = "relative/dir"
    assert settings.batch_size == 64
    assert settings.dl_num_workers == 1
    assert settings.dl_persistent_workers is True
    assert settings.logging_dir == Path("relative/dir").resolve()


def test_seed_seeds_random_numpy_and_torch(restore_settings):
    torch = pytest.importorskip("torch")

    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    settings.seed = 0
    first = draw()
    settings.seed = 0
    assert draw() == first
    settings.seed = 1
    assert draw() != first
    assert settings.seed == 1
    assert torch.backends.cudnn.deterministic is True
    assert torch.backends.cudnn.benchmark is False
    settings.seed = None
    assert settings.seed is None


def test_logger_does_not_propagate_and_compat_attributes():
    assert logging.getLogger("scvi_rs").propagate is False
    assert settings.jax_preallocate_gpu_memory is False
    assert "batch_size=" in repr(settings)


def _thp_setting(code: str, **env: str) -> str:
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    environ.update(env)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code + "; import os; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))",
        ],
        capture_output=True,
        text=True,
        env=environ,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def test_huge_pages_for_large_cpu_tensors_unless_the_user_decided():
    assert _thp_setting("import scvi_rs") == "1"
    assert _thp_setting("import scvi_rs", THP_MEM_ALLOC_ENABLE="0") == "0"
    # torch reads it at its first large CPU allocation, so importing torch first is fine
    assert _thp_setting("import torch, scvi_rs") == "1"
