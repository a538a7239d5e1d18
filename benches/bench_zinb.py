"""ZINB log-likelihood on the CPU: forward + backward, fused backward beside autograd's.

    ~/.venvs/scvi-rs/bin/python benches/bench_zinb.py [--repeats 50]

The inputs are shaped as in a VAE training step: ``mu`` and ``zi_logits`` per cell and
gene, ``theta`` a per-gene vector broadcast over the cells (as ``ZeroInflatedNegativeBinomial``
receives it), counts with the given share of non-zero entries. "autograd" is
``log_zinb_positive``'s plain form (the path accelerators and ``torch.compile`` take),
"fused" the hand-written backward that eager CPU training uses.
"""

from __future__ import annotations

import argparse
import time

import torch

from scvi_rs.distributions import _negative_binomial


def _autograd_form(x, mu, theta, pi):
    applies = _negative_binomial.fused_zinb_applies
    _negative_binomial.fused_zinb_applies = _never
    try:
        return _fused_form(x, mu, theta, pi)
    finally:
        _negative_binomial.fused_zinb_applies = applies


def _never(*args) -> bool:
    return False


def _fused_form(x, mu, theta, pi):
    # theta expanded over the cells, as broadcast_all does in the distribution.
    theta = theta.view(1, -1).expand_as(mu)
    return _negative_binomial.log_zinb_positive(x, mu, theta, pi)


def make_inputs(n_cells: int, n_genes: int, density: float, seed: int = 0):
    """Counts of about ``density`` non-zero entries and parameters that need gradients."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.rand(n_cells, n_genes, generator=gen).mul_(4).add_(0.05)
    keep = torch.rand(n_cells, n_genes, generator=gen) < density
    x = (torch.poisson(mu, generator=gen) + 1).mul_(keep)
    theta = torch.rand(n_genes, generator=gen).mul_(5).add_(0.1)
    pi = torch.randn(n_cells, n_genes, generator=gen)
    return x, mu.requires_grad_(), theta.requires_grad_(), pi.requires_grad_()


def time_step(form, inputs, repeats: int) -> float:
    """Median seconds of one forward + backward of ``-form(...).sum()``."""
    x, mu, theta, pi = inputs
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        loss = -form(x, mu, theta, pi).sum()
        loss.backward()
        if i >= 3:
            times.append(time.perf_counter() - start)
        mu.grad = theta.grad = pi.grad = None
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| cells x genes | non-zero | autograd (ms) | fused (ms) | speed-up |")
    print("|---|---|---|---|---|")
    for n_cells in (128, 1024):
        for density in (0.11, 0.45):
            inputs = make_inputs(n_cells, 2000, density)
            plain = time_step(_autograd_form, inputs, args.repeats)
            fused = time_step(_fused_form, inputs, args.repeats)
            nonzero = float((inputs[0] != 0).float().mean())
            print(
                f"| {n_cells} x 2000 | {nonzero:.0%} | {plain * 1e3:.2f} | {fused * 1e3:.2f} "
                f"| {plain / fused:.2f}x |"
            )


if __name__ == "__main__":
    main()
