"""Reading an artifact back: the per-step table and self-consistency checks (``inspect --check``)."""

from __future__ import annotations

import math

import torch

from .artifact import TauArtifact
from .errors import DpmAlignError
from .schedule import NoiseSchedule
from .trajectory import make_grid


def inspect_rows(artifact: TauArtifact) -> list[tuple[str, ...]]:
    """One row per step: index, t_i, t_{i-1}, tau_i, tau_i - t_i, loss before/after."""
    grid = artifact.trajectory.timesteps
    rows = []
    for j, tau in enumerate(artifact.taus):
        before, after = artifact.fit.loss_before[j], artifact.fit.loss_after[j]
        rows.append((
            str(j + 1), f"{grid[j]:.2f}", f"{grid[j + 1]:.2f}", f"{tau:.2f}", f"{tau - grid[j]:+.2f}",
            "-" if before is None else f"{before:.3e}", "-" if after is None else f"{after:.3e}",
        ))
    return rows


def check_artifact(artifact: TauArtifact, atol: float = 1e-6) -> list[str]:
    """Recompute the grid, alphas and sigmas from the stored schedule; taus must be finite."""
    schedule = NoiseSchedule(artifact.model.schedule)
    traj = artifact.trajectory
    grid = make_grid(traj.kind, traj.nfe, schedule)
    g = torch.tensor(grid, dtype=torch.float64)
    problems = []
    for name, stored, expected in (
        ("timesteps", traj.timesteps, grid),
        ("alphas", traj.alphas, schedule.alpha(g).tolist()),
        ("sigmas", traj.sigmas, schedule.sigma(g).tolist()),
    ):
        worst = max(abs(a - b) for a, b in zip(stored, expected))
        if worst > atol * max(1.0, max(abs(v) for v in expected)):
            problems.append(f"{name} differ from the {traj.kind} grid of the stored schedule by {worst:.3g}")
    if not all(math.isfinite(t) for t in artifact.taus):
        problems.append("taus contain NaN or infinity")
    if problems:
        raise DpmAlignError(f"artifact check failed: {'; '.join(problems)}; re-create it with `dpm-align align`")
    return [
        f"schema v{artifact.schema_version}, key matches its contents",
        f"{traj.kind} grid, alphas and sigmas match the stored schedule",
        f"{len(artifact.taus)} finite taus",
    ]

