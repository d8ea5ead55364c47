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

from ..errors import UsageError
from .schedule import NoiseSchedule

EpsFn = Callable[[torch.Tensor, torch.Tensor | float], torch.Tensor]


class NoiseSource(Protocol):
    def __call__(self) -> torch.Tensor: ...


@dataclass
class StepContext:
    schedule: NoiseSchedule
    eta: float = 0.0
    noise: NoiseSource | None = None  # fresh N(0, I) like x; needed by stochastic samplers
    gamma: Callable[[float], float] | None = None  # analytic samplers: Gamma_t = E||eps(x_t, t)||^2 / d


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


def _midpoint_in_lambda(t: float, s: float, schedule: NoiseSchedule) -> float:
    """s1 with lambda(s1) = (lambda(t) + lambda(s)) / 2 (DPM-Solver-2, r1 = 1/2)."""
    lam = schedule.lambda_(torch.tensor([t, s], dtype=torch.float64))
    return float(schedule.inverse_lambda(lam.mean().reshape(1)))


def dpm_solver_2_step(eps: EpsFn, x: torch.Tensor, t: float, s: float, taus: Sequence, ctx: StepContext) -> torch.Tensor:
    """DPM-Solver-2 (Lu et al., 2022, Algorithm 1 with r1 = 1/2), the singlestep second-order
    solver; the intermediate time s1 is the midpoint of [t, s] in lambda = log(alpha/sigma)
    (not k-diffusion's geometric midpoint in sigma). With h = lambda_s - lambda_t:
        u   = alpha_s1/alpha_t x - sigma_s1 (e^{h/2} - 1) eps(x, tau_0)
        x_s = alpha_s /alpha_t x - sigma_s  (e^{h}   - 1) eps(u, tau_1)
    tau_0 replaces t and tau_1 replaces s1."""
    schedule = ctx.schedule
    s1 = _midpoint_in_lambda(t, s, schedule)
    a_t, _ = schedule.coeffs(t)
    a_1, s_1 = schedule.coeffs(s1)
    a_s, s_s = schedule.coeffs(s)
    lam = schedule.lambda_(torch.tensor([t, s], dtype=torch.float64))
    h = float(lam[1] - lam[0])
    u = (a_1 / a_t) * x - s_1 * math.expm1(h / 2) * eps(x, taus[0])
    return (a_s / a_t) * x - s_s * math.expm1(h) * eps(u, taus[1])


def edm_heun_step(eps: EpsFn, x: torch.Tensor, t: float, s: float, taus: Sequence, ctx: StepContext) -> torch.Tensor:
    """EDM's deterministic Heun step (Karras et al., 2022, Algorithm 1, S_churn = 0) on a VP
    model through the sigma = sigma_t/alpha_t view: x_hat = x/alpha_t follows
    d x_hat / d sigma = eps(alpha x_hat, t(sigma)).
        d  = eps(x_t, tau_0);  x_hat' = x_hat + (sigma_s - sigma_t) d
        d' = eps(alpha_s x_hat', tau_1);  x_hat_s = x_hat + (sigma_s - sigma_t) (d + d')/2
    tau_0 replaces t, tau_1 replaces s. Our grids end at t_0 = 0 where sigma > 0, so every step
    (the last one too) takes the Heun correction: NFE = 2 x steps."""
    a_t, s_t = ctx.schedule.coeffs(t)
    a_s, s_s = ctx.schedule.coeffs(s)
    sig_t, sig_s = s_t / a_t, s_s / a_s
    x_hat = x / a_t
    d = eps(x, taus[0])
    x_euler = x_hat + (sig_s - sig_t) * d
    d_prime = eps(a_s * x_euler, taus[1])
    return a_s * (x_hat + (sig_s - sig_t) * 0.5 * (d + d_prime))


