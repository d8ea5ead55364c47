"""Time grids ("trajectories") t_K > ... > t_0 in the network's input-time units.

A grid has K+1 points for K steps, in sampling order: grid[0] = t_K (start: ``schedule.t_max``,
which is T-1 unless the log-SNR there is below ``LAMBDA_MIN``; ``edm`` may start later), grid[-1] =
t_0 = 0 (terminal point, explicit). Sec. 3.3: "a discretization 0 = t_0 < t_1 < ... < t_K = T".
"""

from __future__ import annotations

import torch

from ..errors import UsageError
from .schedule import NoiseSchedule


def _uniform(nfe: int, schedule: NoiseSchedule) -> torch.Tensor:
    return torch.linspace(schedule.t_max, 0.0, nfe + 1, dtype=torch.float64)


def _quadratic(nfe: int, schedule: NoiseSchedule) -> torch.Tensor:
    # Denser near t=0: t_i = T_max * (i/K)^2 (the DDIM paper's "quadratic" skip, without its 0.8 cap).
    return schedule.t_max * torch.linspace(1.0, 0.0, nfe + 1, dtype=torch.float64) ** 2


def _logsnr(nfe: int, schedule: NoiseSchedule) -> torch.Tensor:
    # Uniform in lambda = log(alpha/sigma) (dpm-solver's "logSNR" skip type).
    ends = torch.tensor([schedule.t_max, 0.0], dtype=torch.float64)
    lam = schedule.lambda_(ends)
    grid = schedule.inverse_lambda(torch.linspace(float(lam[0]), float(lam[1]), nfe + 1, dtype=torch.float64))
    grid[0], grid[-1] = schedule.t_max, 0.0
    return grid


EDM_SIGMA_MIN, EDM_SIGMA_MAX, EDM_RHO = 0.002, 80.0, 7.0


def _edm(nfe: int, schedule: NoiseSchedule, rho: float = EDM_RHO) -> torch.Tensor:
    # Karras et al. (2022), Eq. 5: sigma_i = (s_max^(1/rho) + i/K (s_min^(1/rho) - s_max^(1/rho)))^rho,
    # in the VP model's sigma = sigma_t/alpha_t, with EDM's [0.002, 80] clamped to the model's range.
    ends = torch.tensor([schedule.t_max, 0.0], dtype=torch.float64)
    model_max, model_min = torch.exp(-schedule.lambda_(ends)).tolist()
    s_max, s_min = min(EDM_SIGMA_MAX, model_max), max(EDM_SIGMA_MIN, model_min)
    ramp = torch.linspace(0.0, 1.0, nfe + 1, dtype=torch.float64)
    sigmas = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    grid = schedule.inverse_lambda(-torch.log(sigmas))
    if s_max == model_max:
        grid[0] = schedule.t_max
    if s_min == model_min:
        grid[-1] = 0.0
    return grid


TRAJECTORIES = {"uniform": _uniform, "quadratic": _quadratic, "logsnr": _logsnr, "edm": _edm}


def resolve_rho(kind: str, rho: float | None) -> float | None:
    """rho as stored and keyed: EDM's 7 when left out for ``edm``, None for other trajectories."""
    return (EDM_RHO if rho is None else float(rho)) if kind == "edm" else rho


def make_grid(kind: str, steps: int, schedule: NoiseSchedule, rho: float | None = None) -> list[float]:
    """K+1 = steps+1 decreasing times ending at 0. ``rho`` only for ``edm`` (default 7)."""
    if kind not in TRAJECTORIES:
        raise UsageError(f"unknown trajectory {kind!r}; choose one of: {', '.join(TRAJECTORIES)}")
    if not 1 <= steps <= schedule.num_train_timesteps:
        raise UsageError(
            f"--nfe gives {steps} steps, out of range; use 1 to {schedule.num_train_timesteps} steps "
            "(the model's num_train_timesteps)"
        )
    if kind == "edm":
        if rho is not None and rho <= 0:
            raise UsageError(f"--rho {rho} must be positive (EDM uses 7)")
        return [float(v) for v in _edm(steps, schedule, EDM_RHO if rho is None else rho)]
    if rho is not None:
        raise UsageError(f"--rho applies to the edm trajectory only, not {kind}")
    return [float(v) for v in TRAJECTORIES[kind](steps, schedule)]
