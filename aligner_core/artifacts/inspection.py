"""Reading an artifact back: the per-step table of ``inspect`` (its checks: ``artifact_check``)."""

from __future__ import annotations

from .artifact import TauArtifact


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
