"""Shared fixtures: tiny models the tests make themselves, an isolated cache, a CLI runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dpm_align.aligner_core.models.gmm import GaussianMixture, GMMEpsNet
from dpm_align.aligner_core.models.loading import CheckpointConfig, save_checkpoint
from dpm_align.aligner_core.models.model import EpsModel
from dpm_align.aligner_core.models.nets import TinyUNet
from dpm_align.aligner_core.sampling.schedule import NoiseSchedule, ScheduleSpec
from dpm_align.cli.main import app

torch.set_num_threads(2)

TINY_SHAPE = (1, 8, 8)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("DPM_ALIGN_CACHE_DIR", str(cache))
    return cache


def make_tiny_checkpoint(directory: Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """A random-init TinyUNet on 1x8x8 in the project's checkpoint format; returns the weights path."""
    torch.manual_seed(seed)
    net = TinyUNet(in_channels=1, channels=(8, 16, 16), groups=4)
    config = CheckpointConfig(
        architecture="tiny-unet",
        arch_config={"in_channels": 1, "channels": [8, 16, 16], "groups": 4},
        prediction_type=prediction_type,
        schedule=ScheduleSpec(),
        sample_shape=TINY_SHAPE,
    )
    weights = directory / "tiny.safetensors"
    save_checkpoint(net, config, weights)
    return weights


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def gmm_eps():
    """Exact eps model of a 64-dimensional Gaussian mixture, linear DDPM schedule (T=1000)."""
    schedule = NoiseSchedule(ScheduleSpec())
    mixture = GaussianMixture.random(8, 64, seed=0)
    return EpsModel(GMMEpsNet(mixture, schedule), schedule, "epsilon", dtype=torch.float64)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cli(runner):
    """cli(*args) -> Result of `dpm-align args...` run in-process."""

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


def parse_json(result) -> dict:
    return json.loads(result.stdout)


def assert_close_to_scale(ours: torch.Tensor, theirs: torch.Tensor, tol: float = 1e-4) -> None:
    """|ours - theirs| <= tol * max(1, max|theirs|): float64 state vs diffusers' float32 state."""
    theirs = theirs.to(torch.float64)
    scale = max(1.0, float(theirs.abs().max()))
    err = float((ours.to(torch.float64) - theirs).abs().max())
    assert err <= tol * scale, f"max abs diff {err:.3g} > {tol:g} * scale {scale:.3g}"


def assert_one_line(excinfo: pytest.ExceptionInfo, *needles: str) -> None:
    """The exception's message is one line and contains every needle."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


def tiny_unet(seed: int = 0):
    """A random-init diffusers UNet2DModel on 1x8x8 (imported lazily: diffusers is slow to import)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval().requires_grad_(False)


GMM_TINY = "gmm:dim=16,components=3"  # an exact model that loads and samples in milliseconds


@pytest.fixture(scope="session")
def gmm_artifact(tmp_path_factory) -> dict:
    """A valid artifact for GMM_TINY (ddim, uniform, NFE 4, the taus alone, a small verdict kept
    whatever it says) as JSON values: the base that the reliability and fuzz tests mutate."""
    out = tmp_path_factory.mktemp("gmm-artifact") / "taus.json"
    result = CliRunner().invoke(app, ["align", "--model", GMM_TINY, "--nfe", "4", "--candidates", "taus", "--iterations",
                                      "3", "--num-samples", "8", "--validation-samples", "8", "--validation-max-samples",
                                      "8", "--validation-reference-nfe", "10", "--keep-worse", "--no-cache", "--out",
                                      str(out), "--device", "cpu", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())
