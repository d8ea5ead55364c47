"""Few-step samplers with a per-evaluation timestep override (the aligned DE solver of Eq. 4).

A sampler is a step function ``step(eps, x, t, s, taus, ctx) -> x_s`` that moves ``x`` from
grid time ``t`` to ``s < t``, feeding the network ``taus`` (one per network evaluation) instead
of ``t``. ``run_sampler`` loops it over an explicit grid. Adding a sampler is one step function
plus one line in ``SAMPLERS``. State and coefficients are float64; only the network runs in its
own dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from .errors import UsageError
from .schedule import NoiseSchedule

EpsFn = Callable[[torch.Tensor, torch.Tensor | float], torch.Tensor]


class NoiseSource(Protocol):
    def __call__(self) -> torch.Tensor: ...


@dataclass
class StepContext:
    schedule: NoiseSchedule
    eta: float = 0.0
    noise: NoiseSource | None = None  # fresh N(0, I) like x; needed when eta > 0


def ddim_step(eps: EpsFn, x: torch.Tensor, t: float, s: float, taus: Sequence, ctx: StepContext) -> torch.Tensor:
    """DDIM (Song et al., 2021, Eq. 12) from t to s with eps evaluated at tau.

    eta = 0 is Eq. 3/4 of the paper:
        x_s = alpha_s/alpha_t x_t - (alpha_s sigma_t / alpha_t - sigma_s) eps(x_t, tau).
    eta = 1 is the DDPM ancestral step for the skipped chain.
    """
    a_t, s_t = ctx.schedule.coeffs(t)
    a_s, s_s = ctx.schedule.coeffs(s)
    e = eps(x, taus[0])
    x0 = (x - s_t * e) / a_t
    if ctx.eta == 0.0:
        return a_s * x0 + s_s * e
    # std of the added noise: eta * sqrt((1 - abar_s)/(1 - abar_t) * (1 - abar_t/abar_s))
    c = ctx.eta * (s_s / s_t) * math.sqrt(max(0.0, 1.0 - (a_t / a_s) ** 2))
    if ctx.noise is None:
        raise ValueError("a stochastic step (eta > 0) needs a noise source")
    return a_s * x0 + math.sqrt(max(0.0, s_s**2 - c**2)) * e + c * ctx.noise().to(x)


@dataclass(frozen=True)
class SamplerSpec:
    step: Callable[..., torch.Tensor]
    default_eta: float = 0.0
    evals_per_step: int = 1
    eta_configurable: bool = True


SAMPLERS: dict[str, SamplerSpec] = {
    "ddim": SamplerSpec(ddim_step, default_eta=0.0),
    "ddpm": SamplerSpec(ddim_step, default_eta=1.0),
}


def get_sampler(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def resolve_eta(name: str, eta: float | None) -> float:
    spec = get_sampler(name)
    value = spec.default_eta if eta is None else float(eta)
    if value < 0:
        raise UsageError(f"--eta {value} is negative; use eta >= 0 (0 = deterministic DDIM, 1 = DDPM)")
    return value


def run_sampler(
    name: str,
    eps: EpsFn,
    x: torch.Tensor,
    grid: Sequence[float],
    taus: Sequence[float] | None,
    ctx: StepContext,
    record: bool = False,
) -> torch.Tensor | list[torch.Tensor]:
    """Sample from x at grid[0] down to grid[-1]. ``taus=None`` is the plain sampler (tau = t).

    With ``record`` returns the list of states at every grid point (len(grid) tensors).
    """
    spec = get_sampler(name)
    steps = len(grid) - 1
    n_eval = spec.evals_per_step
    if taus is None:
        taus = [grid[i] for i in range(steps) for _ in range(n_eval)]
    if len(taus) != steps * n_eval:
        raise UsageError(f"{len(taus)} taus given for {steps} steps of {name}; need {steps * n_eval}")
    x = x.to(torch.float64)
    states = [x] if record else None
    for i in range(steps):
        x = spec.step(eps, x, grid[i], grid[i + 1], taus[i * n_eval : (i + 1) * n_eval], ctx)
        if record:
            states.append(x)
    return states if record else x


class PerSampleNoise:
    """N(0, I) noise drawn from one generator per sample, so that sample k's noise (initial and
    per-step) depends only on (seed, k): results do not change with the batch size."""

    def __init__(self, seed: int, indices: Sequence[int], shape: Sequence[int], device: torch.device | str = "cpu"):
        self.generators = [torch.Generator().manual_seed(int(seed) * 1_000_003 + int(k)) for k in indices]
        self.shape = tuple(shape)
        self.device = device

    def __call__(self) -> torch.Tensor:
        draws = [torch.randn(self.shape, generator=g, dtype=torch.float64) for g in self.generators]
        return torch.stack(draws).to(self.device)
