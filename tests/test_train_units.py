"""Behaviour of the training building blocks that need no data or module."""

from __future__ import annotations

import math

import pytest
import torch

from scvi_rs.model.base._training_mixin import get_max_epochs_heuristic
from scvi_rs.train import (
    LoudEarlyStopping,
    Trainer,
    TrainingPlanConfig,
    merge_kwargs,
    parse_device_args,
)
from scvi_rs.train._logger import SimpleLogger
from scvi_rs.train._metrics import EpochAccumulator
from scvi_rs.train._trainingplans import _compute_kl_weight


@pytest.mark.parametrize(
    ("epoch", "expected"), [(0, 0.0), (1, 0.0025), (200, 0.5), (400, 1.0), (500, 1.0)]
)
def test_kl_weight_epoch_warmup_matches_reference(epoch, expected):
    assert _compute_kl_weight(epoch, 0, 400, None) == pytest.approx(expected)


def test_kl_weight_step_warmup_and_no_warmup():
    assert _compute_kl_weight(0, 50, None, 100) == pytest.approx(0.5)
    assert _compute_kl_weight(0, 150, None, 100) == 1.0
    assert _compute_kl_weight(3, 3, None, None) == 1.0
    # epochs take precedence over steps
    assert _compute_kl_weight(1, 50, 4, 100) == pytest.approx(0.25)
    assert _compute_kl_weight(0, 0, 10, None, max_kl_weight=2.0, min_kl_weight=1.0) == 1.0
    assert _compute_kl_weight(5, 0, 10, None, max_kl_weight=2.0, min_kl_weight=1.0) == 1.5


def test_kl_weight_min_above_max_is_an_error():
    with pytest.raises(ValueError, match=r"min_kl_weight=2\.0 is larger than max_kl_weight=1\.0"):
        _compute_kl_weight(0, 0, 400, None, max_kl_weight=1.0, min_kl_weight=2.0)


def test_merge_kwargs_overrides_win_and_configs_flatten():
    config = TrainingPlanConfig(lr=0.1, extra_kwargs={"foo": 1})
    merged = merge_kwargs(config, {"lr": 0.5}, name="plan")
    assert merged["lr"] == 0.5
    assert merged["foo"] == 1
    assert merge_kwargs(None, None, name="plan") == {}
    with pytest.raises(TypeError, match="plan config"):
        merge_kwargs(42, None, name="plan")


def test_epoch_accumulator_weighted_means_on_device_values():
    acc = EpochAccumulator()
    acc.update("loss", torch.tensor(2.0), 10)
    acc.update("loss", torch.tensor(4.0), 30)
    acc.add("rec", torch.tensor(100.0), 10)
    acc.add("rec", torch.tensor(300.0), 30)
    values = acc.compute()
    assert values["loss"] == pytest.approx(3.5)
    assert values["rec"] == pytest.approx(10.0)
    acc.reset()
    assert acc.compute() == {}


def test_simple_logger_history_layout():
    logger = SimpleLogger()
    logger.log_metrics({"elbo_train": 3.0, "epoch": 0}, step=7)
    logger.log_metrics({"elbo_train": 2.0, "epoch": 1}, step=9)
    logger.log_metrics({"elbo_train": 1.5, "epoch": 1}, step=11)  # last value of the epoch wins
    df = logger.history["elbo_train"]
    assert list(df.columns) == ["elbo_train"]
    assert df.index.name == "epoch"
    assert df["elbo_train"].tolist() == [3.0, 1.5]
    # without an "epoch" entry, values are indexed by the step (Lightning's logger call)
    logger.log_metrics({"train_loss_step": 4.0}, step=3)
    assert logger.history["train_loss_step"].index.name == "step"


class _FakeTrainer:
    def __init__(self):
        self.callback_metrics = {}
        self.current_epoch = 0
        self.should_stop = False


def _run_early_stopping(values, **kwargs):
    callback = LoudEarlyStopping(**kwargs)
    trainer = _FakeTrainer()
    for epoch, value in enumerate(values):
        trainer.current_epoch = epoch
        trainer.callback_metrics = {"elbo_validation": value}
        callback.on_validation_end(trainer, None)
        if trainer.should_stop:
            return epoch
    return None


