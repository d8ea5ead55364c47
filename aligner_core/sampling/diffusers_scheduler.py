"""A diffusers scheduler that runs the aligned sampler inside an unmodified diffusers pipeline.

    pipe = DDPMPipeline.from_pretrained(path)
    pipe.scheduler = AlignedScheduler.from_artifact("taus.json")
    images = pipe(num_inference_steps=pipe.scheduler.num_inference_steps).images

A diffusers pipeline loops ``for t in scheduler.timesteps: x = scheduler.step(unet(x, t).sample, t, x)``.
Here ``timesteps`` are the fitted taus (what the network is fed, fractional, float32), while
``step`` moves the state between the artifact's *grid* times ``timesteps[i] -> timesteps[i+1]``
with exactly the DDIM update of ``samplers.ddim_step`` (eta from the artifact: 0 = DDIM, 1 =
DDPM ancestral). Which step is being taken is tracked by a counter that ``set_timesteps`` resets
(taus may repeat values, so the position of ``t`` cannot identify the step). Arithmetic is float64
(float32 on MPS, which has no float64); ``prev_sample`` comes back in the input dtype.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ..artifacts.artifact import TauArtifact, read_artifact
from ..artifacts.artifact_check import check_artifact
from ..models.model import PREDICTION_TYPES
from .schedule import NoiseSchedule, ScheduleSpec

SUPPORTED_SAMPLERS = ("ddim", "ddpm")
_TIMESTEP_TOLERANCE = 1e-3  # network-time units; a float32 tau <= 1000 is exact to ~6e-5


class AlignedScheduler(SchedulerMixin, ConfigMixin):
    """DDIM/DDPM with a per-step network timestep override (the taus of a tau artifact).

    Build it with ``from_artifact``; the constructor takes the same data as plain JSON values so
    that ``save_config`` / ``from_config`` round-trip it without the artifact file.
    """

    config_name = "scheduler_config.json"
    _compatibles: list[str] = []
    order = 1
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(
        self,
        taus: Sequence[float] = (),
        grid_timesteps: Sequence[float] = (),
        eta: float = 0.0,
        prediction_type: str = "epsilon",
        schedule: dict | None = None,
        num_train_timesteps: int = 1000,
        sampler: str = "ddim",
        model_sha256: str | None = None,
        artifact_key: str | None = None,
        artifact_path: str | None = None,
    ):
        taus = [float(v) for v in taus]
        grid = [float(v) for v in grid_timesteps]
        if sampler not in SUPPORTED_SAMPLERS:
            raise ValueError(
                f"AlignedScheduler supports artifacts fitted for the {' or '.join(SUPPORTED_SAMPLERS)} sampler, "
                f"not {sampler!r}; fit one with `dpm-align align --sampler ddim`"
            )
        if not taus or len(grid) != len(taus) + 1:
            raise ValueError(
                f"AlignedScheduler needs K >= 1 taus and K+1 grid timesteps; got {len(taus)} taus and {len(grid)} grid points"
            )
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {prediction_type!r}; choose one of: {', '.join(PREDICTION_TYPES)}")
        if not eta >= 0:
            raise ValueError(f"eta {eta} is negative; use eta >= 0 (0 = deterministic DDIM, 1 = DDPM)")
        spec = ScheduleSpec.model_validate(schedule) if schedule is not None else ScheduleSpec(
            num_train_timesteps=num_train_timesteps)
        if spec.num_train_timesteps != num_train_timesteps:
            raise ValueError(
                f"num_train_timesteps {num_train_timesteps} != the schedule's {spec.num_train_timesteps}"
            )
        self.noise_schedule = NoiseSchedule(spec)
        self._taus = taus
        self._grid = grid
        self._eta = float(eta)
        self._prediction_type = prediction_type
        # per step: (alpha_t, sigma_t) at the grid start, (alpha_s, sigma_s) at its end, (alpha, sigma) at tau
        coeffs = self.noise_schedule.coeffs
        self._coeffs = [(coeffs(grid[i]), coeffs(grid[i + 1]), coeffs(taus[i])) for i in range(len(taus))]
        self.num_inference_steps = len(taus)
        self.timesteps = torch.tensor(taus, dtype=torch.float32)
        self._step_index = 0

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_artifact(cls, artifact: TauArtifact | str | Path, *, unet: torch.nn.Module | None = None) -> "AlignedScheduler":
        """From a ``TauArtifact`` or the path of one, after the check every command runs
        (``check_artifact``: ``ArtifactError`` on a NaN or out-of-range tau, a tampered grid, ...).
        With ``unet`` (a diffusers UNet2DModel), also check that the artifact was fitted for
        exactly these weights (sha256)."""
        path = None
        if not isinstance(artifact, TauArtifact):
            path = str(Path(artifact).expanduser().resolve())
            artifact = read_artifact(Path(artifact).expanduser())
        if artifact.sampler.name not in SUPPORTED_SAMPLERS:
            raise ValueError(
                f"artifact {artifact.key} was fitted for the {artifact.sampler.name} sampler; AlignedScheduler "
                f"supports only {' and '.join(SUPPORTED_SAMPLERS)} artifacts"
            )
        check_artifact(artifact, source=path or f"artifact {artifact.key}")
        if unet is not None:
            from ..models.loading import DiffusersUNet, weights_sha256

            actual = weights_sha256(DiffusersUNet(unet))
            if actual != artifact.model.sha256:
                raise ValueError(
                    f"artifact {artifact.key} was fitted for another network (sha256 {artifact.model.sha256[:16]}… != "
                    f"{actual[:16]}… of this unet); fit taus for this model with `dpm-align align`"
                )
        return cls(
            taus=list(artifact.taus),
            grid_timesteps=list(artifact.trajectory.timesteps),
            eta=artifact.sampler.eta,
            prediction_type=artifact.model.prediction_type,
            schedule=artifact.model.schedule.model_dump(mode="json"),
            num_train_timesteps=artifact.model.schedule.num_train_timesteps,
            sampler=artifact.sampler.name,
            model_sha256=artifact.model.sha256,
            artifact_key=artifact.key,
            artifact_path=path,
        )

    # ------------------------------------------------------------------ the diffusers scheduler interface
    def __len__(self) -> int:
        return self.config.num_train_timesteps

    @property
    def taus(self) -> list[float]:
        return list(self._taus)

    @property
    def grid_timesteps(self) -> list[float]:
        return list(self._grid)

    @property
    def step_index(self) -> int:
        """Index of the next step (0 after ``set_timesteps``)."""
        return self._step_index

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None) -> None:
        """Reset the step counter and put ``timesteps`` (the taus) on ``device``. The number of
        steps is fixed by the artifact; any other ``num_inference_steps`` is refused."""
        steps = len(self._taus)
        if num_inference_steps is not None and int(num_inference_steps) != steps:
            raise ValueError(
                f"the tau artifact {self.config.artifact_key or ''} was fitted for {steps} steps, not "
                f"{num_inference_steps}; run the pipeline with num_inference_steps={steps} or fit taus for "
                f"{num_inference_steps} steps with `dpm-align align --nfe {num_inference_steps}`"
            )
        self.num_inference_steps = steps
        self.timesteps = torch.tensor(self._taus, dtype=torch.float32, device=device)
        self._step_index = 0

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One aligned DDIM step grid[i] -> grid[i+1], ``model_output`` being the network's output
        at ``timestep`` = taus[i]. For eta > 0 the added noise is ``variance_noise`` if given,
        else ``randn_tensor(model_output.shape, generator=generator)`` in the output's dtype."""
        i = self._step_index
        steps = len(self._taus)
        if i >= steps:
            raise ValueError(
                f"step {i + 1} requested but the tau artifact has {steps} steps; call set_timesteps() before each sampling loop"
            )
        expected = float(self.timesteps[i])
        given = float(torch.as_tensor(timestep).reshape(-1)[0])  # a scalar, 0-d or per-sample tensor
        if abs(given - expected) > _TIMESTEP_TOLERANCE:
            raise ValueError(
                f"step {i} expects timestep {expected:g} (taus[{i}]) but got {given:g}; "
                "iterate over scheduler.timesteps after set_timesteps()"
            )
        (a_t, s_t), (a_s, s_s), (a_tau, s_tau) = self._coeffs[i]
        work = torch.float32 if sample.device.type == "mps" else torch.float64
        x = sample.to(work)
        out = model_output.to(device=sample.device, dtype=work)
        if self._prediction_type == "epsilon":
            eps = out
        elif self._prediction_type == "sample":  # out = x0, converted at the conditioning time tau
            eps = (x - a_tau * out) / s_tau
        else:  # v = alpha eps - sigma x0  =>  eps = alpha v + sigma x, at tau
            eps = a_tau * out + s_tau * x
        x0 = (x - s_t * eps) / a_t
        if self._eta == 0.0:
            prev = a_s * x0 + s_s * eps
        else:
            c = self._eta * (s_s / s_t) * math.sqrt(max(0.0, 1.0 - (a_t / a_s) ** 2))
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                              dtype=model_output.dtype)
            prev = a_s * x0 + math.sqrt(max(0.0, s_s**2 - c**2)) * eps + c * variance_noise.to(device=sample.device, dtype=work)
        self._step_index = i + 1
        prev_sample, pred_original = prev.to(sample.dtype), x0.to(sample.dtype)
        if not return_dict:
            return prev_sample, pred_original
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original)
