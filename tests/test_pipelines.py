"""Latent and text-conditioned diffusers pipelines, end to end on tiny random-weight pipelines built
here (tests/tiny_pipelines.py): Stable Diffusion (prompts, guidance, negative prompt, v-prediction)
and DiT (class labels, learned sigma), through --model; AlignedScheduler inside the unmodified
diffusers pipelines; every error message."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dpm_align.aligner_core.api import SamplingPlan, decode, generate, resolve_plan
from dpm_align.aligner_core.artifacts.artifact import read_artifact
from dpm_align.aligner_core.errors import UsageError
from dpm_align.aligner_core.models.loading import load_model
from dpm_align.aligner_core.models.pipelines import prompts_sha256
from dpm_align.aligner_core.sampling.samplers import PerSampleNoise, StepContext, run_sampler
from tests.conftest import GMM_TINY, assert_close_to_scale, assert_one_line, parse_json
from tests.test_cli import one_line_error
from tests.tiny_pipelines import LATENT_SHAPE, tiny_dit_pipeline, tiny_latent_pipeline, tiny_sd_pipeline, tiny_sdxl_pipeline

pytest.importorskip("transformers")

# the tiniest fit: golden search, 2 evaluations per step on 4 noises, no verdict
TINY_FIT = ("--nfe", "3", "--preset", "golden", "--iterations", "2", "--num-samples", "4", "--device", "cpu",
            "--quiet", "--no-validate", "--keep-worse")
PROMPTS = ["a cat", "a dog."]


@pytest.fixture(scope="session")
def sd_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sd") / "sd"
    tiny_sd_pipeline(directory)
    return directory


@pytest.fixture(scope="session")
def sd_v_dir(sd_dir, tmp_path_factory):
    """The same pipeline with a v-prediction scheduler config (as SD 2.x at 768)."""
    directory = tmp_path_factory.mktemp("sd-v") / "sd"
    shutil.copytree(sd_dir, directory)
    config_path = directory / "scheduler" / "scheduler_config.json"
    config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), prediction_type="v_prediction")))
    return directory


@pytest.fixture(scope="session")
def sdxl_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sdxl") / "sdxl"
    tiny_sdxl_pipeline(directory)
    return directory


@pytest.fixture(scope="session")
def dit_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dit") / "dit"
    tiny_dit_pipeline(directory)
    return directory


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n\n")
    return path


def test_sd_align_sample_inspect_eval(cli, sd_dir, prompts_file, tmp_path):
    """align (with a small verdict, in latent space), sample (decoded PNGs), inspect --check, eval."""
    fit = [a for a in TINY_FIT if a != "--no-validate"]
    result = cli("align", "--model", sd_dir, "--prompts", prompts_file, "--guidance-scale", "3", "--validation-samples",
                 "8", "--validation-max-samples", "8", "--validation-reference-nfe", "6", "--json", *fit)
    assert result.exit_code == 0, result.output
    document = parse_json(result)
    artifact = document["artifact"]
    assert artifact["validation"] is not None
    assert artifact["key"].endswith("-nfe3-text-cfg3")
    assert artifact["conditioning"] == {"kind": "text", "num_prompts": 2, "prompts_sha256": prompts_sha256(PROMPTS),
                                        "negative_prompt_sha256": None, "zero_null": False, "guidance_scale": 3.0}
    assert artifact["model"]["format"] == "diffusers-pipeline"
    # other prompts use the same taus (the prompts are not in the key); images are decoded, 16x16 RGB
    out = tmp_path / "png"
    result = cli("sample", "--model", sd_dir, "--prompt", "a bird", "--guidance-scale", "3", "--nfe", "3", "-n", "3",
                 "--out", out, "--json", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    summary = parse_json(result)
    assert summary["aligned"] and summary["key"] == artifact["key"]
    assert summary["prompts"] == ["a bird"] and summary["labels"] == [0, 0, 0]
    from PIL import Image

    image = Image.open(out / "000002.png")
    assert image.size == (16, 16) and image.mode == "RGB"
    path = document["written"][0]
    result = cli("inspect", path, "--check", "--model", sd_dir)
    assert result.exit_code == 0, result.output
    assert "conditioning: text, fitted on 2 prompt(s)" in result.stdout
    result = cli("eval", "--model", sd_dir, "--prompt", "a cat", "--guidance-scale", "3", "--nfe", "3", "-n", "4",
                 "--reference-nfe", "6", "--json", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert parse_json(result)["key"] == artifact["key"]


def test_key_changes_with_the_guidance_scale_not_the_prompts(sd_dir):
    keys = {}
    for scale, prompts in ((1.0, ["a cat"]), (1.0, ["a dog", "a cat"]), (7.5, ["a cat"]), (2.0, ["a cat"])):
        model = load_model(sd_dir, prompts=prompts, guidance_scale=scale)
        plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", 3)
        keys.setdefault(scale, set()).add(plan.key(model))
    assert [len(k) for k in keys.values()] == [1, 1, 1]
    assert len(set().union(*keys.values())) == 3
    assert next(iter(keys[7.5])).endswith("-text-cfg7.5")


def test_prompt_i_mod_p_and_guidance_and_negative_prompt(sd_dir):
    """Sample i is conditioned on prompt i mod P; guidance mixes the prompt's and the null row."""
    guided = load_model(sd_dir, prompts=PROMPTS, guidance_scale=4.0)
    negative = load_model(sd_dir, prompts=PROMPTS, guidance_scale=4.0, negative_prompt="a dog.")
    labels = guided.eps.conditioning.per_sample_labels(0, range(5))
    assert labels.tolist() == [0, 1, 0, 1, 0]
    x = torch.randn(5, *LATENT_SHAPE, generator=torch.Generator().manual_seed(0))
    net, t = guided.eps.net, torch.full((5,), 500.0)  # eps-prediction: the raw network output is eps
    cond, null = net(x, t, labels), net(x, t, torch.full((5,), 2))  # the prompt rows, the null row (empty prompt)
    assert torch.allclose(guided.eps.bind(labels)(x, 500.0), null + 4.0 * (cond - null), atol=1e-4)
    # the negative prompt "a dog." as the null condition: sample 1 (prompt "a dog.") has no guidance left
    assert torch.allclose(negative.eps.bind(labels)(x, 500.0)[1:2], cond[1:2], atol=1e-4)
    assert not torch.allclose(guided.eps.bind(labels)(x, 500.0)[1:2], cond[1:2], atol=1e-4)
    assert negative.eps.conditioning.negative_prompt_sha256 == prompts_sha256(["a dog."])
    assert negative.info.sha256 == guided.info.sha256  # the prompts are not part of the model's sha256