def test_early_stopping_stops_after_patience_without_improvement():
    assert _run_early_stopping([5, 4, 4, 4, 4, 4], patience=3) == 4
    assert _run_early_stopping([5, 4, 3, 2, 1], patience=1) is None
    # min_delta: improvements smaller than it do not count
    assert _run_early_stopping([5, 4.95, 4.9, 4.85], patience=2, min_delta=0.1) == 2
    # mode max
    assert _run_early_stopping([1, 2, 2, 2], patience=2, mode="max") == 3
    # warm-up epochs never stop
    assert _run_early_stopping([5, 5, 5, 5, 5], patience=1, warmup_epochs=3) == 3
    assert _run_early_stopping([5, math.nan], patience=10) == 1


def test_early_stopping_missing_metric_names_available_ones():
    callback = LoudEarlyStopping(monitor="elbo_validation")
    trainer = _FakeTrainer()
    trainer.callback_metrics = {"elbo_train": 1.0}
    with pytest.raises(RuntimeError, match=r"elbo_validation.*elbo_train"):
        callback.on_validation_end(trainer, None)


def test_parse_device_args_cpu_and_auto():
    accelerator, devices, device = parse_device_args("cpu", "auto", return_device="torch")
    assert (accelerator, devices, device) == ("cpu", [0], torch.device("cpu"))
    accelerator, _, device = parse_device_args("auto", "auto", return_device="torch")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert device.type == expected
    with pytest.raises(ValueError, match="Unknown accelerator"):
        parse_device_args("tpu")
    with pytest.raises(ValueError, match="single device"):
        parse_device_args("cpu", [0, 1], validate_single_device=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_gpu_request_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        parse_device_args("gpu", "auto")


def test_trainer_rejects_unknown_kwargs_and_sets_validation_cadence():
    with pytest.raises(TypeError, match="not_an_option"):
        Trainer(accelerator="cpu", not_an_option=1)
    assert Trainer(accelerator="cpu").check_val_every_n_epoch > 10**9
    assert Trainer(accelerator="cpu", early_stopping=True).check_val_every_n_epoch == 1
    assert Trainer(accelerator="cpu", check_val_every_n_epoch=3).check_val_every_n_epoch == 3
    with pytest.raises(ValueError, match="progress_bar_refresh_rate"):
        Trainer(accelerator="cpu", progress_bar_refresh_rate=5)


@pytest.mark.parametrize(
    ("n_obs", "expected"), [(400, 400), (20000, 400), (50000, 160), (100000, 80)]
)
def test_max_epochs_heuristic(n_obs, expected):
    assert get_max_epochs_heuristic(n_obs) == expected


def test_max_epochs_heuristic_floor_warns():
    with pytest.warns(UserWarning, match="max_epochs"):
        assert get_max_epochs_heuristic(100_000_000) == 1


def test_metric_hooks_run_at_plan_creation_and_can_be_overridden():
    from scvi_rs.module import VAE
    from scvi_rs.train import TrainingPlan

    calls = []

    class Plan(TrainingPlan):
        def initialize_train_metrics(self):
            calls.append("train")
            super().initialize_train_metrics()

        def initialize_val_metrics(self):
            calls.append("validation")
            super().initialize_val_metrics()

    plan = Plan(VAE(n_input=10))
    assert calls == ["train", "validation"]
    plan._epoch_metrics["train"].add("elbo_train", 1.0, 1)
    plan.initialize_train_metrics()
    assert "elbo_train" not in plan._epoch_metrics["train"]


def test_configs_defined_beside_their_plans_are_found_in_the_config_module():
    pytest.importorskip("pyro")
    import scvi_rs.train as train
    from scvi_rs.train import _config

    for name in (
        "PyroTrainingPlanConfig",
        "LowLevelPyroTrainingPlanConfig",
        "SemiSupervisedTrainingPlanConfig",
    ):
        assert getattr(_config, name) is getattr(train, name)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchConfig'"):
        _config.NoSuchConfig  # noqa: B018
