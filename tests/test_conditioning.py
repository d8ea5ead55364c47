"""Class-conditional models and classifier-free guidance: exact checks on the conditional Gaussian
mixture (label k = component k, label K = the whole mixture), a tiny class-conditional diffusers
UNet end to end, the artifact key, and every error message."""

import json

import numpy as np
import pytest
import torch

from dpm_align.aligner_core.api import SamplingPlan, align, generate
from dpm_align.aligner_core.artifacts.artifact import read_artifact
from dpm_align.aligner_core.errors import UsageError
from dpm_align.aligner_core.fitting.fit import fit_taus, resolve_config
from dpm_align.aligner_core.models.loading import load_model
from dpm_align.aligner_core.models.model import Conditioning
from tests.conftest import assert_one_line, parse_json
from tests.test_cli import FAST, one_line_error

GMM = "gmm:dim=16,components=3,seed=0,classes=1"  # labels 0, 1, 2 = components; 3 = the mixture


def test_guided_eps_is_null_plus_w_times_difference():
    plain = load_model(GMM)
    guided = load_model(GMM, guidance_scale=2.5)
    assert guided.eps.conditioning == Conditioning(num_class_embeds=4, null_class=3, guidance_scale=2.5)
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0, 1])
    cond, null = plain.eps(x, 400.0, labels), plain.eps(x, 400.0, torch.full((5,), 3))
    assert torch.allclose(guided.eps.bind(labels)(x, 400.0), null + 2.5 * (cond - null), atol=1e-12)
    assert not torch.allclose(cond, null)


def test_labels_reach_each_sample():
    """DDIM-50 on the conditional mixture: every sample ends at the component its label names."""
    model = load_model(GMM, null_class=3)
    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", 50)
    (batch,) = list(generate(model, plan, None, num_samples=6, batch_size=6, seed=1, class_labels=[2, 0, 1]))
    assert batch.labels.tolist() == [2, 0, 1, 2, 0, 1]
    means = model.eps.net.means  # [K, D]
    nearest = torch.cdist(batch.samples.flatten(1), means).argmin(1)
    assert nearest.tolist() == batch.labels.tolist()


def test_random_labels_depend_on_seed_and_index_only():
    model = load_model(GMM, guidance_scale=3.0)
    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", 4)
    one = list(generate(model, plan, None, num_samples=7, batch_size=7, seed=5))
    many = list(generate(model, plan, None, num_samples=7, batch_size=3, seed=5))
    assert torch.cat([b.labels for b in many]).tolist() == one[0].labels.tolist()
    assert set(one[0].labels.tolist()) <= {0, 1, 2}  # never the null class
    assert torch.allclose(torch.cat([b.samples for b in many]), one[0].samples)


def test_fit_on_a_guided_model_lowers_the_loss_and_key_names_the_guidance():
    model = load_model(GMM, guidance_scale=2.0)
    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "quadratic", 5)
    artifact = align(model, plan, resolve_config("golden", num_samples=32))
    assert artifact.key.endswith("-nfe5-class-cfg2-null3")
    assert artifact.conditioning == model.eps.conditioning
    tuned = [(b, a) for b, a in zip(artifact.fit.loss_before, artifact.fit.loss_after) if b is not None]
    assert all(a <= b for b, a in tuned) and any(a < b for b, a in tuned)


def test_cli_align_then_sample_finds_the_guided_taus(cli, tmp_path):
    result = cli("align", "--model", GMM, "--nfe", "4", "--guidance-scale", "2", "--json", *FAST)
    assert result.exit_code == 0, result.output
    key = parse_json(result)["artifact"]["key"]
    assert key.endswith("class-cfg2-null3")
    out = tmp_path / "s"
    result = cli("sample", "--model", GMM, "--nfe", "4", "--guidance-scale", "2", "-n", "5", "--class-label", "1",
                 "--class-label", "2", "--out", out, "--format", "npz", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    summary = parse_json(result)
    assert summary["aligned"] and summary["key"] == key and summary["labels"] == [1, 2, 1, 2, 1]
    assert summary["guidance_scale"] == 2.0
    assert np.load(out / "samples.npz")["arr_1"].tolist() == [1, 2, 1, 2, 1]
    png = tmp_path / "png"
    result = cli("sample", "--model", GMM, "--nfe", "4", "--guidance-scale", "2", "-n", "2", "--out", png, "--quiet")
    assert result.exit_code == 0, result.output
    assert set(json.loads((png / "labels.json").read_text())) == {"000000.png", "000001.png"}


def test_taus_for_another_guidance_are_refused(cli, tmp_path):
    taus = tmp_path / "cfg2.json"
    assert cli("align", "--model", GMM, "--nfe", "4", "--guidance-scale", "2", "--out", taus, *FAST).exit_code == 0
    one_line_error(cli("sample", "--model", GMM, "--nfe", "4", "--guidance-scale", "3", "--out", tmp_path / "s"),
                   1, "no taus in the cache for")
    one_line_error(cli("sample", "--model", GMM, "--guidance-scale", "3", "--taus", taus, "--out", tmp_path / "s"),
                   1, "conditioning class-cfg2-null3 != class-cfg3-null3")
    one_line_error(cli("sample", "--model", GMM, "--taus", taus, "--out", tmp_path / "s"),
                   1, "conditioning class-cfg2-null3 != class")


def test_unconditional_artifacts_have_no_conditioning(tmp_path):
    artifact = align(load_model("gmm:dim=16,components=3"), SamplingPlan.make(
        load_model("gmm:dim=16,components=3").eps.schedule, "ddim", None, "uniform", 3),
        resolve_config("default", iterations=3, num_samples=8))
    assert artifact.conditioning is None and artifact.key.endswith("-nfe3")


@pytest.mark.parametrize("model,options,fragment", [
    ("gmm:dim=16", ("--guidance-scale", "2"), "is not class-conditional; drop --guidance-scale"),
    ("gmm:dim=16", ("--null-class", "0"), "is not class-conditional; drop --guidance-scale and --null-class"),
    (GMM, ("--null-class", "9"), "--null-class 9 is not a label of gmm:"),
    (GMM, ("--guidance-scale", "-1"), "--guidance-scale -1 is negative"),
    (GMM, ("--strategy", "parallel", "--data", "digits"), "the parallel strategy needs each data image's condition (class label or prompt)"),
])
def test_conditioning_usage_errors(cli, model, options, fragment):
    one_line_error(cli("align", "--model", model, "--nfe", "3", *options, *FAST), 2, fragment)


@pytest.mark.parametrize("model,labels,fragment", [
    ("gmm:dim=16", ("--class-label", "1"), "--class-label was given but the model is not class-conditional"),
    (GMM, ("--class-label", "7"), "--class-label 7 is not a class of this model; use 0..3"),
    (GMM, ("--guidance-scale", "2", "--class-label", "3"), "(label 3 is the null class)"),
])
def test_class_label_errors(cli, tmp_path, model, labels, fragment):
    one_line_error(cli("sample", "--model", model, "--no-taus", *labels, "--out", tmp_path / "s", "--quiet"), 2, fragment)


def test_analytic_gammas_of_a_conditional_model_need_no_data():
    model = load_model(GMM, guidance_scale=2.0)
    plan = SamplingPlan.make(model.eps.schedule, "analytic-ddpm", None, "uniform", 3)
    assert plan.with_gammas(model).gammas.source == "generated"
    with pytest.raises(UsageError) as info:
        plan.with_gammas(model, data=torch.zeros(4, 1, 4, 4))
    assert_one_line(info, "estimated on its own samples", "leave out --data")


def tiny_class_unet(directory, embeds: int = 4):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=embeds,
    )
    with torch.no_grad():  # random class embeddings large enough to change the output
        unet.class_embedding.weight.normal_(0, 3)
    unet.save_pretrained(directory / "unet")
    return directory / "unet"


