"""The train-step contract: model.train -> TrainRunner -> Trainer -> TrainingPlan.

Behaviour checked here: interruption leaves a defined model state, the Trainer needs only
the plan's public interface, the batch-transfer hooks run in Lightning's order, what
``training_step`` may return, per-step metric names, checkpoints (write, resume, top-k
saves of the whole model), and early stopping without a validation set.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import scvi_rs
from scvi_rs.dataloaders import DataSplitter, DeviceBackedDataSplitter
from scvi_rs.train import (
    Callback,
    SaveCheckpoint,
    Strategy,
    Trainer,
    TrainingPlan,
    TrainRunner,
)


@pytest.fixture
def model():
    scvi_rs.settings.seed = 0
    adata = scvi_rs.data.synthetic_iid(batch_size=100, n_genes=30)
    scvi_rs.model.SCVI.setup_anndata(adata, batch_key="batch")
    return scvi_rs.model.SCVI(adata, n_hidden=8, n_latent=3)


_QUIET = {"enable_progress_bar": False, "accelerator": "cpu"}


class _InterruptAt(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.exceptions: list[BaseException] = []

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt

    def on_exception(self, trainer, pl_module, exception):
        self.exceptions.append(exception)


def test_keyboard_interrupt_reaches_caller_and_leaves_a_defined_state(model):
    callback = _InterruptAt(epoch=2)
    with pytest.raises(KeyboardInterrupt):
        model.train(max_epochs=5, callbacks=[callback], **_QUIET)
    assert len(callback.exceptions) == 1
    assert isinstance(callback.exceptions[0], KeyboardInterrupt)
    assert model.is_trained_ is False
    assert list(model.history["elbo_train"].index) == [0, 1]
    assert model.module.training is False
    assert model.trainer.interrupted is True
    assert model.trainer.state.status == "interrupted"


def test_interrupting_a_further_training_keeps_trained_state_and_history(model):
    model.train(max_epochs=2, **_QUIET)
    with pytest.raises(KeyboardInterrupt):
        model.train(max_epochs=5, callbacks=[_InterruptAt(epoch=1)], **_QUIET)
    assert model.is_trained_ is True
    assert list(model.history["elbo_train"].index) == [0, 1, 2]


class _PublicOnlyPlan:
    """A plan with the public interface only: Lightning's step, optimizer and hook names."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.forward_module = module
        self.automatic_optimization = True
        self.trainer = None
        self.current_epoch = 0
        self.global_step = 0
        self.calls: list[str] = []

    def configure_optimizers(self):
        return torch.optim.SGD(self.module.parameters(), lr=0.1)

    def training_step(self, batch, batch_idx):
        self.calls.append("training_step")
        return {"loss": ((self.forward_module(batch["x"]) - batch["y"]) ** 2).mean()}

    def validation_step(self, batch, batch_idx):
        self.calls.append("validation_step")

    def flush_epoch_metrics(self, stage):
        return {f"seen_{stage}": float(len(self.calls))}, {}

    def on_train_epoch_end(self):
        self.calls.append("on_train_epoch_end")