def test_v_prediction_comes_from_the_scheduler_config(sd_v_dir):
    model = load_model(sd_v_dir, prompts=["a cat"])
    assert model.info.prediction_type == "v_prediction" and model.eps.prediction_type == "v_prediction"


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_aligned_scheduler_in_an_unmodified_stable_diffusion_pipeline(sd_dir, sd_v_dir, prediction, tmp_path):
    from diffusers import StableDiffusionPipeline

    from dpm_align.aligner_core.artifacts.artifact import write_artifact
    from dpm_align.aligner_core.sampling.diffusers_scheduler import AlignedScheduler

    directory = sd_dir if prediction == "epsilon" else sd_v_dir
    model = load_model(directory, prompts=PROMPTS, guidance_scale=3.0)
    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", 3)
    artifact = shifted_artifact(model, plan)
    write_artifact(artifact, tmp_path / "taus.json")
    (batch,) = generate(model, plan, artifact.taus, num_samples=4, batch_size=4, seed=0)
    pipe = StableDiffusionPipeline.from_pretrained(str(directory), local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = AlignedScheduler.from_artifact(tmp_path / "taus.json", unet=pipe.unet)
    x_T = PerSampleNoise(0, range(4), model.sample_shape, "cpu")().float()
    latents = pipe(prompt=[PROMPTS[i % 2] for i in range(4)], latents=x_T, guidance_scale=3.0, output_type="latent",
                   num_inference_steps=pipe.scheduler.num_inference_steps).images
    assert_close_to_scale(batch.samples, latents, tol=1e-4)


def test_dit_class_labels_end_to_end(cli, dit_dir, tmp_path):
    result = cli("align", "--model", dit_dir, "--guidance-scale", "2", "--json", *TINY_FIT)
    assert result.exit_code == 0, result.output
    key = parse_json(result)["artifact"]["key"]
    assert key.endswith("-class-cfg2-null1000")
    out = tmp_path / "latents"
    result = cli("sample", "--model", dit_dir, "--guidance-scale", "2", "--nfe", "3", "-n", "3", "--class-label", "7",
                 "--class-label", "999", "--format", "latents", "--out", out, "--json", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    summary = parse_json(result)
    assert summary["key"] == key and summary["labels"] == [7, 999, 7] and summary["grid"] is None
    stored = np.load(out / "latents.npz")
    assert stored["latents"].shape == (3, *LATENT_SHAPE) and stored["latents"].dtype == np.float32
    assert stored["labels"].tolist() == [7, 999, 7]
    result = cli("inspect", parse_json(result)["taus_file"], "--check", "--model", dit_dir, "--guidance-scale", "2")
    assert result.exit_code == 0, result.output
    assert "conditioning: class labels 0..999 (guidance w=2, null class 1000)" in result.stdout


def test_latents_are_written_as_made_and_a_rerun_completes_them(cli, dit_dir, tmp_path):
    """--format latents goes through sample_dir: one .npy per sample (resumable), then latents.npz."""
    out = tmp_path / "latents"
    args = ("sample", "--model", dit_dir, "--no-taus", "--nfe", "2", "-n", "3", "--batch-size", "1", "--format",
            "latents", "--out", out, "--json", "--quiet", "--device", "cpu")
    assert cli(*args).exit_code == 0
    first = (out / "latents.npz").read_bytes()
    (out / "000001.npy").unlink()
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert parse_json(result)["already_present"] == 2 and (out / "latents.npz").read_bytes() == first
    assert np.load(out / "latents.npz")["latents"].shape == (3, *LATENT_SHAPE)


def test_eval_feature_distance_on_decoded_images(cli, dit_dir, tmp_path):
    """eval's feature distance takes a latent pipeline's end points decoded (3 x 16 x 16 here), and
    the real images at that shape; the trajectory gap stays in latent space."""
    from tests.test_features import StandInFeatures

    torch.jit.save(torch.jit.script(StandInFeatures()), tmp_path / "features.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "real.npz", images=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8))
    artifact = tmp_path / "taus.json"
    assert cli("align", "--model", dit_dir, "--no-cache", "--out", artifact, *TINY_FIT).exit_code == 0
    result = cli("eval", "--model", dit_dir, "--taus", artifact, "-n", "8", "--reference-nfe", "6", "--feature-net",
                 tmp_path / "features.pt", "--data", tmp_path / "real.npz", "--json", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = parse_json(result)
    assert report["features"]["num_samples"] == 8 and report["features"]["reference_samples"] == 12
    assert np.isfinite(report["features"]["baseline"]) and np.isfinite(report["end_gap_baseline"])


def test_aligned_scheduler_in_an_unmodified_dit_pipeline(dit_dir):
    """DiTPipeline draws its own latents (randn with the generator) and decodes them: the same
    latents through dpm-align's sampler and the VAE give the same images."""
    from diffusers import DiTPipeline

    from dpm_align.aligner_core.sampling.diffusers_scheduler import AlignedScheduler

    model = load_model(dit_dir, guidance_scale=2.0)
    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", 3)
    artifact = shifted_artifact(model, plan)
    pipe = DiTPipeline.from_pretrained(str(dit_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = AlignedScheduler.from_artifact(artifact, unet=pipe.transformer)
    labels = [3, 998]
    images = pipe(class_labels=labels, guidance_scale=2.0, generator=torch.Generator().manual_seed(5),
                  num_inference_steps=3, output_type="pt").images
    x_T = torch.randn((2, *LATENT_SHAPE), generator=torch.Generator().manual_seed(5))
    ours = run_sampler("ddim", model.eps.bind(torch.tensor(labels)), x_T.double(), plan.grid, artifact.taus,
                       StepContext(model.eps.schedule, 0.0))
    assert_close_to_scale(decode(model, ours) / 2 + 0.5, images, tol=1e-4)


def shifted_artifact(model, plan):
    """An artifact for ``plan`` with taus moved off the grid (so that they matter)."""
    from dpm_align.aligner_core.api import align
    from dpm_align.aligner_core.fitting.fit import resolve_config

    artifact = align(model, plan, resolve_config("golden", iterations=2, num_samples=4))
    return artifact.model_copy(update={"taus": [t - 5.0 * (i + 1) for i, t in enumerate(artifact.taus)]})


def test_dit_saved_as_transformer2dmodel_loads_with_the_same_sha256(dit_dir, tmp_path):
    """facebook/DiT-XL-2-256 names its transformer Transformer2DModel (the legacy class)."""
    legacy = tmp_path / "dit"
    shutil.copytree(dit_dir, legacy)
    config_path = legacy / "transformer" / "config.json"
    config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), _class_name="Transformer2DModel")))
    assert load_model(legacy).info.sha256 == load_model(dit_dir).info.sha256


def test_learned_sigma_returns_the_first_c_channels(dit_dir):
    model = load_model(dit_dir)
    x = torch.randn(2, *LATENT_SHAPE)
    out = model.eps.net.unet(x, timestep=torch.tensor([400.0, 400.0]), class_labels=torch.tensor([1, 2])).sample
    assert out.shape[1] == 8
    assert torch.allclose(model.eps.bind(torch.tensor([1, 2]))(x, 400.0), out[:, :4], atol=1e-6)
    assert model.eps.conditioning.num_class_embeds == 1001


# ---------------------------------------------------------------- errors, one line each


def test_prompts_for_a_model_that_is_not_text_conditioned(cli, tmp_path):
    result = cli("sample", "--model", GMM_TINY, "--prompt", "a cat", "--nfe", "2", "--no-taus", "--out", tmp_path / "s")
    one_line_error(result, 2, "is not text-conditioned; drop --prompt, --prompts and --negative-prompt")


def test_text_model_without_prompts(cli, sd_dir, tmp_path):
    result = cli("sample", "--model", sd_dir, "--nfe", "2", "--no-taus", "--out", tmp_path / "s")
    one_line_error(result, 2, "is text-conditioned; pass --prompt TEXT (repeatable) or --prompts FILE")


@pytest.mark.parametrize("pipeline,folder,kind", [
    ("sd_dir", "tokenizer", "a text-conditioned UNet"), ("sd_dir", "text_encoder", "a text-conditioned UNet"),
    ("sdxl_dir", "tokenizer_2", "an SDXL UNet"), ("sdxl_dir", "text_encoder_2", "an SDXL UNet")])
def test_missing_tokenizer_or_text_encoder(request, pipeline, folder, kind, tmp_path):
    broken = tmp_path / f"no-{folder}"
    shutil.copytree(request.getfixturevalue(pipeline), broken)
    shutil.rmtree(broken / folder)
    with pytest.raises(UsageError) as excinfo:
        load_model(broken, prompts=["a cat"])
    assert_one_line(excinfo, f"has {kind} but no {folder}/", "copy the whole pipeline directory")


def test_other_extra_conditioning_is_refused(sd_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(sd_dir, other)
    config_path = other / "unet" / "config.json"
    config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), addition_embed_type="text_image")))
    with pytest.raises(UsageError) as excinfo:
        load_model(other, prompts=["a cat"])
    assert_one_line(excinfo, "uses addition_embed_type 'text_image' (extra conditioning)", "SDXL's")


