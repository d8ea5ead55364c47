"""Sample-quality metrics shared by validation and eval."""

from __future__ import annotations

import torch


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of vectors [N, D] (float64)."""
    a, b = a.flatten(1).to(torch.float64), b.flatten(1).to(torch.float64)
    return frechet_from_stats(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))


def frechet_from_stats(mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor, cov_b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2}) (the FID formula).

    tr((S_a S_b)^{1/2}) is computed as the sum of sqrt of the eigenvalues of
    S_a^{1/2} S_b S_a^{1/2} (symmetric PSD), which is stable for rank-deficient covariances
    (fewer samples than dimensions)."""
    mu_a, mu_b, cov_a, cov_b = (torch.as_tensor(v, dtype=torch.float64) for v in (mu_a, mu_b, cov_a, cov_b))
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = (vecs * vals.clamp(min=0).sqrt()) @ vecs.T
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * middle)


def mean_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over samples of the per-sample L2 distance."""
    return float((a - b).flatten(1).norm(dim=1).mean())
