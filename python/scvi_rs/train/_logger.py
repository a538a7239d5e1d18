"""Training history: one DataFrame per metric (scvi-tools' ``SimpleLogger`` layout)."""

from __future__ import annotations

import os
import pickle
from typing import Any

import pandas as pd


def _as_float(value: Any) -> float:
    return float(value.item()) if hasattr(value, "item") else float(value)


class SimpleLogger:
    """Collect logged metric values into ``history``.

    Values are logged with Lightning's logger call, ``log_metrics(metrics, step)``: when
    ``metrics`` holds an ``"epoch"`` (or ``"step"``) entry, the values are indexed by it and
    the index is named after it; otherwise they are indexed by ``step`` (index ``"step"``).
    ``history[name]`` is a one-column DataFrame whose column is ``name``; a value logged twice
    at one index keeps the last.

    Parameters
    ----------
    name
        Name of the run (a sub-directory of ``save_dir``).
    version
        Version of the run (``1`` when None).
    save_dir
        Directory of the run. When given, :meth:`finalize` writes ``history.pkl`` into
        ``<save_dir>/<name>/version_<version>``.
    save_log_on_disk
        Write ``history.pkl`` even when ``save_dir`` is None (into the working directory).
    """

    def __init__(
        self,
        name: str = "lightning_logs",
        version: int | str | None = None,
        save_dir: str | None = None,
        save_log_on_disk: bool | None = False,
    ) -> None:
        self._name = name
        self._version = version
        self._save_dir = save_dir or os.getcwd()
        self.history_path: str | None = None
        if save_dir or save_log_on_disk:
            run_dir = os.path.join(self._save_dir, name, f"version_{self.version}")
            self.history_path = os.path.join(run_dir, "history.pkl")
        # name -> (index name, {index: value})
        self._values: dict[str, tuple[str, dict[int, float]]] = {}

    @property
    def name(self) -> str:
        """Name of the run."""
        return self._name

    @property
    def version(self) -> int | str:
        """Version of the run."""
        if self._version is None:
            self._version = 1
        return self._version

    @property
    def save_dir(self) -> str:
        """Directory of the run."""
        return self._save_dir

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Record ``metrics``.

        Parameters
        ----------
        metrics
            Metric name to value (numbers or 0-d tensors); an ``"epoch"`` or ``"step"`` entry
            is the index of the other values.
        step
            Index of the values when ``metrics`` names neither an epoch nor a step.
        """
        metrics = dict(metrics)
        if "step" in metrics:
            index_name, index = "step", metrics.pop("step")
        elif "epoch" in metrics:
            index_name, index = "epoch", metrics.pop("epoch")
        else:
            index_name, index = "step", step
        if index is None:
            raise ValueError("log_metrics needs an 'epoch' or 'step' entry, or `step`.")
        index = int(index)
        for key, value in metrics.items():
            self._values.setdefault(key, (index_name, {}))[1][index] = _as_float(value)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Accepted for Lightning compatibility; hyper-parameters are not recorded."""

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Hook run after a checkpoint is written; nothing to do here."""

    def save(self) -> None:
        """Nothing to flush: values live in memory until :meth:`finalize`."""

    def finalize(self, status: str) -> None:
        """Write ``history.pkl`` when the logger was given a directory.

        Parameters
        ----------
        status
            ``"success"``, ``"failed"`` or ``"interrupted"`` (not recorded).
        """
        if self.history_path is None:
            return
        os.makedirs(os.path.dirname(self.history_path), exist_ok=True)
        with open(self.history_path, "wb") as f:
            pickle.dump(self.history, f)

    @property
    def history(self) -> dict[str, pd.DataFrame]:
        """The logged metrics as ``{name: DataFrame}`` in first-logged order."""
        frames = {}
        for key, (index_name, values) in self._values.items():
            index = pd.Index(list(values), name=index_name)
            frames[key] = pd.DataFrame({key: list(values.values())}, index=index)
        return frames
