"""Reading an artifact back: the per-step table and self-consistency checks (``inspect --check``)."""

from __future__ import annotations

import math

import torch

from .artifact import TauArtifact, check_fitted_grid
from .errors import DpmAlignError
from .schedule import NoiseSchedule
from .samplers import nominal_eval_times
from .trajectory import make_grid


def inspect_rows(artifact: TauArtifact) -> list[tuple[str, ...]]:
    """One row per network evaluation: step, evaluation, t_i, t_{i-1}, the plain sampler's time,
    tau, tau minus that time, loss before/after."""
    grid = artifact.trajectory.timesteps
    per = artifact.trajectory.nfe // artifact.trajectory.steps
    rows = []
    for e, (tau, nominal) in enumerate(zip(artifact.taus, artifact.eval_times)):
        j = e // per
        before, after = artifact.fit.loss_before[e], artifact.fit.loss_after[e]
        rows.append((
            str(j + 1), str(e % per + 1), f"{grid[j]:.2f}", f"{grid[j + 1]:.2f}", f"{nominal:.2f}", f"{tau:.2f}",
            f"{tau - nominal:+.2f}", "-" if before is None else f"{before:.3e}", "-" if after is None else f"{after:.3e}",
        ))
    return rows


def check_artifact(artifact: TauArtifact, atol: float = 1e-6) -> list[str]:
    """Recompute the grid, alphas, sigmas and evaluation times from the stored schedule and
    sampler; taus must be finite."""
    schedule = NoiseSchedule(artifact.model.schedule)
    traj = artifact.trajectory
    grid = make_grid(traj.kind, traj.steps, schedule, traj.rho)
    if traj.fitted:  # --fit-grid: the kind's ends and a strictly decreasing grid in between
        check_fitted_grid(grid, traj.timesteps, "artifact check failed")
        grid = traj.timesteps
    g = torch.tensor(grid, dtype=torch.float64)
    problems = []
    for name, stored, expected in (
        ("timesteps", traj.timesteps, grid),
        ("alphas", traj.alphas, schedule.alpha(g).tolist()),
        ("sigmas", traj.sigmas, schedule.sigma(g).tolist()),
        ("eval_times", artifact.eval_times, nominal_eval_times(artifact.sampler.name, grid, schedule)),
    ):
        worst = max(abs(a - b) for a, b in zip(stored, expected))
        if worst > atol * max(1.0, max(abs(v) for v in expected)):
            problems.append(f"{name} differ from the {traj.label} grid of the stored schedule by {worst:.3g}")
    if not all(math.isfinite(t) for t in artifact.taus):
        problems.append("taus contain NaN or infinity")
    if problems:
        raise DpmAlignError(f"artifact check failed: {'; '.join(problems)}; re-create it with `dpm-align align`")
    return [
        f"schema v{artifact.schema_version}, key matches its contents",
        f"{traj.label} grid, alphas, sigmas and evaluation times match the stored schedule and sampler",
        f"{len(artifact.taus)} finite taus",
    ]
