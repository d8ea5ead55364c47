"""Self-validation of fitted taus on held-out seeds: are they better than the plain sampler?

Baseline and aligned samplers start from the same held-out noise; both are compared with a
high-NFE deterministic reference (DDIM, every interval subdivided) from that noise:
- ``end_l2``: mean L2 distance of the end points to the reference end points;
- ``frechet_pixel``: Fréchet distance in pixel space between the end points and the reference
  samples (a distribution distance: the two can disagree, see issue notes in docs/).
The taus count as better when no metric gets worse and at least one improves. For stochastic
samplers (eta > 0, analytic) the same-noise distance to an ODE reference is not meaningful; only the
Fréchet distance is used to decide, the L2 is still recorded.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from pydantic import BaseModel, ConfigDict

from .compare import Candidate, paired_trajectories, refine_grid
from .metrics import frechet_distance, mean_l2
from .samplers import is_stochastic

HELD_OUT_SEED_OFFSET = 1_000_000  # validation seeds never overlap the fitting seeds


class Validation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metrics: list[str]
    decided_by: list[str]
    baseline: dict[str, float]
    aligned: dict[str, float]
    num_samples: int
    reference_nfe: int
    seed: int
    better: bool

    def changes(self) -> str:
        """``metric baseline -> aligned`` for every metric, for messages."""
        return ", ".join(f"{m} {self.baseline[m]:.4g} -> {self.aligned[m]:.4g}" for m in self.metrics)


def score_candidates(
    eps,
    grid: Sequence[float],
    sampler: str,
    eta: float,
    candidates: dict[str, Candidate],
    sample_shape: Sequence[int],
    *,
    num_samples: int = 32,
    reference_nfe: int = 100,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    gamma=None,
) -> tuple[dict[str, dict[str, float]], dict[str, torch.Tensor]]:
    """``end_l2`` and ``frechet_pixel`` of every candidate (name -> taus, None = plain sampler)
    against one reference from the same noise (seed as given), and the end points themselves
    (with the reference's under "reference")."""
    ends: dict[str, list[torch.Tensor]] = {"reference": [], **{name: [] for name in candidates}}
    for states in paired_trajectories(eps, grid, sampler, eta, candidates, sample_shape, num_samples=num_samples,
                                      reference_nfe=reference_nfe, seed=seed, device=device, batch_size=batch_size,
                                      gamma=gamma):
        for name in ends:
            ends[name].append(states[name][-1].cpu())
    points = {name: torch.cat(chunks) for name, chunks in ends.items()}
    ref = points["reference"]
    scores = {name: {"end_l2": mean_l2(points[name], ref), "frechet_pixel": frechet_distance(points[name], ref)}
              for name in candidates}
    return scores, points


def validate(
    eps,
    grid: Sequence[float],
    sampler: str,
    eta: float,
    taus: Sequence[float],
    sample_shape: Sequence[int],
    *,
    num_samples: int = 32,
    reference_nfe: int = 100,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    gamma=None,
    aligned_grid: Sequence[float] | None = None,
) -> Validation:
    """Baseline (the plain sampler on ``grid``) vs the taus (on ``aligned_grid`` when the grid was
    fitted too) on held-out seeds."""
    seed = seed + HELD_OUT_SEED_OFFSET
    aligned = taus if aligned_grid is None else (aligned_grid, taus)
    scores, _ = score_candidates(eps, grid, sampler, eta, {"baseline": None, "aligned": aligned}, sample_shape,
                                 num_samples=num_samples, reference_nfe=reference_nfe, batch_size=batch_size,
                                 seed=seed, device=device, gamma=gamma)
    return judge(scores["baseline"], scores["aligned"], sampler, eta, num_samples=num_samples, seed=seed,
                 reference_nfe=refine_grid(grid, reference_nfe)[1] * (len(grid) - 1))


def judge(baseline: dict[str, float], aligned: dict[str, float], sampler: str, eta: float, *, num_samples: int,
          seed: int, reference_nfe: int) -> Validation:
    """Better = no deciding metric worse and at least one better (only FD decides for stochastic samplers)."""
    decided_by = ["frechet_pixel"] if is_stochastic(sampler, eta) else ["end_l2", "frechet_pixel"]
    not_worse = all(aligned[m] <= baseline[m] for m in decided_by)
    some_better = any(aligned[m] < baseline[m] for m in decided_by)
    finite = all(math.isfinite(v) for s in (baseline, aligned) for v in s.values())
    return Validation(
        metrics=["end_l2", "frechet_pixel"], decided_by=decided_by, baseline=baseline, aligned=aligned,
        num_samples=num_samples, reference_nfe=reference_nfe, seed=seed, better=finite and not_worse and some_better,
    )
