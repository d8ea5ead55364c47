"""PNG plots (matplotlib, optional): an artifact's taus, the trajectory gap (Fig. 2), the ablation (Fig. 6)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from ..atomic import atomic_file, cannot_write
from ..errors import UsageError

PLOT_FIX = "choose a writable plot path"


@contextmanager
def _figure(path: Path, ncols: int = 1, title: str = ""):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("plots need matplotlib: pip install 'dpm-align[plot]'") from None
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.6), squeeze=False)
    try:
        yield axes[0]
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        with atomic_file(path, ".tmp.png", PLOT_FIX, make_parents=False) as tmp:  # never a half-written PNG
            fig.savefig(tmp, dpi=100, format="png")
    except OSError as exc:
        raise cannot_write(path, exc, PLOT_FIX) from None
    finally:
        plt.close(fig)


def plot_artifact(artifact, path: Path) -> None:
    """tau minus the plain sampler's time, per network evaluation, and the loss before/after fitting."""
    grid = artifact.eval_times
    with _figure(path, 2, artifact.key) as (ax1, ax2):
        ax1.axhline(0.0, color="grey", lw=0.8)
        ax1.plot(grid, [tau - t for tau, t in zip(artifact.taus, grid)], "o-")
        ax1.set(xlabel="t (evaluation time)", ylabel="tau - t", title="aligned minus plain time")
        ax1.invert_xaxis()
        tuned = [(t, b, a) for t, b, a in zip(grid, artifact.fit.loss_before, artifact.fit.loss_after) if b is not None]
        if tuned:
            ts, before, after = zip(*tuned)
            ax2.semilogy(ts, before, "o-", label="t_i (before)")
            ax2.semilogy(ts, after, "o-", label="tau_i (after)")
            ax2.legend()
        ax2.set(xlabel="t (evaluation time)", ylabel=f"{artifact.fit.objective} loss", title="loss per evaluation")
        ax2.invert_xaxis()


def plot_gap(report, path: Path) -> None:
    """Fig. 2: mean L2 to the reference trajectory at each grid point, baseline vs aligned."""
    with _figure(path, 1, report.key) as (ax,):
        ax.plot(report.timesteps, report.gap_baseline, "o-", color="tab:red", label="baseline")
        ax.plot(report.timesteps_aligned or report.timesteps, report.gap_aligned, "o-", color="tab:blue", label="aligned")
        ax.set(xlabel="t", ylabel=f"mean L2 to {report.reference_nfe}-step reference", title="trajectory gap")
        ax.invert_xaxis()
        ax.legend()


def plot_ablation(report, path: Path) -> None:
    """Fig. 6: end-point L2 and pixel FD with the first k taus aligned (from t_K down)."""
    ks = [row.aligned_steps for row in report.ablation]
    with _figure(path, 2, report.key) as (ax1, ax2):
        ax1.plot(ks, [row.end_l2 for row in report.ablation], "o-")
        ax1.set(xlabel="number of aligned steps (from t_K)", ylabel="end-point L2", title="ablation: L2")
        ax2.plot(ks, [row.frechet_pixel for row in report.ablation], "o-")
        ax2.set(xlabel="number of aligned steps (from t_K)", ylabel="pixel Fréchet distance", title="ablation: FD")
