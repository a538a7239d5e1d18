"""Training history: one DataFrame per metric, indexed by epoch (scvi-tools' layout)."""

from __future__ import annotations

import pandas as pd


class SimpleLogger:
    """Collect per-epoch metric values into ``history``.

    ``history[name]`` is a one-column DataFrame whose column is ``name`` and whose index is
    named ``"epoch"``; logging the same metric twice in one epoch keeps the last value.
    """

    def __init__(self, name: str = "lightning_logs", save_dir: str | None = None) -> None:
        self.name = name
        self.save_dir = save_dir
        self._values: dict[str, dict[int, float]] = {}

    def log_metrics(self, metrics: dict[str, float], epoch: int) -> None:
        """Record ``metrics`` for ``epoch``.

        Parameters
        ----------
        metrics
            Metric name to value (numbers or 0-d tensors).
        epoch
            The epoch the values belong to.
        """
        for key, value in metrics.items():
            self._values.setdefault(key, {})[int(epoch)] = float(value)

    @property
    def history(self) -> dict[str, pd.DataFrame]:
        """The logged metrics as ``{name: DataFrame}`` in first-logged order."""
        frames = {}
        for key, values in self._values.items():
            index = pd.Index(list(values), name="epoch")
            frames[key] = pd.DataFrame({key: list(values.values())}, index=index)
        return frames
