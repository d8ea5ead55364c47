"""An exact noise-prediction model: data from an isotropic Gaussian mixture.

If x_0 ~ sum_k w_k N(mu_k, s_k^2 I) and x_t = alpha_t x_0 + sigma_t eps (Eq. 1), then
x_t ~ sum_k w_k N(alpha_t mu_k, (alpha_t^2 s_k^2 + sigma_t^2) I), and the optimal eps-prediction
is eps*(x, t) = -sigma_t * grad log p_t(x), in closed form. Used as ground truth in tests.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..sampling.schedule import NoiseSchedule


class GaussianMixture:
    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor):
        self.means = means.to(torch.float64)  # [K, D]
        self.stds = stds.to(torch.float64)  # [K]
        self.weights = (weights / weights.sum()).to(torch.float64)  # [K]

    @classmethod
    def random(cls, components: int, dim: int, seed: int = 0, spread: float = 0.6, std: float = 0.15) -> "GaussianMixture":
        gen = torch.Generator().manual_seed(seed)
        means = spread * torch.randn(components, dim, generator=gen, dtype=torch.float64) / math.sqrt(1.0 / 4)
        means = means.clamp(-0.9, 0.9)
        stds = std * (0.5 + torch.rand(components, generator=gen, dtype=torch.float64))
        weights = 0.5 + torch.rand(components, generator=gen, dtype=torch.float64)
        return cls(means, stds, weights)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * noise


class GMMEpsNet(nn.Module):
    """net(x, t) = exact eps for ``mixture`` under ``schedule``; x is [B, *shape] with prod(shape) = D."""

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        super().__init__()
        self.mixture = mixture
        self.schedule = schedule
        self.register_buffer("means", mixture.means.clone())
        self.register_buffer("stds", mixture.stds.clone())
        self.register_buffer("log_weights", mixture.weights.log())

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``labels`` (class-conditional use): label k < K restricts the data to component k
        (its exact eps); label K is the whole mixture."""
        shape = x.shape
        xf = x.reshape(shape[0], -1).to(torch.float64)
        a = self.schedule.alpha(t.to(torch.float64))[:, None]  # [B, 1]
        s = self.schedule.sigma(t.to(torch.float64))[:, None]
        var = a**2 * self.stds[None] ** 2 + s**2  # [B, K]
        diff = xf[:, None, :] - a[:, :, None] * self.means[None]  # [B, K, D]
        dim = xf.shape[1]
        logits = self.log_weights[None] - 0.5 * dim * torch.log(var) - 0.5 * diff.square().sum(-1) / var
        if labels is not None:
            k = torch.arange(self.means.shape[0], device=x.device)
            keep = (labels[:, None] == k[None]) | (labels[:, None] == len(k))
            logits = logits.masked_fill(~keep, float("-inf"))
        post = torch.softmax(logits, dim=1)  # [B, K]
        score = -(post[:, :, None] * diff / var[:, :, None]).sum(1)
        return (-s * score).reshape(shape).to(x.dtype)
