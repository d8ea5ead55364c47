"""Gamma_t = E||eps_theta(x_t, t)||^2 / d for the analytic samplers (Bao et al., 2022).

Estimated by Monte Carlo at the grid's step times on x_t = alpha_t x_0 + sigma_t eps, with x_0
from data when given, else from the model's own samples (50-step DDIM; class-conditional
models: random labels, the same for generation and estimation, guided eps if guided). Stored in the artifact
(``analytic``), so sampling with an aligned artifact needs no re-estimation.
"""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import BaseModel, ConfigDict

from ..errors import UsageError
from ..models.model import bind_labels, conditioning_of
from .samplers import StepContext, run_sampler
from .trajectory import make_grid


class GammaTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    times: list[float]
    gammas: list[float]
    source: str  # "data" or "generated"
    num_samples: int

    def __call__(self, t: float) -> float:
        """Gamma at the table time nearest to t (the table holds every step time of the grid)."""
        j = min(range(len(self.times)), key=lambda i: abs(self.times[i] - t))
        return self.gammas[j]


def _batch_eps(eps, labels: torch.Tensor | None, start: int, size: int):
    return bind_labels(eps, None if labels is None else labels[start : start + size])


def estimate_gammas(
    eps,
    times: Sequence[float],
    sample_shape: Sequence[int],
    *,
    data: torch.Tensor | None = None,
    num_samples: int = 128,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> GammaTable:
    gen = torch.Generator().manual_seed(int(seed) + 7_000_000)
    schedule = eps.schedule
    shape = tuple(sample_shape)
    cond = conditioning_of(eps)
    if cond is not None and data is not None:
        raise UsageError("Gamma_t of a class-conditional model is estimated on its own samples (--data has no labels); "
                         "leave out --data")
    labels = None if cond is None else cond.random_labels(num_samples, gen).to(device)
    with torch.no_grad():
        if data is not None:
            idx = torch.randint(0, data.shape[0], (num_samples,), generator=gen)
            x0 = data[idx].to(device=device, dtype=torch.float64)
        else:
            grid = make_grid("uniform", 50, schedule)
            x0 = torch.cat([run_sampler("ddim", _batch_eps(eps, labels, i, batch_size),
                                        torch.randn((min(batch_size, num_samples - i), *shape), generator=gen,
                                                    dtype=torch.float64).to(device), grid, None, StepContext(schedule))
                            for i in range(0, num_samples, batch_size)])
        gammas = []
        for t in times:
            a, s = schedule.coeffs(t)
            total = 0.0
            for i in range(0, num_samples, batch_size):
                xb = x0[i : i + batch_size]
                noise = torch.randn(xb.shape, generator=gen, dtype=torch.float64).to(device)
                total += float(_batch_eps(eps, labels, i, batch_size)(a * xb + s * noise, t).square().flatten(1).mean(1).sum())
            gammas.append(total / num_samples)
    return GammaTable(times=[float(t) for t in times], gammas=gammas,
                      source="data" if data is not None else "generated", num_samples=num_samples)
