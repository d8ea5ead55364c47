"""How often is the verdict wrong? Its error rates on a model whose truth can be computed.

Around the plain times of a DDIM grid, tau sets are perturbed in random directions at several
scales (most are worse, some better). Each set's truth comes from many samples against a fine
reference (the end-point ratio and the kernel distance's relative change); the verdict
(``validation.validate``) then judges it several times on fresh held-out seeds. A trial counts as a
*false accept* when the verdict says better though the end-point ratio is truly >= 1 (what the
rule bounds; the truth's own interval, from its samples, often contains 1 for these near-ties, so
the accepts of sets it *shows* worse are counted apart), a *kernel miss* when it says better
though the kernel distance is truly higher (the kernel is a guard), a *margin miss* when that is
higher by more than the rule's margin (``NON_INFERIORITY``, what the guard bounds), a *false
reject* when it says worse though both truths are better.
Used by ``tests/test_verdict.py`` and ``benchmarks/verdict_calibration.py`` on the exact mixture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .compare import reference_grid, reference_solve
from ..sampling.samplers import PerSampleNoise, StepContext, nominal_eval_times, run_sampler
from .validation import NON_INFERIORITY, ValidationSettings, validate
from .verdict import kernel_change, mean_ratio_change


def perturbed_taus(grid: Sequence[float], schedule, directions: int, scales: Sequence[float], seed: int = 11) -> list:
    """Tau sets t + scale * (step width) * d for ``directions`` random unit-variance d per scale."""
    nominal = torch.tensor(nominal_eval_times("ddim", grid, schedule), dtype=torch.float64)
    widths = torch.tensor([t - s for t, s in zip(grid[:-1], grid[1:])], dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    family = []
    for _ in range(directions):
        d = torch.randn(len(nominal), generator=g, dtype=torch.float64)
        family += [(nominal + scale * widths * d).clamp(min=0).tolist() for scale in scales]
    return family


class Truth:
    """End-point ratio and kernel change of tau sets on ``grid`` from ``samples`` noises against a
    reference (``compare``'s solver) with ``reference_nfe`` evaluations (computed once); the kernel
    change from the first ``kernel_samples`` of them (its cost grows with their square)."""

    def __init__(self, eps, grid: Sequence[float], sample_shape, samples: int = 2048, reference_nfe: int = 800,
                 kernel_samples: int = 2048):
        self.eps, self.grid, self.kernel_samples = eps, list(grid), kernel_samples
        self.x = PerSampleNoise(424242, range(samples), sample_shape)()
        self.ctx = StepContext(eps.schedule)
        with torch.no_grad():
            self.ref = reference_solve(eps, self.x, reference_grid([grid[0], grid[-1]], reference_nfe, eps.schedule)[0],
                                       self.ctx)
            self.plain = run_sampler("ddim", eps, self.x, self.grid, None, self.ctx)

    def __call__(self, taus: Sequence[float]) -> tuple[float, float, float]:
        """The end-point ratio, the lower end of its 95% interval (paired, over the samples) and the
        kernel distance's relative change."""
        with torch.no_grad():
            aligned = run_sampler("ddim", self.eps, self.x, self.grid, taus, self.ctx)
        err = lambda y: (y - self.ref).flatten(1).norm(dim=1)  # noqa: E731
        ratio = mean_ratio_change(err(self.plain), err(aligned), 0.95)
        k = self.kernel_samples
        return 1 + ratio.change, 1 + ratio.low, kernel_change(self.plain[:k], aligned[:k], self.ref[:k], 0.95).change


@dataclass
class Rates:
    null_trials: int = 0  # trials of tau sets whose end-point error is truly not lower
    false_accepts: int = 0
    worse_trials: int = 0  # ... of those, sets whose truth is shown higher (its own interval above 1)
    worse_accepts: int = 0
    kernel_misses: int = 0  # accepted though the kernel distance is truly higher
    kernel_worse_trials: int = 0
    margin_misses: int = 0  # accepted though the kernel distance is truly higher by more than NON_INFERIORITY
    margin_trials: int = 0
    better_trials: int = 0  # trials of tau sets truly better on both metrics
    false_rejects: int = 0  # ... called worse
    clear_trials: int = 0  # trials of tau sets clearly better (end ratio <= 0.95, kernel not higher)
    clear_accepts: int = 0
    rows: list = field(default_factory=list)  # (end ratio, its interval's lower end, kernel change, [verdicts])


def verdict_rates(eps, grid: Sequence[float], sample_shape, family: Sequence[Sequence[float]], truth: Truth,
                  settings: ValidationSettings, repeats: int) -> Rates:
    rates = Rates()
    for k, taus in enumerate(family):
        ratio, ratio_low, kernel = truth(taus)
        verdicts = [validate(eps, grid, "ddim", 0.0, taus, sample_shape, settings, seed=1000 * k + rep).verdict
                    for rep in range(repeats)]
        rates.rows.append((ratio, ratio_low, kernel, verdicts))
        if ratio >= 1:
            rates.null_trials += repeats
            rates.false_accepts += verdicts.count("better")
        if ratio_low > 1:
            rates.worse_trials += repeats
            rates.worse_accepts += verdicts.count("better")
        if kernel > 0:
            rates.kernel_worse_trials += repeats
            rates.kernel_misses += verdicts.count("better")
        if kernel > NON_INFERIORITY:
            rates.margin_trials += repeats
            rates.margin_misses += verdicts.count("better")
        if ratio < 1 and kernel <= 0:
            rates.better_trials += repeats
            rates.false_rejects += verdicts.count("worse")
        if ratio <= 0.95 and kernel <= 0:
            rates.clear_trials += repeats
            rates.clear_accepts += verdicts.count("better")
    return rates
