"""Using the taus elsewhere: ``AlignedScheduler`` in an unmodified diffusers ``DDPMPipeline``, and
the ``inspect --format`` exports.

Everything runs offline on a tiny random-init ``UNet2DModel`` (8x8, one channel). The reference is
always our own sampler (``run_sampler``, what ``dpm-align sample`` runs) from the same x_T.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from dpm_align.aligner_core.api import SamplingPlan, align, generate
from dpm_align.aligner_core.artifacts.artifact import TauArtifact, artifact_key, write_artifact
from dpm_align.aligner_core.sampling.diffusers_scheduler import AlignedScheduler
from dpm_align.aligner_core.errors import UsageError
from dpm_align.aligner_core.artifacts.exports import EXPORT_FORMATS, export_schedule
from dpm_align.aligner_core.fitting.fit import resolve_config
from dpm_align.aligner_core.models.loading import load_model
from dpm_align.aligner_core.models.model import EpsModel
from dpm_align.aligner_core.sampling.samplers import PerSampleNoise, StepContext, run_sampler
from tests.conftest import assert_close_to_scale, assert_one_line, tiny_unet

T = 1000
K = 4
SHAPE = (2, 1, 8, 8)
# fractional, one value repeated (the scheduler must count steps, not look taus up)
HAND_TAUS = [990.37, 740.61, 740.61, 251.2]


# ----------------------------------------------------------------------------- helpers
def variant(artifact: TauArtifact, *, taus=None, sampler=None, eta=None, prediction_type=None) -> TauArtifact:
    """A validated copy of ``artifact`` with other taus / sampler / prediction type (key recomputed)."""
    data = artifact.model_dump(mode="json")
    if taus is not None:
        data["taus"] = list(taus)
    if sampler is not None:
        data["sampler"] = {"name": sampler, "eta": eta}
    if prediction_type is not None:
        data["model"]["prediction_type"] = prediction_type
    label = getattr(artifact.trajectory, "label", artifact.trajectory.kind)  # kind (+ rho for edm)
    data["key"] = artifact_key(data["model"]["sha256"], data["sampler"]["name"], data["sampler"]["eta"],
                               label, data["trajectory"]["nfe"])
    return TauArtifact.model_validate(data)


def to_pipeline_images(x: torch.Tensor):
    """What DDPMPipeline does to its final state with output_type='np'."""
    return (x.to(torch.float32) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def pipeline_loop(unet: UNet2DModel, scheduler, x: torch.Tensor, generator=None) -> torch.Tensor:
    """DDPMPipeline.__call__'s loop, on a given x_T, without the final clamp."""
    scheduler.set_timesteps(K)
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x, generator=generator).prev_sample
    return x


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "pipe"
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=T)).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def model(pipe_dir):
    return load_model(pipe_dir)


@pytest.fixture(scope="module")
def fitted(model) -> TauArtifact:
    """Taus fitted through the core API (ddim, uniform, 4 steps; a quick fit)."""
    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", K)
    return align(model, plan, resolve_config("golden", iterations=3, num_samples=8))


@pytest.fixture(scope="module")
def hand(fitted) -> TauArtifact:
    return variant(fitted, taus=HAND_TAUS)


@pytest.fixture(scope="module")
def pipe(pipe_dir) -> DDPMPipeline:
    """One pipeline for the module: every test that runs it sets its own scheduler first."""
    pipe = DDPMPipeline.from_pretrained(str(pipe_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference(model, artifact: TauArtifact, x_T: torch.Tensor, eps=None, noise=None) -> torch.Tensor:
    ctx = StepContext(model.eps.schedule, artifact.sampler.eta, noise)
    with torch.no_grad():
        return run_sampler(artifact.sampler.name, eps or model.eps, x_T, artifact.trajectory.timesteps,
                           artifact.taus, ctx)


# ----------------------------------------------------------------------------- (a) the pipeline = our sampler
@pytest.mark.parametrize("which", ["fitted", "hand"])
def test_pipeline_matches_run_sampler(which, request, model, pipe, tmp_path):
    artifact = request.getfixturevalue(which)
    scheduler = AlignedScheduler.from_artifact(artifact, unet=pipe.unet)
    assert scheduler.timesteps.tolist() == pytest.approx(artifact.taus, abs=1e-4)
    assert scheduler.timesteps.dtype == torch.float32
    pipe.scheduler = scheduler
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=K,
                  output_type="np").images
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float32)  # = randn_tensor
    expected = to_pipeline_images(reference(model, artifact, x_T))
    assert images.shape == expected.shape == (2, 8, 8, 1)
    assert abs(images - expected).max() < 1e-5
    # the plain sampler (tau = t) gives different images: the taus are really used
    plain = to_pipeline_images(reference(model, variant(artifact, taus=artifact.trajectory.timesteps[:-1]), x_T))
    assert abs(images - plain).max() > 1e-4

    # the same from the artifact file; the path is recorded in the scheduler config
    path = write_artifact(artifact, tmp_path / "taus.json")
    pipe.scheduler = AlignedScheduler.from_artifact(path)
    assert pipe.scheduler.config.artifact_path == str(path.resolve())
    again = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=K, output_type="np").images
    assert (again == images).all()


