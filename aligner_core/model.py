"""The model wrapper: any network -> eps(x, t) in the internal time units.

Parameterization (epsilon / sample / v_prediction) is converted here and nowhere else, so every
sampler step only ever sees a noise prediction. Conversion uses the schedule at the time the
network is *conditioned on*: with a tau override, eps(x, tau) is the noise the network predicts
when it believes x sits at time tau (Eq. 4 replaces t_i by tau_i inside eps_theta).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .errors import UsageError
from .schedule import NoiseSchedule

PredictionType = Literal["epsilon", "sample", "v_prediction"]
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


class EpsModel:
    """Callable eps(x, t): x of any float dtype, t a float or a tensor broadcastable to [B]."""

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule,
        prediction_type: str = "epsilon",
        dtype: torch.dtype = torch.float32,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise UsageError(
                f"unknown prediction type {prediction_type!r}; choose one of: {', '.join(PREDICTION_TYPES)}"
            )
        self.net = net
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.dtype = dtype

    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """The one place where internal time becomes the network's input time (identity for
        discrete DDPM networks, whose input is the step index 0..T-1, fractional allowed)."""
        return t.to(self.dtype)

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t.reshape(batch)
        out = self.net(x.to(self.dtype), self.net_time(t)).to(x.dtype)
        if self.prediction_type == "epsilon":
            return out
        shape = (batch,) + (1,) * (x.dim() - 1)
        alpha = self.schedule.alpha(t).reshape(shape).to(x.dtype)
        sigma = self.schedule.sigma(t).reshape(shape).to(x.dtype)
        if self.prediction_type == "sample":  # out = x0
            return (x - alpha * out) / sigma
        return alpha * out + sigma * x  # v = alpha eps - sigma x0  =>  eps = alpha v + sigma x
