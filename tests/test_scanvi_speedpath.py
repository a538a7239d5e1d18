"""The semi-supervised plan's cheap classification metrics: same epoch values, no host reads."""

from __future__ import annotations

import pytest
import torch

import scvi_rs as scvi
from scvi_rs.model import SCANVI
from scvi_rs.module import SCANVAE
from scvi_rs.module.base import LossOutput
from scvi_rs.train import SemiSupervisedTrainingPlan
from scvi_rs.train._semisupervised_trainingplan import (
    classification_step_values,
    multiclass_calibration_error,
)

N_LABELS = 3


def _loss_output(n_obs: int, n_labelled: int, generator: torch.Generator) -> LossOutput:
    logits = torch.randn(n_labelled, N_LABELS, generator=generator)
    labels = torch.randint(0, N_LABELS, (n_labelled, 1), generator=generator)
    return LossOutput(
        loss=torch.tensor(1.0),
        reconstruction_loss=torch.rand(n_obs, generator=generator),
        kl_local=torch.rand(n_obs, generator=generator),
        classification_loss=torch.nn.functional.cross_entropy(logits, labels.view(-1)),
        true_labels=labels,
        logits=logits,
    )


def _plan() -> SemiSupervisedTrainingPlan:
    module = SCANVAE(n_input=12, n_batch=1, n_labels=N_LABELS, n_hidden=8, n_latent=4)
    return SemiSupervisedTrainingPlan(module, n_classes=N_LABELS)


@pytest.mark.parametrize("mode", ["train", "validation"])
def test_epoch_means_are_the_minibatch_size_weighted_step_values(mode, monkeypatch):
    plan = _plan()
    monkeypatch.setattr(plan, "_stage", lambda: mode)
    generator = torch.Generator().manual_seed(0)
    outputs = [_loss_output(n, 7, generator) for n in (16, 16, 5)]
    for output in outputs:
        plan.compute_and_log_metrics(output, None, mode)
    logged, _ = plan.flush_epoch_metrics(mode)

    weights = torch.tensor([float(o.n_obs_minibatch) for o in outputs], dtype=torch.float64)
    steps = torch.stack(
        [
            classification_step_values(o.classification_loss, o.logits, o.true_labels)
            for o in outputs
        ]
    ).double()
    expected = (steps * weights[:, None]).sum(0) / weights.sum()
    names = ["classification_loss", "accuracy", "f1_score", "calibration_error"]
    for name, value in zip(names, expected.tolist(), strict=True):
        assert logged[f"{mode}_{name}"] == pytest.approx(value, rel=1e-9)
    # read once: the next epoch starts from nothing
    assert f"{mode}_accuracy" not in plan.flush_epoch_metrics(mode)[0]


def test_restarting_the_metrics_drops_pending_sums():
    plan = _plan()
    generator = torch.Generator().manual_seed(1)
    plan.compute_and_log_metrics(_loss_output(8, 4, generator), None, "train")
    plan.initialize_train_metrics()
    assert "train_accuracy" not in plan.flush_epoch_metrics("train")[0]


def test_calibration_error_takes_logits_and_probabilities_alike():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(50, 4, generator=generator) * 3
    target = torch.randint(0, 4, (50,), generator=generator)
    from_logits = multiclass_calibration_error(logits, target)
    from_probs = multiclass_calibration_error(logits.softmax(dim=1), target)
    assert float(from_logits) == pytest.approx(float(from_probs), abs=1e-6)
    assert 0.0 <= float(from_logits) <= 1.0


def test_step_values_match_a_hand_count():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    labels = torch.tensor([[0], [1], [1], [0]])
    loss = torch.nn.functional.cross_entropy(logits, labels.view(-1))
    values = classification_step_values(loss, logits, labels)
    assert values.shape == (4,)
    assert float(values[0]) == pytest.approx(float(loss))
    assert float(values[1]) == pytest.approx(0.75)  # accuracy
    assert float(values[2]) == pytest.approx(0.75)  # micro F1 of single-label predictions


def test_training_history_keeps_the_reference_names():
    adata = scvi.data.synthetic_iid(batch_size=40, n_genes=30, n_labels=3)
    SCANVI.setup_anndata(adata, "labels", "label_0", batch_key="batch")
    model = SCANVI(adata, n_latent=4, n_hidden=16)
    model.train(max_epochs=2, check_val_every_n_epoch=1, enable_progress_bar=False)
    for mode in ("train", "validation"):
        for name in ("classification_loss", "accuracy", "f1_score", "calibration_error"):
            column = model.history[f"{mode}_{name}"]
            assert len(column) == 2
            assert column.notna().all().all()
    accuracy = model.history["train_accuracy"].to_numpy()
    assert ((accuracy >= 0) & (accuracy <= 1)).all()
