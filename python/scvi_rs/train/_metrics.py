"""Epoch metrics accumulated on the training device, read back once per epoch."""

from __future__ import annotations

import torch

from ._distributed import sum_over_processes


class EpochAccumulator:
    """Weighted running sums of logged values, kept as device tensors.

    Nothing here calls ``.item()``: values stay on the device until :meth:`compute`,
    so a training step never waits for the host.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor | float] = {}
        self._weights: dict[str, torch.Tensor | float] = {}

    def add(
        self, name: str, numerator: torch.Tensor | float, denominator: torch.Tensor | float
    ) -> None:
        """Add to ``name``'s numerator and denominator; its mean is their ratio.

        Parameters
        ----------
        name
            Metric name.
        numerator
            A 0-d tensor or a number added to the running numerator.
        denominator
            Added to the running denominator (a count of cells or of minibatches).
        """
        if isinstance(numerator, torch.Tensor):
            numerator = numerator.detach().to(torch.float64).reshape(())
        if isinstance(denominator, torch.Tensor):
            denominator = denominator.detach().to(torch.float64).reshape(())
        if name in self._sums:
            self._sums[name] = self._sums[name] + numerator
            self._weights[name] = self._weights[name] + denominator
        else:
            self._sums[name] = numerator
            self._weights[name] = denominator

    def update(self, name: str, value: torch.Tensor | float, weight: torch.Tensor | float) -> None:
        """Add ``value`` with weight ``weight`` (a weighted mean over the epoch).

        Parameters
        ----------
        name
            Metric name.
        value
            A 0-d tensor or a number.
        weight
            The weight of this value (minibatch size, or 1 for per-batch means).
        """
        if isinstance(value, torch.Tensor):
            value = value.detach().to(torch.float64).reshape(())
        self.add(name, value * weight, weight)

    def compute(self) -> dict[str, float]:
        """Return the weighted means as Python floats (one host transfer for all metrics).

        Returns
        -------
        dict
            Metric name to weighted mean.
        """
        if not self._sums:
            return {}
        names = list(self._sums)
        device = next(
            (v.device for v in self._sums.values() if isinstance(v, torch.Tensor)),
            torch.device("cpu"),
        )
        sums = torch.stack([torch.as_tensor(self._sums[n], device=device) for n in names])
        weights = torch.stack([torch.as_tensor(self._weights[n], device=device) for n in names])
        sums, weights = sums.to(torch.float64), weights.to(torch.float64)
        # one all-reduce for every metric when several processes train together
        totals = sum_over_processes(torch.stack([sums, weights]))
        values = (totals[0] / totals[1]).cpu().tolist()
        return dict(zip(names, values, strict=True))

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._sums.clear()
        self._weights.clear()

    def __contains__(self, name: str) -> bool:
        return name in self._sums


class StepValues:
    """Values logged at single steps, kept (on the device) until the epoch's metrics are read.

    Each entry is ``(name, index_name, index, value)``: the value of ``name`` at ``index`` of an
    ``"epoch"`` or ``"step"`` axis. :meth:`drain` converts every tensor value in one host
    transfer.
    """

    def __init__(self) -> None:
        self._entries: list[tuple[str, str, int, torch.Tensor | float]] = []

    def add(self, name: str, index_name: str, index: int, value: torch.Tensor | float) -> None:
        """Keep ``value`` of ``name`` at ``index`` (of the ``index_name`` axis).

        Parameters
        ----------
        name
            Metric name.
        index_name
            ``"epoch"`` or ``"step"``.
        index
            Position on that axis.
        value
            A 0-d tensor or a number.
        """
        if isinstance(value, torch.Tensor):
            value = value.detach().reshape(())
        self._entries.append((name, index_name, int(index), value))

    def drain(self) -> list[tuple[str, str, int, float]]:
        """Return the kept entries with float values, and forget them.

        Returns
        -------
        list
            ``(name, index_name, index, value)`` in the order they were added.
        """
        entries, self._entries = self._entries, []
        tensors = [v for *_, v in entries if isinstance(v, torch.Tensor)]
        floats = iter(_tensors_to_floats(tensors))
        return [
            (name, index_name, index, next(floats) if isinstance(v, torch.Tensor) else float(v))
            for name, index_name, index, v in entries
        ]

    def __len__(self) -> int:
        return len(self._entries)


def _tensors_to_floats(tensors: list[torch.Tensor]) -> list[float]:
    if not tensors:
        return []
    device = tensors[0].device
    stacked = torch.stack([t.to(device=device, dtype=torch.float64) for t in tensors])
    return stacked.cpu().tolist()
