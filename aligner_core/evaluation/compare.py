"""Baseline vs aligned sampler against an accurate reference, from the same noise.

Shared by ``eval`` (trajectory gap, Fig. 2), the verdict of ``align`` and the joint fit's teacher.
The reference is DPM-Solver++(2M) (second order, one network evaluation per step) with steps of
(nearly) equal length in lambda = log(alpha/sigma) that pass through every grid point; the
verdict and the teacher need only the end point and take the grid [t_K, t_0].
``reference_error`` estimates its own error on every run; ``benchmarks/reference_accuracy.py``
measures it against a 2000-step solve.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Iterator, Sequence

import torch

from ..models.model import bind_labels, conditioning_of
from ..progress import Progress
from ..sampling.samplers import PerSampleNoise, StepContext, dpm_solver_pp_multistep, run_sampler
from ..sampling.schedule import NoiseSchedule

REFERENCE_SOLVER = "dpm-solver++(2m)"
REFERENCE_DESCRIPTION = f"{REFERENCE_SOLVER}, steps uniform in log-SNR"
REFERENCE_EVALS_PER_STEP = 1
reference_solve = partial(dpm_solver_pp_multistep, order=2)


def refine_grid(grid: Sequence[float], reference_nfe: int) -> tuple[list[float], int]:
    """Subdivide every interval of ``grid`` into ``per`` equal parts in t (per * K >= reference_nfe),
    so that a fine trajectory passes through every point of ``grid`` (the DDIM teacher's grid)."""
    per = max(1, math.ceil(reference_nfe / (len(grid) - 1)))
    fine = [grid[0]]
    for t, s in zip(grid[:-1], grid[1:]):
        fine.extend(t + (s - t) * (k / per) for k in range(1, per + 1))
    return fine, per


def reference_grid(grid: Sequence[float], reference_nfe: int, schedule: NoiseSchedule) -> tuple[list[float], list[int]]:
    """The reference's grid through every point of ``grid``: steps of (nearly) equal length in
    lambda, at least ``reference_nfe`` of them (one network evaluation each): with h the lambda
    length of [t_K, t_0] over ``reference_nfe``, every interval of ``grid`` is cut into
    ceil(its lambda length / h) equal parts. Also the positions of ``grid``'s points in it. (A
    fixed count per interval left a long last interval of a fitted grid's union with a few long
    steps: on cifar32-v-short that reference was off by 4.3 at 108 evaluations, this one by 0.1.)"""
    lam = schedule.lambda_(torch.tensor([float(t) for t in grid], dtype=torch.float64))
    h = float(lam[-1] - lam[0]) / max(1, reference_nfe)
    fine, positions = [float(grid[0])], [0]
    for k in range(len(grid) - 1):
        parts = max(1, math.ceil(float(lam[k + 1] - lam[k]) / h - 1e-9))
        fractions = torch.arange(1, parts, dtype=torch.float64) / parts
        fine.extend(schedule.inverse_lambda(lam[k] + (lam[k + 1] - lam[k]) * fractions).tolist())
        fine.append(float(grid[k + 1]))
        positions.append(len(fine) - 1)
    return fine, positions


def reference_nfe_of(grid: Sequence[float], reference_nfe: int, schedule: NoiseSchedule) -> int:
    """The network evaluations the reference actually makes on ``grid`` (at least ``reference_nfe``)."""
    return (len(reference_grid(grid, reference_nfe, schedule)[0]) - 1) * REFERENCE_EVALS_PER_STEP


def _start(eps, seed: int, idx: range, sample_shape: Sequence[int], device) -> tuple[torch.Tensor, object]:
    """Samples ``idx`` of ``seed``: their x_T, and the model bound to their per-sample labels
    (class-conditional models)."""
    cond = conditioning_of(eps)
    labels = None if cond is None else cond.per_sample_labels(seed, idx).to(device)
    return PerSampleNoise(seed, idx, sample_shape, device)(), bind_labels(eps, labels)


def reference_error(eps, grid: Sequence[float], reference_nfe: int, sample_shape: Sequence[int],
                    reference_ends: torch.Tensor, *, seed: int, device: torch.device | str = "cpu",
                    batch_size: int = 64) -> float | None:
    """The reference's own end-point error, estimated on ``reference_ends`` (samples 0.. of
    ``seed``, delivered: ``EpsModel.delivered``) by Richardson's rule: the mean L2 to a reference with half the sub-steps from the same
    noise, divided by r^2 - 1 (r: the ratio of the step counts, about 2; the solver is of order 2;
    ``benchmarks/reference_accuracy.py`` compares this estimate with the error against a 2000-step
    solve)."""
    count = reference_ends.shape[0]
    if count == 0:
        return None
    schedule = eps.schedule
    steps = len(reference_grid(grid, reference_nfe, schedule)[0]) - 1
    half = reference_grid(grid, max(1, reference_nfe // 2), schedule)[0]
    total = 0.0
    for lo in range(0, count, batch_size):
        idx = range(lo, min(count, lo + batch_size))
        with torch.no_grad():
            x_T, labelled = _start(eps, seed, idx, sample_shape, device)
            coarse = eps.delivered(reference_solve(labelled, x_T, half, StepContext(schedule))).cpu()
        total += float((coarse - reference_ends[lo : lo + len(idx)]).flatten(1).norm(dim=1).sum())
    return total / count / ((steps / (len(half) - 1)) ** 2 - 1)


Candidate = Sequence[float] | None | tuple[Sequence[float], Sequence[float]]  # taus, None (plain), or (grid, taus)


def union_grid(grid: Sequence[float], candidates: dict[str, Candidate]) -> list[float]:
    """All points of ``grid`` and of the candidates' own grids, decreasing: the reference's coarse grid."""
    own = [c[0] for c in candidates.values() if isinstance(c, tuple)]
    return sorted({float(t) for g in (grid, *own) for t in g}, reverse=True)


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
    start: int = 0,
    ends_only: bool = False,
) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Per batch of the samples ``start .. start + num_samples - 1``: the states at every point of
    ``grid`` of the reference (see the module docstring) under the name "reference", and of the
    sampler with each of ``candidates`` (name -> taus; None = plain sampler; (grid, taus) for a
    candidate on a grid of its own, e.g. a fitted one, whose reference states are under
    "reference:<name>"), all from the same x_T (and, for a class-conditional model, the same
    per-sample labels); stochastic samplers share their step noise between candidates. The
    reference passes through the points of every grid; with ``ends_only`` it solves [t_K, t_0]
    in one piece and "reference" holds only its start and end (what the verdict needs)."""
    own = {name: (list(c[0]), c[1]) for name, c in candidates.items() if isinstance(c, tuple)}
    union = [grid[0], grid[-1]] if ends_only else union_grid(grid, candidates)
    schedule = eps.schedule
    fine, positions = reference_grid(union, reference_nfe, schedule)
    at = {t: k for k, t in enumerate(union)}
    batches = math.ceil(num_samples / batch_size)
    for b in range(batches):
        idx = range(start + b * batch_size, start + min(num_samples, (b + 1) * batch_size))
        with torch.no_grad():
            x_T, labelled = _start(eps, seed, idx, sample_shape, device)
            reference = reference_solve(labelled, x_T, fine, StepContext(schedule, 0.0), keep=positions)
            if ends_only:
                out = {"reference": reference}
            else:
                out = {"reference": [reference[at[float(t)]] for t in grid]}
                out.update({f"reference:{name}": [reference[at[float(t)]] for t in g] for name, (g, _) in own.items()})
            for name, chosen in candidates.items():
                noise = PerSampleNoise(seed + 1, idx, sample_shape, device)
                path, taus = own[name] if name in own else (grid, chosen)
                out[name] = run_sampler(sampler, labelled, x_T, path, taus, StepContext(schedule, eta, noise, gamma), record=True)
        if progress:
            progress(b + 1, batches, f"batch {b + 1}/{batches}")
        yield out