def test_an_sdxl_refiner_is_refused(sdxl_dir, tmp_path):
    refiner = tmp_path / "refiner"  # 5 features per size id: 5 x 6 + 8 = 38 inputs where the UNet has 32
    shutil.copytree(sdxl_dir, refiner)
    config_path = refiner / "unet" / "config.json"
    config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), addition_time_embed_dim=5)))
    with pytest.raises(UsageError) as excinfo:
        load_model(refiner, prompts=["a cat"])
    assert_one_line(excinfo, "expects 32 added conditioning features, not the 38", "SDXL base pipelines")


@pytest.mark.parametrize("negative", [None, "a dog."])
def test_aligned_scheduler_in_an_unmodified_sdxl_pipeline(sdxl_dir, negative, tmp_path):
    """Both text encoders, the pooled embedding and the size ids as StableDiffusionXLPipeline makes
    them; without a negative prompt the null condition is zero (force_zeros_for_empty_prompt)."""
    from diffusers import StableDiffusionXLPipeline

    from dpm_align.aligner_core.artifacts.artifact import write_artifact
    from dpm_align.aligner_core.sampling.diffusers_scheduler import AlignedScheduler

    model = load_model(sdxl_dir, prompts=PROMPTS, guidance_scale=3.0, negative_prompt=negative)
    assert model.eps.net.time_ids.tolist() == [16, 16, 0, 0, 16, 16]
    assert (model.eps.net.pooled[-1] == 0).all() == (negative is None) == model.eps.conditioning.zero_null
    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", 3)
    artifact = shifted_artifact(model, plan)
    write_artifact(artifact, tmp_path / "taus.json")
    (batch,) = generate(model, plan, artifact.taus, num_samples=4, batch_size=4, seed=0)
    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = AlignedScheduler.from_artifact(tmp_path / "taus.json", unet=pipe.unet)
    x_T = PerSampleNoise(0, range(4), model.sample_shape, "cpu")().float()
    latents = pipe(prompt=[PROMPTS[i % 2] for i in range(4)], latents=x_T, guidance_scale=3.0, output_type="latent",
                   negative_prompt=None if negative is None else [negative] * 4,
                   num_inference_steps=pipe.scheduler.num_inference_steps).images
    assert_close_to_scale(batch.samples, latents, tol=1e-4)


