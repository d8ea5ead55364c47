"""Discrete variance-preserving noise schedules (Sec. 3.1, Eq. 1: x_t = alpha_t x_0 + sigma_t eps).

Time convention (used everywhere in ``aligner_core``): ``t`` is the network's own input time, a
float in [0, T-1] for a T-step discrete DDPM. Fractional t is defined by piecewise-linear
interpolation of log(alpha) between the integer steps (dpm-solver's convention for discrete
models), with linear extrapolation outside [0, T-1] so that a tau slightly outside the trained
range is still defined.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from ..errors import UsageError

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2", "trained"]
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# Sampling starts no lower in log-SNR than this (diffusers' ``lambda_min_clipped``, "critical for the
# cosine (squaredcos_cap_v2) noise schedule"). A linear schedule ends at -5.06 and a scaled-linear one
# at -2.68, so they start at T-1 as before; a cosine one ends at -9.92 (alpha = 4.9e-5, the capped
# last beta), where an eps model's x0 = (x - sigma eps) / alpha multiplies its error by 20,000: an
# under-trained CIFAR-10 model's ODE samples from there had RMS 264 for data in [-1, 1], from
# lambda = -5.1 (t = 995.1) 2.5, from t = 900 0.46 (docs/RESULTS.md).
LAMBDA_MIN = -5.1


class ScheduleSpec(BaseModel):
    """Everything needed to rebuild alphas_cumprod (stored in the artifact)."""

    model_config = ConfigDict(extra="forbid")

    beta_schedule: BetaSchedule = "linear"
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    trained_betas: list[float] | None = None

    @model_validator(mode="after")
    def _check(self) -> "ScheduleSpec":
        if self.num_train_timesteps < 2:
            raise ValueError("num_train_timesteps must be at least 2")
        if self.beta_schedule == "trained":
            if not self.trained_betas or len(self.trained_betas) != self.num_train_timesteps:
                raise ValueError("beta_schedule 'trained' needs num_train_timesteps trained_betas")
        return self

    @classmethod
    def from_diffusers_config(cls, config: dict) -> "ScheduleSpec":
        """Read a diffusers ``scheduler_config.json`` dict (DDPM/DDIM/... schedulers)."""
        kind = config.get("beta_schedule", "linear")
        betas = config.get("trained_betas")
        if betas is not None:
            kind = "trained"
        if kind not in BETA_SCHEDULES and kind != "trained":
            raise UsageError(
                f"unsupported beta_schedule {kind!r} in scheduler config; "
                f"supported: {', '.join(BETA_SCHEDULES)} or trained_betas"
            )
        return cls(
            beta_schedule=kind,
            num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
            beta_start=float(config.get("beta_start", 1e-4)),
            beta_end=float(config.get("beta_end", 0.02)),
            trained_betas=[float(b) for b in betas] if betas is not None else None,
        )

    def betas(self) -> torch.Tensor:
        T = self.num_train_timesteps
        f64 = torch.float64
        if self.beta_schedule == "linear":
            return torch.linspace(self.beta_start, self.beta_end, T, dtype=f64)
        if self.beta_schedule == "scaled_linear":
            return torch.linspace(self.beta_start**0.5, self.beta_end**0.5, T, dtype=f64) ** 2
        if self.beta_schedule == "squaredcos_cap_v2":
            # Nichol & Dhariwal (2021) cosine alpha_bar, betas capped at 0.999.
            def alpha_bar(u: float) -> float:
                return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

            return torch.tensor(
                [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)],
                dtype=f64,
            )
        return torch.tensor(self.trained_betas, dtype=f64)


class NoiseSchedule:
    """alpha(t), sigma(t), lambda(t) = log(alpha/sigma) and its inverse, in float64."""

    def __init__(self, spec: ScheduleSpec):
        self.spec = spec
        self.alphas_cumprod = torch.cumprod(1.0 - spec.betas(), dim=0)
        self._log_alpha = 0.5 * torch.log(self.alphas_cumprod)
        last = torch.tensor([float(spec.num_train_timesteps - 1)], dtype=torch.float64)
        clipped = bool(self.lambda_(last) < LAMBDA_MIN)
        self._t_max = float(self.inverse_lambda(torch.tensor([LAMBDA_MIN], dtype=torch.float64))) if clipped \
            else float(last)

    @property
    def num_train_timesteps(self) -> int:
        return self.spec.num_train_timesteps

    @property
    def tau_max(self) -> float | None:
        """The latest time a fit may feed the network: ``t_max`` where the schedule was clipped there
        (past it log alpha falls steeply, and a tau there made a v-model's fit a cliff), else None (a
        tau may go past T-1, where log alpha is extrapolated linearly)."""
        return self._t_max if self._t_max < self.num_train_timesteps - 1 else None

    @property
    def t_max(self) -> float:
        """Where every grid starts: T-1, the last trained time, or earlier where lambda(T-1) < LAMBDA_MIN
        (the time with lambda = LAMBDA_MIN)."""
        return self._t_max

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear in t, differentiable in t, any shape, on t's device."""
        table = self._log_alpha.to(t.device)
        t = t.to(torch.float64)
        idx = torch.clamp(torch.floor(t.detach()), 0, self.num_train_timesteps - 2).long()
        frac = t - idx
        return table[idx] + frac * (table[idx + 1] - table[idx])

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def lambda_(self, t: torch.Tensor) -> torch.Tensor:
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2.0 * la))

    def inverse_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        """t with lambda(t) = lam (lambda is strictly decreasing in t)."""
        lam = lam.to(torch.float64)
        target = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)  # log alpha at lam
        table = self._log_alpha  # decreasing in t
        flipped = torch.flip(table, [0]).contiguous()  # increasing
        pos = torch.searchsorted(flipped, target.contiguous())
        hi = torch.clamp(self.num_train_timesteps - pos, 1, self.num_train_timesteps - 1)
        lo = hi - 1
        frac = (target - table[lo]) / (table[hi] - table[lo])
        return lo.to(torch.float64) + frac

    def coeffs(self, t: float | torch.Tensor) -> tuple[float, float] | tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) as Python floats, for sampler arithmetic in float64; as 0-d tensors
        when t is a tensor that requires grad (``--fit-grid`` differentiates through the grid)."""
        if isinstance(t, torch.Tensor) and t.requires_grad:
            return self.alpha(t), self.sigma(t)
        tt = torch.tensor(float(t), dtype=torch.float64)
        return float(self.alpha(tt)), float(self.sigma(tt))
