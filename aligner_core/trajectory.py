"""Time grids ("trajectories") t_K > ... > t_0 in the network's input-time units.

A grid has K+1 points for K steps, in sampling order: grid[0] = t_K = T-1 (start), grid[-1] =
t_0 = 0 (terminal point, explicit). Sec. 3.3: "a discretization 0 = t_0 < t_1 < ... < t_K = T".
"""

from __future__ import annotations

import torch

from .errors import UsageError
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


TRAJECTORIES = {"uniform": _uniform, "quadratic": _quadratic, "logsnr": _logsnr}


def make_grid(kind: str, nfe: int, schedule: NoiseSchedule) -> list[float]:
    """K+1 = nfe+1 decreasing times from T-1 to 0."""
    if kind not in TRAJECTORIES:
        raise UsageError(f"unknown trajectory {kind!r}; choose one of: {', '.join(TRAJECTORIES)}")
    if not 1 <= nfe <= schedule.num_train_timesteps:
        raise UsageError(
            f"--nfe {nfe} is out of range; use 1 to {schedule.num_train_timesteps} "
            "(the model's num_train_timesteps)"
        )
    return [float(v) for v in TRAJECTORIES[kind](nfe, schedule)]