def test_class_conditional_diffusers_unet_end_to_end(cli, tmp_path):
    path = tiny_class_unet(tmp_path)
    model = load_model(path, schedule="linear", guidance_scale=1.5)
    assert model.eps.conditioning.num_class_embeds == 4 and model.eps.conditioning.null_class == 3
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2])
    unet = model.eps.net.unet
    with torch.no_grad():
        cond = unet(x.float(), torch.full((3,), 500.0), class_labels=labels).sample
        null = unet(x.float(), torch.full((3,), 500.0), class_labels=torch.full((3,), 3)).sample
    assert torch.allclose(model.eps.bind(labels)(x, 500.0).float(), null + 1.5 * (cond - null), atol=1e-5)
    taus = tmp_path / "taus.json"
    result = cli("align", "--model", path, "--schedule", "linear", "--guidance-scale", "1.5", "--nfe", "3",
                 "--out", taus, *FAST)
    assert result.exit_code == 0, result.output
    assert read_artifact(taus).conditioning.guidance_scale == 1.5
    result = cli("sample", "--model", path, "--schedule", "linear", "--guidance-scale", "1.5", "--nfe", "3", "-n", "3",
                 "--out", tmp_path / "s", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert parse_json(result)["aligned"] and len(parse_json(result)["labels"]) == 3


def test_unsupported_class_embedding_type(tmp_path):
    path = tiny_class_unet(tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(config, class_embed_type="timestep")))
    with pytest.raises(UsageError) as info:
        load_model(path, schedule="linear")
    assert_one_line(info, "class_embed_type 'timestep'", "num_class_embeds (integer labels) only")


def test_fit_needs_labels_only_for_conditional_models():
    model = load_model(GMM)
    with pytest.raises(ValueError, match="needs one class label per sample"):
        model.eps(torch.zeros(2, 1, 4, 4, dtype=torch.float64), 10.0)
    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", 3)
    result = fit_taus(model.eps, model.eps.schedule, plan.grid, "ddim", 0.0, resolve_config("default", iterations=3,
                      num_samples=8), model.sample_shape)
    assert len(result.taus) == 3


def test_gammas_are_cached_per_model_and_reused(isolated_cache, monkeypatch):
    from dpm_align.aligner_core.sampling import gamma_cache

    model = load_model("gmm:dim=16,components=3")
    plan = SamplingPlan.make(model.eps.schedule, "analytic-ddim", None, "uniform", 3)
    first = plan.with_gammas(model, seed=4).gammas
    (path,) = (isolated_cache / "gammas").iterdir()
    assert path.name.startswith(model.info.sha256[:16] + "-uncond-generated-seed4-")

    def refuse(*args, **kwargs):
        raise AssertionError("estimated again instead of read from the cache")

    estimate = gamma_cache.estimate_gammas
    monkeypatch.setattr(gamma_cache, "estimate_gammas", refuse)
    assert plan.with_gammas(model, seed=4).gammas == first
    path.write_text("{truncated")
    monkeypatch.setattr(gamma_cache, "estimate_gammas", estimate)
    assert plan.with_gammas(model, seed=4).gammas == first  # re-estimated and rewritten
    assert GammaTableFile(path) == first
    plan.with_gammas(model, seed=5, data=torch.zeros(8, 1, 4, 4, dtype=torch.float64))
    assert len(list((isolated_cache / "gammas").iterdir())) == 2


def GammaTableFile(path):
    from dpm_align.aligner_core.sampling.analytic import GammaTable

    return GammaTable.model_validate_json(path.read_text())