def analytic_step(eps: EpsFn, x: torch.Tensor, t: float, s: float, taus: Sequence, ctx: StepContext) -> torch.Tensor:
    """Analytic-DPM (Bao et al., 2022, Theorem 1 for the DDIM family): the DDIM mean with
    lambda = eta * (DDPM posterior std) and the optimal variance
        sigma*^2 = lambda^2 + (sqrt(1 - abar_s - lambda^2) - sqrt(abar_s (1 - abar_t) / abar_t))^2 (1 - Gamma_t),
    Gamma_t = E||eps(x_t, t)||^2 / d. eta = 0 is Analytic-DDIM, eta = 1 Analytic-DDPM. As in
    DDPM, the final step (to s = 0) returns the mean without noise."""
    if ctx.gamma is None or ctx.noise is None:
        raise ValueError("an analytic step needs Gamma_t (ctx.gamma) and a noise source")
    a_t, s_t = ctx.schedule.coeffs(t)
    a_s, s_s = ctx.schedule.coeffs(s)
    e = eps(x, taus[0])
    x0 = (x - s_t * e) / a_t
    lam = ctx.eta * (s_s / s_t) * math.sqrt(max(0.0, 1.0 - (a_t / a_s) ** 2))
    direction = math.sqrt(max(0.0, s_s**2 - lam**2))
    mean = a_s * x0 + direction * e
    if s <= 0.0:
        return mean
    var = lam**2 + (direction - a_s * s_t / a_t) ** 2 * max(0.0, 1.0 - ctx.gamma(t))
    return mean + math.sqrt(var) * ctx.noise().to(x)


EvalTimes = Callable[[float, float, NoiseSchedule], list]


@dataclass(frozen=True)
class SamplerSpec:
    step: Callable[..., torch.Tensor]
    eval_times: EvalTimes  # nominal network times of the step's evaluations (what taus replace)
    evals_per_step: int
    default_eta: float | None = None  # None: a deterministic sampler without eta
    description: str = ""
    needs_gamma: bool = False  # analytic samplers: Gamma_t estimated per model (analytic.py)


def _at_t(t, s, schedule):
    return [t]


def _at_t_and_s(t, s, schedule):
    return [t, s]


def _at_t_and_midpoint(t, s, schedule):
    return [t, _midpoint_in_lambda(t, s, schedule)]


SAMPLERS: dict[str, SamplerSpec] = {
    "ddim": SamplerSpec(ddim_step, _at_t, 1, 0.0, "DDIM, eta = 0 (Eq. 3/4)"),
    "ddpm": SamplerSpec(ddim_step, _at_t, 1, 1.0, "DDIM with eta = 1 (DDPM ancestral step)"),
    "dpm-solver-2": SamplerSpec(dpm_solver_2_step, _at_t_and_midpoint, 2, None, "DPM-Solver-2, midpoint in lambda"),
    "edm-heun": SamplerSpec(edm_heun_step, _at_t_and_s, 2, None, "EDM deterministic Heun, sigma = sigma_t/alpha_t"),
    "analytic-ddim": SamplerSpec(analytic_step, _at_t, 1, 0.0, "Analytic-DDIM (optimal variance)", needs_gamma=True),
    "analytic-ddpm": SamplerSpec(analytic_step, _at_t, 1, 1.0, "Analytic-DDPM (optimal variance)", needs_gamma=True),
}


def is_stochastic(name: str, eta: float) -> bool:
    """Whether the sampler draws noise: eta > 0, or an analytic sampler (always)."""
    return eta > 0 or get_sampler(name).needs_gamma


def nominal_eval_times(name: str, grid: Sequence[float], schedule: NoiseSchedule) -> list[float]:
    """The network times of every evaluation along ``grid`` (the identity taus), sampling order."""
    spec = get_sampler(name)
    return [float(v) for t, s in zip(grid[:-1], grid[1:]) for v in spec.eval_times(float(t), float(s), schedule)]