class _Batches:
    def __init__(self, n: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.batches = [
            {
                "x": torch.randn(4, 2, generator=generator),
                "y": torch.randn(4, 1, generator=generator),
            }
            for _ in range(n)
        ]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def test_trainer_drives_a_plan_through_its_public_interface_only():
    plan = _PublicOnlyPlan(torch.nn.Linear(2, 1))
    before = plan.module.weight.detach().clone()
    trainer = Trainer(max_epochs=2, check_val_every_n_epoch=1, **_QUIET)
    trainer.fit(plan, train_dataloaders=_Batches(3), val_dataloaders=_Batches(2))
    assert plan.calls.count("training_step") == 6
    assert plan.calls.count("validation_step") == 4
    assert plan.calls.count("on_train_epoch_end") == 2
    assert trainer.global_step == 6
    assert trainer.current_epoch == 2
    assert not torch.equal(before, plan.module.weight)
    assert list(trainer.logger.history["seen_train"].index) == [0, 1]


class _RecordingSplitter(DataSplitter):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.events: list[str] = []

    def on_before_batch_transfer(self, batch, dataloader_idx):
        self.events.append("before")
        return super().on_before_batch_transfer(batch, dataloader_idx)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if isinstance(batch, dict):  # the base class recurses into the batch's values
            self.events.append("transfer")
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        self.events.append("after")
        return super().on_after_batch_transfer(batch, dataloader_idx)


def test_datamodule_batch_transfer_hooks_run_in_order_for_every_batch(model):
    splitter = _RecordingSplitter(model.adata_manager, train_size=0.5, batch_size=64)
    model.train(max_epochs=1, datamodule=splitter, check_val_every_n_epoch=1, **_QUIET)
    n_batches = int(np.ceil(100 / 64)) * 2  # 100 training and 100 validation cells
    assert splitter.events == ["before", "transfer", "after"] * n_batches


class _SkippingPlan(TrainingPlan):
    def training_step(self, batch, batch_idx):
        return None


def test_training_step_returning_none_skips_the_optimizer_step(model):
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    splitter = DataSplitter(model.adata_manager)
    runner = TrainRunner(model, _SkippingPlan(model.module), splitter, max_epochs=2, **_QUIET)
    runner()
    for key, value in model.module.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert model.trainer.global_step > 0


class _BadStepPlan(TrainingPlan):
    def training_step(self, batch, batch_idx):
        return "not a loss"


def test_training_step_returning_something_else_is_a_clear_error(model):
    runner = TrainRunner(
        model, _BadStepPlan(model.module), DataSplitter(model.adata_manager), 1, **_QUIET
    )
    with pytest.raises(TypeError, match="training_step must return a loss tensor"):
        runner()
    assert model.is_trained_ is False


def test_on_step_logs_step_and_epoch_names(model):
    model.train(
        max_epochs=2,
        check_val_every_n_epoch=1,
        batch_size=32,
        plan_kwargs={"on_step": True, "on_epoch": True},
        **_QUIET,
    )
    history = model.history
    n_steps = model.trainer.global_step
    assert list(history["train_loss_step"].index) == list(range(n_steps))
    assert history["train_loss_step"].index.name == "step"
    assert history["validation_loss_step"].index.name == "step"
    for name in ("train_loss", "elbo_train", "validation_loss", "elbo_validation"):
        assert list(history[f"{name}_epoch"].index) == [0, 1]
        assert name not in history
    # the plain name is what callbacks see: the epoch mean
    assert float(model.trainer.callback_metrics["elbo_validation"]) == pytest.approx(
        history["elbo_validation_epoch"].iloc[-1, 0]
    )


def test_runner_resolves_one_strategy_and_the_trainer_uses_it(model):
    plan = TrainingPlan(model.module)
    runner = TrainRunner(model, plan, DataSplitter(model.adata_manager), 1, **_QUIET)
    assert isinstance(runner.strategy, Strategy)
    assert runner.trainer.strategy is runner.strategy
    assert runner.trainer.root_device == runner.device == torch.device("cpu")
    with pytest.raises(ValueError, match="Unknown strategy"):
        Strategy.resolve("cpu", "auto", "deepspeed")


def test_early_stopping_without_validation_set_fails_for_splitter_subclasses(model):
    splitter = DeviceBackedDataSplitter(model.adata_manager, train_size=1.0, batch_size=64)
    with pytest.raises(ValueError, match="no validation set"):
        model.train(max_epochs=2, datamodule=splitter, early_stopping=True, **_QUIET)


def test_early_stopping_with_a_datamodule_lacking_validation_data_fails_loudly(model):
    class NoValidation:
        def __init__(self, splitter):
            self.splitter = splitter

        def setup(self, stage=None):
            self.splitter.setup(stage)

        def train_dataloader(self):
            return self.splitter.train_dataloader()

    datamodule = NoValidation(DataSplitter(model.adata_manager))
    with pytest.raises(RuntimeError, match=r"elbo_validation.*validation set"):
        model.train(max_epochs=2, datamodule=datamodule, early_stopping=True, **_QUIET)


def test_checkpoint_round_trip_resumes_after_the_saved_epoch(model, tmp_path):
    class SaveAtEnd(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.save_checkpoint(tmp_path / f"epoch{trainer.current_epoch}.ckpt")

    model.train(max_epochs=2, check_val_every_n_epoch=1, callbacks=[SaveAtEnd()], **_QUIET)
    path = tmp_path / "epoch0.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    assert {"state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks"} <= set(
        checkpoint
    )
    assert all(key.startswith("module.") for key in checkpoint["state_dict"])

    resumed = scvi_rs.model.SCVI(model.adata, n_hidden=8, n_latent=3)
    resumed.train(max_epochs=3, ckpt_path=str(path), **_QUIET)
    assert resumed.trainer.current_epoch == 3
    assert list(resumed.history["elbo_train"].index) == [1, 2]
    assert resumed.trainer.global_step == 3 * model.trainer.global_step // 2

    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        resumed.train(max_epochs=1, ckpt_path=str(tmp_path / "missing.ckpt"), **_QUIET)


def test_save_checkpoint_keeps_the_best_model_saves(model, tmp_path):
    callback = SaveCheckpoint(
        dirpath=tmp_path, monitor="elbo_validation", save_top_k=2, load_best_on_end=True
    )
    model.train(max_epochs=4, callbacks=[callback], **_QUIET)
    saves = sorted(os.listdir(tmp_path))
    assert len(saves) == 2
    assert all(name.startswith("epoch=") and "elbo_validation=" in name for name in saves)
    assert os.path.basename(callback.best_model_path) in saves
    best = float(callback.best_model_score)
    assert best == pytest.approx(model.history["elbo_validation"].iloc[:, 0].min(), rel=1e-6)
    loaded = scvi_rs.model.SCVI.load(callback.best_model_path, adata=model.adata)
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, model.module.state_dict()[key]), key
    assert model.is_trained_ is True


def test_save_checkpoint_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        SaveCheckpoint(mode="best")
    with pytest.raises(ValueError, match="save_top_k"):
        SaveCheckpoint(save_top_k=-2)
    with pytest.raises(TypeError, match="not_an_option"):
        SaveCheckpoint(not_an_option=1)
    with pytest.warns(RuntimeWarning, match="save_last"):
        SaveCheckpoint(save_last=True)


def test_fast_dev_run_runs_a_few_batches_and_logs_nothing(model):
    model.train(max_epochs=10, fast_dev_run=2, batch_size=16, **_QUIET)
    assert model.trainer.global_step == 2
    assert model.history == {}


def test_model_without_anndata_trains_from_a_datamodule(model):
    splitter = DataSplitter(model.adata_manager)
    splitter.n_vars = model.adata.n_vars
    splitter.n_batch = 2
    bare = scvi_rs.model.SCVI(adata=None, n_latent=3)
    with pytest.raises(AttributeError, match="datamodule"):
        bare.train(max_epochs=1)
    with pytest.raises(ValueError, match="n_obs"):
        bare.train(datamodule=splitter)
    bare.train(max_epochs=1, datamodule=splitter, **_QUIET)
    assert bare.is_trained_
    assert bare.module.n_latent == 3

    incomplete = DataSplitter(model.adata_manager)
    with pytest.raises(AttributeError, match="n_vars, n_batch"):
        scvi_rs.model.SCVI(adata=None).train(max_epochs=1, datamodule=incomplete)
