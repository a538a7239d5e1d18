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