def test_scheduler_loop_matches_generate(model, fitted, pipe):
    """`dpm-align sample` (api.generate) and the diffusers loop agree from the same per-sample noise."""
    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", K)
    assert list(plan.grid) == fitted.trajectory.timesteps
    (ours,) = [b.samples for b in generate(model, plan, fitted.taus, num_samples=2, batch_size=2, seed=3)]
    x_T = PerSampleNoise(3, range(2), model.sample_shape)().to(torch.float32)
    with torch.no_grad():
        theirs = pipeline_loop(pipe.unet, AlignedScheduler.from_artifact(fitted), x_T)
    assert theirs.dtype == torch.float32
    assert_close_to_scale(ours, theirs, tol=1e-5)


def test_config_round_trip(fitted, pipe, tmp_path):
    scheduler = AlignedScheduler.from_artifact(fitted)
    scheduler.save_config(str(tmp_path))
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["taus"] == fitted.taus and saved["grid_timesteps"] == fitted.trajectory.timesteps
    assert saved["artifact_key"] == fitted.key and saved["model_sha256"] == fitted.model.sha256
    restored = AlignedScheduler.from_pretrained(str(tmp_path))
    assert restored.taus == scheduler.taus and restored.grid_timesteps == scheduler.grid_timesteps
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(pipeline_loop(pipe.unet, restored, x_T), pipeline_loop(pipe.unet, scheduler, x_T))
    # a whole pipeline saved with the aligned scheduler reloads with it (diffusers imports the class by module path)
    pipe.scheduler = scheduler
    pipe.save_pretrained(str(tmp_path / "aligned-pipe"))
    reloaded = DDPMPipeline.from_pretrained(str(tmp_path / "aligned-pipe"), local_files_only=True)
    assert isinstance(reloaded.scheduler, AlignedScheduler) and reloaded.scheduler.taus == fitted.taus


# ----------------------------------------------------------------------------- (b) prediction types
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_prediction_types_match_eps_model(prediction_type, model, hand, pipe):
    artifact = variant(hand, prediction_type=prediction_type)
    eps = EpsModel(model.eps.net, model.eps.schedule, prediction_type)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = pipeline_loop(pipe.unet, AlignedScheduler.from_artifact(artifact), x_T)
    ours = reference(model, artifact, x_T, eps=eps)
    assert_close_to_scale(ours, theirs, tol=1e-5)
    if prediction_type != "epsilon":  # the conversion is not the identity
        plain = reference(model, artifact, x_T)
        assert float((plain - ours).abs().max()) > 1e-3


# ----------------------------------------------------------------------------- (c) eta = 1
def test_ddpm_artifact_through_pipeline(model, fitted, pipe):
    artifact = variant(fitted, taus=HAND_TAUS, sampler="ddpm", eta=1.0)
    pipe.scheduler = AlignedScheduler.from_artifact(artifact)

    def run(seed: int):
        return pipe(batch_size=2, generator=torch.Generator().manual_seed(seed), num_inference_steps=K,
                    output_type="np").images

    first, second, other = run(0), run(0), run(1)
    assert (first == second).all()
    assert abs(first - other).max() > 1e-3
    # the generator is used as the pipeline uses it: x_T, then one draw per step (float32)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(SHAPE, generator=g, dtype=torch.float32)
    expected = to_pipeline_images(reference(model, artifact, x_T,
                                            noise=lambda: torch.randn(SHAPE, generator=g, dtype=torch.float32)))
    assert abs(first - expected).max() < 1e-5


def test_variance_noise_is_used(model, fitted, pipe):
    artifact = variant(fitted, sampler="ddim", eta=0.5)
    scheduler = AlignedScheduler.from_artifact(artifact)
    noises = [torch.randn(SHAPE, generator=torch.Generator().manual_seed(10 + k)) for k in range(K)]
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    x = x_T
    scheduler.set_timesteps(K)
    with torch.no_grad():
        for k, t in enumerate(scheduler.timesteps):
            x = scheduler.step(pipe.unet(x, t).sample, t, x, variance_noise=noises[k]).prev_sample
    stream = iter(noises)
    assert_close_to_scale(reference(model, artifact, x_T, noise=lambda: next(stream)), x, tol=1e-5)


