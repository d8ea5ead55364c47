"""Baseline vs aligned sampler against a high-NFE reference, from the same noise.

Shared by ``eval`` (trajectory gap, Fig. 2) and the self-validation of ``align``.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch

from .model import bind_labels, conditioning_of
from .progress import Progress
from .samplers import PerSampleNoise, StepContext, run_sampler


def refine_grid(grid: Sequence[float], reference_nfe: int) -> tuple[list[float], int]:
    """Subdivide every interval of ``grid`` into ``per`` equal parts (per * K >= reference_nfe),
    so that the reference trajectory passes through every point of ``grid``."""
    per = max(1, math.ceil(reference_nfe / (len(grid) - 1)))
    fine = [grid[0]]
    for t, s in zip(grid[:-1], grid[1:]):
        fine.extend(t + (s - t) * (k / per) for k in range(1, per + 1))
    return fine, per


def _reference_states(eps, x: torch.Tensor, fine: Sequence[float], per: int, ctx: StepContext) -> list[torch.Tensor]:
    """The reference's states at every ``per``-th point of ``fine`` (the coarse grid), keeping only
    those in memory rather than all of the fine trajectory."""
    states = [x.to(torch.float64)]
    for i in range(0, len(fine) - 1, per):
        states.append(run_sampler("ddim", eps, states[-1], fine[i : i + per + 1], None, ctx))
    return states


Candidate = Sequence[float] | None | tuple[Sequence[float], Sequence[float]]  # taus, None (plain), or (grid, taus)


def paired_trajectories(
    eps,
    grid: Sequence[float],
    sampler: str,
    eta: float,
    candidates: dict[str, Candidate],
    sample_shape: Sequence[int],
    *,
    num_samples: int,
    reference_nfe: int,
    seed: int,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    gamma=None,
    progress: Progress | None = None,
) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Per batch: the states at every point of ``grid`` of the reference (DDIM, eta=0, refined
    grid) under the name "reference", and of the sampler with each of ``candidates`` (name ->
    taus; None = plain sampler; (grid, taus) for a candidate on a grid of its own, e.g. fitted by
    ``--fit-grid``, whose reference states are under "reference:<name>"), all from the same x_T
    (and, for a class-conditional model, the same per-sample labels); stochastic samplers share
    their step noise between candidates. The reference passes through the points of every grid."""
    own = {name: (list(c[0]), c[1]) for name, c in candidates.items() if isinstance(c, tuple)}
    union = sorted({float(t) for g in (grid, *(g for g, _ in own.values())) for t in g}, reverse=True)
    fine, per = refine_grid(union, reference_nfe)
    at = {t: k for k, t in enumerate(union)}
    schedule = eps.schedule
    cond = conditioning_of(eps)
    batches = math.ceil(num_samples / batch_size)
    for b in range(batches):
        idx = range(b * batch_size, min(num_samples, (b + 1) * batch_size))
        with torch.no_grad():
            x_T = PerSampleNoise(seed, idx, sample_shape, device)()
            labelled = bind_labels(eps, None if cond is None else cond.per_sample_labels(seed, idx).to(device))
            reference = _reference_states(labelled, x_T, fine, per, StepContext(schedule, 0.0))
            out = {"reference": [reference[at[float(t)]] for t in grid]}
            out.update({f"reference:{name}": [reference[at[float(t)]] for t in g] for name, (g, _) in own.items()})
            for name, chosen in candidates.items():
                noise = PerSampleNoise(seed + 1, idx, sample_shape, device)
                path, taus = own[name] if name in own else (grid, chosen)
                out[name] = run_sampler(sampler, labelled, x_T, path, taus, StepContext(schedule, eta, noise, gamma), record=True)
        if progress:
            progress(b + 1, batches, f"batch {b + 1}/{batches}")
        yield out