def test_sdxl_align_sample_inspect(cli, sdxl_dir, tmp_path):
    out = tmp_path / "taus.json"
    result = cli("align", "--model", sdxl_dir, "--prompt", "a cat", "--guidance-scale", "5", "--out", out, "--no-cache",
                 *TINY_FIT)
    assert result.exit_code == 0, result.output
    assert read_artifact(out).key.endswith("-nfe3-text-cfg5")
    assert read_artifact(out).conditioning.zero_null  # force_zeros_for_empty_prompt, no negative prompt
    result = cli("sample", "--model", sdxl_dir, "--prompt", "a bird", "--guidance-scale", "5", "--nfe", "3", "-n", "2",
                 "--taus", out, "--out", tmp_path / "png", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    from PIL import Image

    assert Image.open(tmp_path / "png" / "000001.png").size == (16, 16)
    result = cli("inspect", out, "--check", "--model", sdxl_dir)
    assert result.exit_code == 0, result.output
    assert "null condition zeros (force_zeros_for_empty_prompt)" in cli("inspect", out).output


def test_empty_prompts_file(cli, sd_dir, tmp_path):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    result = cli("align", "--model", sd_dir, "--prompts", empty, *TINY_FIT)
    one_line_error(result, 2, "holds no prompt (it is empty or blank); write one prompt per line")
    result = cli("align", "--model", sd_dir, "--prompts", tmp_path / "missing.txt", *TINY_FIT)
    one_line_error(result, 2, "does not exist; pass a text file with one prompt per line")


def test_text_conditioning_option_errors(sd_dir):
    with pytest.raises(UsageError) as excinfo:
        load_model(sd_dir, prompts=["a cat"], negative_prompt="blurry")
    assert_one_line(excinfo, "--negative-prompt replaces the empty prompt", "--guidance-scale")
    with pytest.raises(UsageError) as excinfo:
        load_model(sd_dir, prompts=["a cat"], null_class=3)
    assert_one_line(excinfo, "--null-class is for class-conditional models")
    with pytest.raises(UsageError) as excinfo:
        load_model(sd_dir, prompts=["a cat"], guidance_scale=-1)
    assert_one_line(excinfo, "--guidance-scale -1 is negative")


def test_latent_only_options(cli, sd_dir, tmp_path):
    result = cli("sample", "--model", GMM_TINY, "--nfe", "2", "--no-taus", "--format", "latents", "--out", tmp_path / "s")
    one_line_error(result, 2, "--format latents is for latent pipelines")
    result = cli("align", "--model", sd_dir, "--prompt", "a cat", "--strategy", "parallel", "--data", "digits", *TINY_FIT)
    one_line_error(result, 2, "the parallel strategy needs each data image's condition (class label or prompt)")
    model = load_model(sd_dir, prompts=["a cat"])
    plan, _, _ = resolve_plan(model, sampler=None, eta=None, trajectory=None, nfe=3, use_taus=False)
    with pytest.raises(UsageError) as excinfo:
        list(generate(model, plan, None, num_samples=1, class_labels=[1]))
    assert_one_line(excinfo, "--class-label was given but the model is not class-conditional")


def test_loading_prints_no_accelerate_advice(cli, dit_dir, capfd):
    result = cli("inspect", "--help")
    assert result.exit_code == 0
    load_model(dit_dir)
    captured = capfd.readouterr()
    assert "accelerate" not in captured.err and "low_cpu_mem_usage" not in captured.err


def test_analytic_gammas_are_cached_per_prompts(sd_dir, isolated_cache, monkeypatch):
    """Gamma_t depends on the prompts (the artifact key does not): one cache file per prompt set."""
    from dpm_align.aligner_core.sampling import gamma_cache
    from dpm_align.aligner_core.sampling.analytic import GammaTable
    from dpm_align.aligner_core.sampling.gamma_cache import cached_gammas

    monkeypatch.setattr(gamma_cache, "estimate_gammas", lambda eps, times, *a, **k: GammaTable(
        times=list(times), gammas=[1.0] * len(times), source="generated", num_samples=1))
    for prompts in (["a cat"], ["a dog"], ["a dog"]):
        model = load_model(sd_dir, prompts=prompts)
        cached_gammas(model.eps, model.info.sha256, [999.0, 500.0], model.sample_shape)
    names = sorted(path.name for path in (isolated_cache / "gammas").iterdir())
    assert len(names) == 2 and all("-text-prompts" in name for name in names)


def test_torchrun_latents_equal_one_process(cli, dit_dir, tmp_path):
    """Two gloo ranks share the latent samples (each writes its own .npy files) and rank 0 gathers
    latents.npz: the same bytes per sample as one process."""
    from tests.test_batch_generation import torchrun

    args = ("sample", "--model", dit_dir, "--no-taus", "--nfe", "2", "-n", "5", "--batch-size", "2", "--format",
            "latents", "--json", "--quiet", "--device", "cpu")
    one = cli(*args, "--out", tmp_path / "one")
    assert one.exit_code == 0, one.output
    two = torchrun(*args, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads(two.stdout)["world_size"] == 2
    files = sorted(p.name for p in (tmp_path / "one").glob("*.npy"))
    assert len(files) == 5 and files == sorted(p.name for p in (tmp_path / "two").glob("*.npy"))
    assert all((tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes() for f in files)
    assert np.array_equal(np.load(tmp_path / "one" / "latents.npz")["latents"],
                          np.load(tmp_path / "two" / "latents.npz")["latents"])


@pytest.fixture(scope="session")
def latent_dir(tmp_path_factory):
    return tiny_latent_pipeline(tmp_path_factory.mktemp("latent"))


def test_data_of_a_latent_pipeline_goes_through_the_vae_encoder(cli, latent_dir, monkeypatch, tmp_path):
    """--data (Eq. 8's x_0) of a latent pipeline is encoded: the mean of the VAE's posterior times the
    scaling factor, at the latents' shape; the parallel fit runs on it end to end."""
    from dpm_align.aligner_core import api
    from dpm_align.aligner_core.data import load_data
    from dpm_align.aligner_core.fitting.fit import resolve_config

    model = load_model(latent_dir)
    seen = {}
    real_fit = api.fit_taus

    def spy(*args, data=None, **kwargs):
        seen["data"] = data
        return real_fit(*args, data=data, **kwargs)

    monkeypatch.setattr(api, "fit_taus", spy)
    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", 3)
    api.align(model, plan, resolve_config("golden", "parallel", iterations=2, num_samples=4), data="digits")
    images = load_data("digits", (3, 16, 16))
    expected = model.decoder.encode(images)
    assert seen["data"].shape == (images.shape[0], *LATENT_SHAPE) and torch.equal(seen["data"], expected)
    posterior = model.decoder.vae.encode(images[:4]).latent_dist
    assert torch.allclose(expected[:4], posterior.mean * model.decoder.scaling_factor)
    result = cli("align", "--model", latent_dir, "--strategy", "parallel", "--data", "digits", *TINY_FIT,
                 "--out", tmp_path / "t.json", "--json")
    assert result.exit_code == 0, result.output
    assert parse_json(result)["artifact"]["fit"]["strategy"] == "parallel"


def test_attention_runs_on_pytorch_sdpa(sd_dir):
    """The README says attention is diffusers' default, PyTorch's scaled_dot_product_attention."""
    net = load_model(sd_dir, prompts=["a cat"]).eps.net
    processors = {type(m.processor).__name__ for m in net.modules() if hasattr(m, "processor")}
    assert processors == {"AttnProcessor2_0"}