# ----------------------------------------------------------------------------- (d) errors
def test_wrong_step_count_is_refused(fitted, pipe):
    scheduler = AlignedScheduler.from_artifact(fitted)
    with pytest.raises(ValueError) as excinfo:
        scheduler.set_timesteps(10)
    assert_one_line(excinfo, f"fitted for {K} steps", f"num_inference_steps={K}")
    scheduler.set_timesteps()  # None: the artifact's count
    scheduler.set_timesteps(K, device="cpu")
    pipe.scheduler = scheduler
    with pytest.raises(ValueError) as excinfo:
        pipe(batch_size=1, output_type="np")  # DDPMPipeline's default is 1000 steps
    assert_one_line(excinfo, f"fitted for {K} steps")


def test_unsupported_sampler_is_refused(fitted):
    with pytest.raises(ValueError) as excinfo:
        AlignedScheduler.from_artifact(variant(fitted, sampler="heun", eta=0.0))
    assert_one_line(excinfo, "heun", "ddim")


def test_other_network_is_refused(fitted):
    with pytest.raises(ValueError) as excinfo:
        AlignedScheduler.from_artifact(fitted, unet=tiny_unet(seed=1))
    assert_one_line(excinfo, "another network")


def test_missing_artifact_file(tmp_path):
    with pytest.raises(UsageError) as excinfo:
        AlignedScheduler.from_artifact(tmp_path / "nope.json")
    assert_one_line(excinfo, "does not exist")


def test_step_misuse(hand):
    scheduler = AlignedScheduler.from_artifact(hand)
    x = torch.zeros(SHAPE)
    scheduler.set_timesteps(K)
    with pytest.raises(ValueError) as excinfo:  # not the current tau
        scheduler.step(x, 500, x)
    assert_one_line(excinfo, "expects timestep")
    for t in scheduler.timesteps:  # repeated tau values are fine
        scheduler.step(x, t, x)
    with pytest.raises(ValueError) as excinfo:  # a K+1-th step without set_timesteps
        scheduler.step(x, scheduler.timesteps[-1], x)
    assert_one_line(excinfo, "set_timesteps")
    scheduler.set_timesteps(K)
    assert scheduler.step_index == 0


def test_dtype_is_kept_and_interface(hand):
    scheduler = AlignedScheduler.from_artifact(hand)
    assert scheduler.init_noise_sigma == 1.0 and scheduler.order == 1 and len(scheduler) == T
    x = torch.randn(SHAPE, dtype=torch.float16)
    assert scheduler.scale_model_input(x, scheduler.timesteps[0]) is x
    scheduler.set_timesteps(K)
    out = scheduler.step(x, scheduler.timesteps[0], x)
    assert out.prev_sample.dtype == torch.float16 and out.pred_original_sample.dtype == torch.float16
    prev, x0 = scheduler.step(x, scheduler.timesteps[1], x, return_dict=False)
    assert prev.shape == x0.shape == SHAPE


# ----------------------------------------------------------------------------- (e) exports
def test_export_json(hand):
    data = export_schedule(hand, "json")
    assert TauArtifact.model_validate(data) == hand
    json.dumps(data)


def test_export_diffusers(hand):
    data = export_schedule(hand, "diffusers")
    json.dumps(data)
    assert data["timesteps"] == [990, 741, 741, 251]
    assert all(isinstance(t, int) for t in data["timesteps"])
    assert data["grid_timesteps"] == hand.trajectory.timesteps
    assert data["max_rounding_error"] == pytest.approx(0.39)
    assert "lose the fractional taus" in data["note"] and "max rounding error 0.39" in data["note"]
    assert data["num_inference_steps"] == K


def test_export_sigmas(hand):
    data = export_schedule(hand, "sigmas")
    json.dumps(data)
    sigmas = data["sigmas"]
    assert len(sigmas) == K + 2 and sigmas[-1] == 0.0
    assert all(a > b for a, b in zip(sigmas, sigmas[1:]))
    assert sigmas[-2] == pytest.approx(0.01, rel=1e-3)  # t_0 = 0 of the DDPM linear schedule
    assert sigmas[0] == pytest.approx(hand.trajectory.sigmas[0] / hand.trajectory.alphas[0])
    assert len(data["tau_sigmas"]) == K
    assert data["tau_sigmas"][1] == data["tau_sigmas"][2]
    # between the sigmas of the grid points around each tau (HAND_TAUS lie within the grid's range)
    assert sigmas[1] < data["tau_sigmas"][0] < sigmas[0]
    assert "k-diffusion" in data["note"] and "0.01" in data["note"]


def test_export_unknown_format(hand):
    assert EXPORT_FORMATS == ("json", "diffusers", "sigmas")
    with pytest.raises(UsageError) as excinfo:
        export_schedule(hand, "onnx")
    assert_one_line(excinfo, "onnx", "json, diffusers, sigmas")