def get_sampler(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def resolve_eta(name: str, eta: float | None) -> float:
    spec = get_sampler(name)
    if spec.default_eta is None:
        if eta not in (None, 0, 0.0):
            raise UsageError(f"--eta does not apply to the deterministic sampler {name}; leave it out")
        return 0.0
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
        taus = nominal_eval_times(name, grid, ctx.schedule)
    if len(taus) != steps * n_eval:
        raise UsageError(f"{len(taus)} taus given for {steps} steps of {name}; need {steps * n_eval}")
    x = x.to(torch.float64)
    states = [x] if record else None
    for i in range(steps):
        x = spec.step(eps, x, grid[i], grid[i + 1], taus[i * n_eval : (i + 1) * n_eval], ctx)
        if record:
            states.append(x)
    return states if record else x


def dpm_solver_pp_multistep(eps: EpsFn, x: torch.Tensor, grid: Sequence[float], ctx: StepContext, order: int = 2,
                            keep: Sequence[int] | None = None) -> torch.Tensor | list[torch.Tensor]:
    """DPM-Solver++(2M) and (3M) (Lu et al., 2022b, Algorithm 2 and its third-order multistep
    update), multistep solvers in data prediction, with the network at the grid times (no taus:
    they are the reference and the teacher, not samplers to align). With
    x0_i = (x_i - sigma_i eps(x_i, t_i)) / alpha_i, h_i = lambda_{i+1} - lambda_i and
    r_i = h_{i-1} / h_i, the first step is DDIM in data prediction and
      order 2:  D_i     = (1 + 1/(2 r_i)) x0_i - 1/(2 r_i) x0_{i-1}
                x_{i+1} = sigma_{i+1}/sigma_i x_i - alpha_{i+1} (e^{-h_i} - 1) D_i
      order 3 (from the third step; the second is the order-2 one), with r0 = h_{i-1} / h_i,
                r1 = h_{i-2} / h_i, D1_0 = (x0_i - x0_{i-1}) / r0, D1_1 = (x0_{i-1} - x0_{i-2}) / r1,
                D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1) and D2 = (D1_0 - D1_1) / (r0 + r1):
                x_{i+1} = sigma_{i+1}/sigma_i x_i - alpha_{i+1} (e^{-h_i} - 1) x0_i
                          + alpha_{i+1} ((e^{-h_i} - 1) / h_i + 1) D1
                          - alpha_{i+1} ((e^{-h_i} - 1 + h_i) / h_i^2 - 1/2) D2
    One evaluation per step, so at equal cost 2M takes twice DPM-Solver-2's steps (about half its
    error on the demo and zoo models); 3M is no more accurate than 2M on those networks
    (``benchmarks/reference_accuracy.py``, docs/RESULTS.md). Returns the end state, or with
    ``keep`` the states at those indices of ``grid``."""
    if order not in (2, 3):
        raise ValueError(f"order {order}: DPM-Solver++ multistep is implemented for orders 2 and 3")
    schedule = ctx.schedule
    lam = schedule.lambda_(torch.tensor([float(t) for t in grid], dtype=torch.float64)).tolist()
    x = x.to(torch.float64)
    kept = {0: x} if keep is not None and 0 in keep else {}
    x0s, hs = [], []  # the last data predictions and step lengths, newest last
    for i in range(len(grid) - 1):
        a_t, s_t = schedule.coeffs(float(grid[i]))
        a_s, s_s = schedule.coeffs(float(grid[i + 1]))
        h = lam[i + 1] - lam[i]
        x0 = (x - s_t * eps(x, float(grid[i]))) / a_t
        em1 = math.expm1(-h)
        if order == 3 and len(x0s) == 2:
            r0, r1 = hs[-1] / h, hs[-2] / h
            d1_0, d1_1 = (x0 - x0s[-1]) / r0, (x0s[-1] - x0s[-2]) / r1
            d1, d2 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1), (d1_0 - d1_1) / (r0 + r1)
            x = (s_s / s_t) * x - a_s * em1 * x0 + a_s * (em1 / h + 1) * d1 - a_s * ((em1 + h) / h**2 - 0.5) * d2
        else:
            d = x0 if not x0s else x0 + (h / (2 * hs[-1])) * (x0 - x0s[-1])
            x = (s_s / s_t) * x - a_s * em1 * d
        x0s, hs = [*x0s[-1:], x0], [*hs[-1:], h]
        if keep is not None and i + 1 in keep:
            kept[i + 1] = x
    return x if keep is None else [kept[i] for i in keep]


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
