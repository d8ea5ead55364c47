"""Compatibility with diffusers: schedules, DDIM/DDPM steps, loading, and the CLI end to end.

Everything runs offline on a tiny random-init ``UNet2DModel`` (8x8, one channel).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from dpm_align.aligner_core.artifacts.artifact import read_artifact
from dpm_align.aligner_core.errors import UsageError
from dpm_align.aligner_core.models.loading import DiffusersUNet, load_model
from dpm_align.aligner_core.models.model import EpsModel
from dpm_align.aligner_core.sampling.samplers import PerSampleNoise, StepContext, run_sampler
from dpm_align.aligner_core.sampling.schedule import NoiseSchedule, ScheduleSpec
from dpm_align.cli.main import app
from tests.conftest import assert_close_to_scale, assert_one_line, tiny_unet

T = 1000
BETA_SCHEDULES = {
    "linear": {},
    "scaled_linear": {"beta_start": 0.00085, "beta_end": 0.012},
    "squaredcos_cap_v2": {},
}
WEIGHTS_FILE = Path("unet") / "diffusion_pytorch_model.safetensors"


# ----------------------------------------------------------------------------- helpers
def uniform_ddim_grid(steps: int) -> list[float]:
    """diffusers DDIM 'trailing' timesteps [999, 899, ..., 99] plus the final alphas_cumprod[0]."""
    return [float(T - 1 - k * (T // steps)) for k in range(steps)] + [0.0]


def ddim_scheduler(steps: int, prediction_type: str = "epsilon") -> DDIMScheduler:
    """diffusers DDIM whose timesteps are ``uniform_ddim_grid(steps)[:-1]``, last step to alphas_cumprod[0]."""
    scheduler = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False,
                              set_alpha_to_one=False, timestep_spacing="trailing", prediction_type=prediction_type)
    scheduler.set_timesteps(steps)
    return scheduler


def diffusers_ddim(unet: UNet2DModel, scheduler: DDIMScheduler, x: torch.Tensor, eta: float,
                   noises: list[torch.Tensor] | None = None) -> torch.Tensor:
    for k, t in enumerate(scheduler.timesteps):
        out = unet(x, t).sample
        extra = {"variance_noise": noises[k]} if noises is not None else {}
        x = scheduler.step(out, t, x, eta=eta, **extra).prev_sample
    return x


def fixed_noise(noises: list[torch.Tensor]):
    """A NoiseSource returning the pre-drawn tensors in order."""
    stream = iter(noises)
    return lambda: next(stream)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    return tiny_unet()


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory, unet) -> Path:
    """A saved DDPMPipeline (never modified by tests: copy it first)."""
    path = tmp_path_factory.mktemp("models") / "pipe"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=T)).save_pretrained(str(path))
    return path


@pytest.fixture
def pipe_copy(tmp_path, pipe_dir) -> Path:
    return Path(shutil.copytree(pipe_dir, tmp_path / "pipe-copy"))


# ----------------------------------------------------------------------------- 1. schedule
@pytest.mark.parametrize("beta_schedule", list(BETA_SCHEDULES))
def test_alphas_cumprod_match_diffusers(beta_schedule):
    kwargs = BETA_SCHEDULES[beta_schedule]
    scheduler = DDPMScheduler(num_train_timesteps=T, beta_schedule=beta_schedule, **kwargs)
    theirs = scheduler.alphas_cumprod.to(torch.float64)
    direct = NoiseSchedule(ScheduleSpec(beta_schedule=beta_schedule, num_train_timesteps=T, **kwargs))
    from_config = NoiseSchedule(ScheduleSpec.from_diffusers_config(dict(scheduler.config)))
    assert direct.alphas_cumprod.dtype == torch.float64
    # diffusers' cumprod runs in float32 over 1000 factors; the cosine tail reaches ~2e-9, where
    # its relative rounding error is ~1.3e-5.
    torch.testing.assert_close(direct.alphas_cumprod, theirs, rtol=5e-5, atol=0.0)
    torch.testing.assert_close(from_config.alphas_cumprod, direct.alphas_cumprod, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("beta_schedule", list(BETA_SCHEDULES))
def test_fractional_time_and_inverse_lambda(beta_schedule):
    schedule = NoiseSchedule(ScheduleSpec(beta_schedule=beta_schedule, **BETA_SCHEDULES[beta_schedule]))
    a10, a105, a11 = (float(schedule.alpha(torch.tensor(v))) for v in (10.0, 10.5, 11.0))
    assert a11 < a105 < a10
    t = torch.tensor([0.0, 0.25, 1.0, 10.5, 123.4, 500.0, 876.5, 998.9, 999.0], dtype=torch.float64)
    torch.testing.assert_close(schedule.inverse_lambda(schedule.lambda_(t)), t, rtol=0.0, atol=1e-6)


# ----------------------------------------------------------------------------- 2. DDIM vs diffusers
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_ddim_eta0_matches_diffusers(unet, prediction_type):
    steps = 10
    scheduler = ddim_scheduler(steps, prediction_type)
    grid = uniform_ddim_grid(steps)
    schedule = NoiseSchedule(ScheduleSpec())
    assert scheduler.timesteps.tolist() == grid[:-1]
    assert float(scheduler.final_alpha_cumprod) == pytest.approx(float(schedule.alpha(torch.tensor(grid[-1]))) ** 2,
                                                                 rel=1e-6)
    eps_model = EpsModel(DiffusersUNet(unet), schedule, prediction_type)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = diffusers_ddim(unet, scheduler, x, eta=0.0)
        ours = run_sampler("ddim", eps_model, x, grid, None, StepContext(schedule, 0.0))
    assert_close_to_scale(ours, theirs)


def test_ddim_eta1_matches_diffusers_with_shared_noise(unet):
    steps = 10
    scheduler = ddim_scheduler(steps)
    schedule = NoiseSchedule(ScheduleSpec())
    eps_model = EpsModel(DiffusersUNet(unet), schedule, "epsilon")
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1, 8, 8, generator=gen)
    noises = [torch.randn(2, 1, 8, 8, generator=gen) for _ in range(steps)]
    with torch.no_grad():
        theirs = diffusers_ddim(unet, scheduler, x, eta=1.0, noises=noises)
        ours = run_sampler("ddim", eps_model, x, uniform_ddim_grid(steps), None,
                           StepContext(schedule, 1.0, noise=fixed_noise(noises)))
    assert_close_to_scale(ours, theirs)


# ----------------------------------------------------------------------------- 3. identity taus
@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddpm", 1.0)])
def test_identity_taus_equal_plain_sampler(unet, sampler, eta):
    schedule = NoiseSchedule(ScheduleSpec())
    eps_model = EpsModel(DiffusersUNet(unet), schedule, "epsilon")
    grid = uniform_ddim_grid(5)

    def sample(taus):
        noise = PerSampleNoise(seed=3, indices=range(2), shape=(1, 8, 8))
        with torch.no_grad():
            return run_sampler(sampler, eps_model, noise(), grid, taus, StepContext(schedule, eta, noise))

    assert torch.equal(sample(grid[:-1]), sample(None))


# ----------------------------------------------------------------------------- 4. loading
def test_load_pipeline(pipe_dir):
    loaded = load_model(pipe_dir)
    scheduler = DDPMScheduler.from_pretrained(str(pipe_dir), subfolder="scheduler")
    assert loaded.info.format == "diffusers-pipeline"
    assert loaded.info.prediction_type == "epsilon"
    assert loaded.sample_shape == (1, 8, 8)
    assert loaded.info.schedule == ScheduleSpec.from_diffusers_config(dict(scheduler.config))
    torch.testing.assert_close(loaded.eps.schedule.alphas_cumprod, scheduler.alphas_cumprod.to(torch.float64),
                               rtol=5e-5, atol=0.0)


def test_sha256_follows_weights_not_path(pipe_dir, pipe_copy):
    original = load_model(pipe_dir).info.sha256
    assert load_model(pipe_copy).info.sha256 == original
    weights = pipe_copy / WEIGHTS_FILE
    state = load_file(str(weights))
    name = sorted(state)[0]
    state[name] = state[name].clone()
    state[name].view(-1)[0] += 1.0
    save_file(state, str(weights))
    assert load_model(pipe_copy).info.sha256 != original


def test_bare_unet_dir_needs_schedule(pipe_dir):
    loaded = load_model(pipe_dir / "unet", schedule="linear")
    assert loaded.info.format == "diffusers-unet"
    assert loaded.sample_shape == (1, 8, 8)
    assert loaded.info.schedule == ScheduleSpec(beta_schedule="linear")
    assert loaded.info.sha256 == load_model(pipe_dir).info.sha256
    with pytest.raises(UsageError) as excinfo:
        load_model(pipe_dir / "unet")
    assert_one_line(excinfo, "--schedule")


def test_not_a_diffusers_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError) as excinfo:
        load_model(tmp_path / "empty")
    assert_one_line(excinfo, "not a diffusers model")


def test_truncated_weights_are_corrupt(pipe_copy):
    weights = pipe_copy / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError) as excinfo:
        load_model(pipe_copy)
    assert_one_line(excinfo, "corrupt")


# ----------------------------------------------------------------------------- 5. CLI end to end
def test_cli_align_then_sample(tmp_path, monkeypatch, pipe_dir):
    monkeypatch.setenv("DPM_ALIGN_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    taus = tmp_path / "taus.json"

    def invoke(*args: str) -> dict:
        result = runner.invoke(app, [*args, "--model", str(pipe_dir), "--device", "cpu", "--quiet", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    aligned = invoke("align", "--nfe", "3", "--sampler", "ddim", "--trajectory", "uniform", "--out", str(taus),
                     "--iterations", "3", "--num-samples", "8", "--no-validate")
    assert "artifact" in aligned
    artifact = read_artifact(taus)
    assert artifact.model.format == "diffusers-pipeline"
    assert len(artifact.taus) == 3
    assert (tmp_path / "cache" / f"{artifact.key}.json").is_file()

    out = tmp_path / "s"
    summary = invoke("sample", "--taus", str(taus), "-n", "4", "--out", str(out))
    assert summary["aligned"] is True and summary["taus"] == artifact.taus
    assert sorted(p.name for p in out.glob("*.png")) == ["000000.png", "000001.png", "000002.png", "000003.png", "grid.png"]
