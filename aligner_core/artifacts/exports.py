"""Exports of a tau artifact for other tools (``inspect --format diffusers|sigmas|json``).

- ``json``: the artifact itself, as JSON values.
- ``diffusers``: integer network-input timesteps ``round(tau)`` for tools that only accept
  integers (rounding loses the fractional part: the export says by how much), plus the grid.
- ``sigmas``: k-diffusion style noise levels sigma = sigma_t / alpha_t of the grid (decreasing,
  ending in 0), plus the noise level of each tau for the network's conditioning.

The exact aligned sampler needs both lists: step i moves the state from grid point i to i+1
while the network is fed tau_i. ``AlignedScheduler`` (``diffusers_scheduler.py``) does that
inside diffusers pipelines without rounding.
"""

from __future__ import annotations

from typing import Any

import torch

from .artifact import TauArtifact
from ..errors import UsageError
from ..sampling.schedule import NoiseSchedule

EXPORT_FORMATS = ("json", "diffusers", "sigmas")


def export_schedule(artifact: TauArtifact, fmt: str) -> dict[str, Any]:
    """The artifact's schedule in format ``fmt`` (one of ``EXPORT_FORMATS``) as a JSON-able dict."""
    if fmt == "json":
        return artifact.model_dump(mode="json")
    if fmt == "diffusers":
        return _diffusers(artifact)
    if fmt == "sigmas":
        return _sigmas(artifact)
    raise UsageError(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")


def _common(artifact: TauArtifact) -> dict[str, Any]:
    return {
        "key": artifact.key,
        "sampler": artifact.sampler.name,
        "eta": artifact.sampler.eta,
        "prediction_type": artifact.model.prediction_type,
        "num_train_timesteps": artifact.model.num_train_timesteps,
        "num_inference_steps": artifact.trajectory.nfe,
    }


def _diffusers(artifact: TauArtifact) -> dict[str, Any]:
    taus = list(artifact.taus)
    rounded = [int(round(tau)) for tau in taus]
    error = max(abs(r - tau) for r, tau in zip(rounded, taus))
    return {
        "timesteps": rounded,
        "grid_timesteps": list(artifact.trajectory.timesteps),
        "taus": taus,
        "max_rounding_error": error,
        **_common(artifact),
        "note": (
            "timesteps are the network-input times round(tau), one per step in sampling order; integer timesteps "
            f"lose the fractional taus; max rounding error {error:.4g} (network time units). Step i still moves the "
            "state from grid_timesteps[i] to grid_timesteps[i+1] (their alphas, sigmas), so do not pass these "
            "timesteps as a scheduler's own timesteps; AlignedScheduler.from_artifact runs the exact fractional taus "
            "in a diffusers pipeline"
        ),
    }


def _sigmas(artifact: TauArtifact) -> dict[str, Any]:
    schedule = NoiseSchedule(artifact.model.schedule)
    alphas, sigmas = artifact.trajectory.alphas, artifact.trajectory.sigmas
    grid_sigmas = [s / a for a, s in zip(alphas, sigmas)]
    taus = torch.tensor(artifact.taus, dtype=torch.float64)
    tau_sigmas = (schedule.sigma(taus) / schedule.alpha(taus)).tolist()
    last = grid_sigmas[-1]
    return {
        "sigmas": grid_sigmas + [0.0],
        "tau_sigmas": tau_sigmas,
        "grid_timesteps": list(artifact.trajectory.timesteps),
        "taus": list(artifact.taus),
        **_common(artifact),
        "note": (
            "k-diffusion convention: sigma = sigma_t/alpha_t at each grid point in sampling order, then a final 0.0 "
            f"(k-diffusion's last step to the clean sample); the grid's last point t={artifact.trajectory.timesteps[-1]:g} "
            f"has sigma {last:.4g} (about 0.01 for the DDPM linear schedule at t_0 = 0), so the dpm-align sampler "
            "stops there and the step to 0.0 is an extra one. For step i (sigmas[i] -> sigmas[i+1]) condition the "
            "network on tau_sigmas[i] instead of sigmas[i]"
        ),
    }
