"""Reading an artifact back: the per-step table and self-consistency checks (``inspect --check``)."""

from __future__ import annotations

import math

import torch

from .artifact import TauArtifact
from .errors import DpmAlignError, UsageError
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


def plot_artifact(artifact: TauArtifact, path) -> None:
    """PNG with tau_i - t_i per step and the per-step loss before/after fitting (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'dpm-align[plot]'") from None
    grid = artifact.trajectory.timesteps[:-1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.axhline(0.0, color="grey", lw=0.8)
    ax1.plot(grid, [tau - t for tau, t in zip(artifact.taus, grid)], "o-")
    ax1.set(xlabel="t_i", ylabel="tau_i - t_i", title="aligned minus grid time")
    ax1.invert_xaxis()
    tuned = [(t, b, a) for t, b, a in zip(grid, artifact.fit.loss_before, artifact.fit.loss_after) if b is not None]
    if tuned:
        ts, before, after = zip(*tuned)
        ax2.semilogy(ts, before, "o-", label="t_i (before)")
        ax2.semilogy(ts, after, "o-", label="tau_i (after)")
        ax2.legend()
    ax2.set(xlabel="t_i", ylabel=f"{artifact.fit.objective} loss", title="per-step loss")
    ax2.invert_xaxis()
    fig.suptitle(artifact.key, fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise UsageError(f"cannot write {path} ({exc.strerror or exc}); choose a writable --plot path") from None
    finally:
        plt.close(fig)
