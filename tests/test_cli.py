"""The command line, in-process through Typer's CliRunner."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dpm_align.aligner_core.artifacts.artifact import read_artifact
from dpm_align.cli.main import app
from tests.conftest import make_tiny_checkpoint, parse_json

class PickledObject:
    """An arbitrary Python object: a file holding one is refused by weights_only loading."""


FAST = ("--iterations", "3", "--num-samples", "8", "--device", "cpu", "--quiet", "--no-validate")


def one_line_error(result, code: int, fragment: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.fixture
def aligned(cli, tiny_ckpt, tmp_path):
    out = tmp_path / "taus.json"
    result = cli("align", "--model", tiny_ckpt, "--nfe", "3", "--out", out, "--json", "--candidates", "taus", *FAST)
    assert result.exit_code == 0, result.output
    return out, parse_json(result)


def test_align_json_is_one_document_and_writes_cache_and_out(aligned, isolated_cache):
    out, document = aligned
    artifact = document["artifact"]
    assert document["written"] == [str(isolated_cache / f"{artifact['key']}.json"), str(out)]
    assert read_artifact(out).taus == artifact["taus"]
    assert artifact["fit"]["strategy"] == "sequential" and artifact["model"]["format"] == "dpm-align-checkpoint"


def test_align_human_output_and_progress_on_stderr(cli, tiny_ckpt):
    result = cli("align", "--model", tiny_ckpt, "--nfe", "2", "--iterations", "3", "--num-samples", "8", "--device", "cpu", "--keep-worse")
    assert result.exit_code == 0, result.output
    assert "nfe=2, steps=2" in result.stdout and "wrote " in result.stdout
    assert "aligning ddim uniform nfe=2" in result.stderr


def test_sample_finds_cached_taus_and_is_deterministic(cli, aligned, tiny_ckpt, tmp_path):
    _, document = aligned
    runs = []
    for name, batch in (("a", "4"), ("b", "2")):
        result = cli("sample", "--model", tiny_ckpt, "--nfe", "3", "-n", "5", "--batch-size", batch,
                     "--out", tmp_path / name, "--seed", "3", "--device", "cpu", "--quiet", "--json")
        assert result.exit_code == 0, result.output
        summary = parse_json(result)
        assert summary["aligned"] and summary["taus"] == document["artifact"]["taus"]
        runs.append([np.asarray(Image.open(tmp_path / name / f"{k:06d}.png")) for k in range(5)])
    assert (tmp_path / "a" / "grid.png").is_file()
    assert all(np.array_equal(x, y) for x, y in zip(*runs))  # same seed, other batch size: same images


def test_sample_baseline_and_npz(cli, tiny_ckpt, tmp_path):
    result = cli("sample", "--model", tiny_ckpt, "--no-taus", "--nfe", "2", "-n", "3", "--format", "npz",
                 "--out", tmp_path / "s", "--device", "cpu", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    assert parse_json(result)["aligned"] is False
    images = np.load(tmp_path / "s" / "samples.npz")["arr_0"]
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8


def test_sample_without_cached_taus_says_what_to_do(cli, tiny_ckpt, tmp_path):
    result = cli("sample", "--model", tiny_ckpt, "--nfe", "7", "--out", tmp_path / "s", "--device", "cpu")
    one_line_error(result, 1, "no taus in the cache")
    assert "--no-taus" in result.stderr


def test_inspect_table_json_and_check(cli, aligned, tiny_ckpt, tmp_path):
    out, document = aligned
    table = cli("inspect", out)
    assert table.exit_code == 0 and "tau" in table.stdout
    assert parse_json(cli("inspect", out, "--json")) == document["artifact"]
    checked = cli("inspect", out, "--check", "--model", tiny_ckpt, "--json")
    assert checked.exit_code == 0 and parse_json(checked)["ok"] is True
    other = make_tiny_checkpoint(tmp_path, seed=5)
    one_line_error(cli("inspect", out, "--check", "--model", other), 1, "was fitted for something else (model sha256")


def test_model_hash_is_stable_across_copies(cli, aligned, tiny_ckpt, tmp_path):
    out, _ = aligned
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(tiny_ckpt, copy / "renamed.safetensors")
    shutil.copy(tiny_ckpt.with_suffix(".json"), copy / "renamed.json")
    assert cli("inspect", out, "--check", "--model", copy / "renamed.safetensors").exit_code == 0


def test_eval_reports_gap_per_step(cli, aligned, tiny_ckpt):
    out, _ = aligned
    result = cli("eval", "--model", tiny_ckpt, "--taus", out, "-n", "4", "--reference-nfe", "30",
                 "--device", "cpu", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    report = parse_json(result)
    assert len(report["gap_baseline"]) == len(report["gap_aligned"]) == 4
    assert report["gap_baseline"][0] == 0.0 and 30 <= report["reference_nfe"] <= 33  # >= 30, + <= 1 per interval
    assert report["reference"].startswith("dpm-solver++(2m)")
    low, high = report["end_gap_interval"]
    assert low <= report["end_gap_ratio"] <= high and report["kernel_baseline"] is not None
    # end points are compared clamped to [-1, 1] (a projection: never farther apart than the raw states)
    assert report["data_range"] == [-1.0, 1.0]
    assert report["end_gap_aligned"] <= report["gap_aligned"][-1] + 1e-9


def test_eval_ablation_and_plots(cli, aligned, tiny_ckpt, tmp_path):
    out, _ = aligned
    result = cli("eval", "--model", tiny_ckpt, "--taus", out, "-n", "6", "--reference-nfe", "30", "--ablation",
                 "--plot", tmp_path / "plots", "--device", "cpu", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    report = parse_json(result)
    rows = report["ablation"]
    assert [row["aligned_steps"] for row in rows] == [0, 1, 2, 3]
    assert rows[0]["end_l2"] == report["end_gap_baseline"] and rows[-1]["end_l2"] == report["end_gap_aligned"]
    assert rows[-1]["frechet_pixel"] == report["frechet_pixel_aligned"]
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"gap.png", "taus.png", "ablation.png"}


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.startswith("dpm-align ")


# ------------------------------------------------------------------ bad input, one by one
def test_missing_model_path(cli, tmp_path):
    one_line_error(cli("align", "--model", tmp_path / "nope", *FAST), 2, "does not exist")


def test_directory_that_is_not_a_diffusers_model(cli, tmp_path):
    one_line_error(cli("align", "--model", tmp_path, *FAST), 2, "is not a diffusers model directory")


def test_corrupt_weights(cli, tiny_ckpt, tmp_path):
    bad = tmp_path / "tiny.safetensors"
    bad.write_bytes(tiny_ckpt.read_bytes()[:500])
    shutil.copy(tiny_ckpt.with_suffix(".json"), tmp_path / "tiny.json")
    one_line_error(cli("align", "--model", bad, *FAST), 2, "corrupt or truncated")


def test_pickled_checkpoint_needs_trust(cli, tmp_path):
    weights = make_tiny_checkpoint(tmp_path)
    from safetensors.torch import load_file

    torch.save({"state_dict": load_file(str(weights)), "extra": PickledObject()}, tmp_path / "tiny.pt")
    one_line_error(cli("align", "--model", tmp_path / "tiny.pt", *FAST), 2, "pass --trust-pickle only if you trust")
    torch.save(load_file(str(weights)), tmp_path / "plain.pt")
    shutil.copy(weights.with_suffix(".json"), tmp_path / "plain.json")
    assert cli("align", "--model", tmp_path / "plain.pt", "--nfe", "1", "--no-cache", "--out", tmp_path / "o.json", *FAST).exit_code == 0


@pytest.mark.parametrize(
    "args,fragment",
    [(("--sampler", "euler"), "unknown sampler 'euler'"),
     (("--trajectory", "cosine"), "unknown trajectory 'cosine'"),
     (("--nfe", "0"), "--nfe 0 is out of range"),
     (("--nfe", "1001"), "--nfe 1001 is out of range"),
     (("--strategy", "parallel"), "the parallel strategy needs data"),
     (("--data", "/no/such/data", "--strategy", "parallel"), "neither a built-in dataset"),
     (("--preset", "turbo"), "unknown preset 'turbo'"),
     (("--no-cache",), "--no-cache without --out")],
)
def test_usage_errors(cli, tiny_ckpt, args, fragment):
    one_line_error(cli("align", "--model", tiny_ckpt, *args, *FAST), 2, fragment)


@pytest.mark.parametrize("content,fragment", [("{", "is not valid JSON"), ('{"schema_version": 5}', "has schema_version 5"),
                                               ('{"schema_version": 2}', "does not match the tau artifact schema")])
def test_bad_artifacts(cli, tiny_ckpt, tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content)
    one_line_error(cli("inspect", path), 2, fragment)
    one_line_error(cli("sample", "--model", tiny_ckpt, "--taus", path, "--out", tmp_path / "s", "--device", "cpu"), 2, fragment)


def test_artifact_for_a_different_model_is_refused_by_sample(cli, aligned, tmp_path):
    out, _ = aligned
    other = make_tiny_checkpoint(tmp_path, seed=9)
    one_line_error(cli("sample", "--model", other, "--taus", out, "--out", tmp_path / "s", "--device", "cpu"), 1,
                   "was fitted for something else")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(cli, tiny_ckpt):
    one_line_error(cli("align", "--model", tiny_ckpt, "--device", "cuda", "--quiet"), 2, "CUDA is not available")


def test_unwritable_out_leaves_nothing(cli, tiny_ckpt, tmp_path, isolated_cache):
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(cli("align", "--model", tiny_ckpt, "--out", blocker / "taus.json", *FAST), 2, "choose a writable --out path")
    assert list(isolated_cache.iterdir()) == []  # the cache was not written either
    one_line_error(cli("sample", "--model", tiny_ckpt, "--no-taus", "--out", blocker / "dir"), 2, "choose a writable --out directory")


def test_bad_sample_options(cli, tiny_ckpt, tmp_path):
    one_line_error(cli("sample", "--model", tiny_ckpt, "--format", "gif", "--out", tmp_path), 2, "unknown --format 'gif'")
    one_line_error(cli("sample", "--model", tiny_ckpt, "--no-taus", "--taus", tmp_path / "x.json", "--out", tmp_path), 2,
                   "contradict")


def test_inspect_plot(cli, aligned, tmp_path):
    out, _ = aligned
    result = cli("inspect", out, "--plot", tmp_path / "taus.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "taus.png").size[0] > 100
    one_line_error(cli("inspect", out, "--plot", tmp_path / "missing-dir" / "x.png"), 2, "choose a writable plot path")


# ------------------------------------------------------------------ self-validation
def test_align_validates_on_held_out_seeds_and_records_it(cli, tmp_path):
    result = cli("align", "--model", "gmm", "--nfe", "5", "--trajectory", "quadratic", "--out", tmp_path / "t.json",
                 "--device", "cpu", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    document = parse_json(result)
    validation = document["artifact"]["validation"]
    assert document["better"] is True and validation["better"] is True and validation["verdict"] == "better"
    assert validation["aligned"]["end_l2"] < validation["baseline"]["end_l2"]
    change = validation["changes"]["end_l2"]
    assert change["interval"][0] < change["change"] < change["interval"][1] < 0
    assert change["change"] == pytest.approx(validation["aligned"]["end_l2"] / validation["baseline"]["end_l2"] - 1)
    assert validation["num_samples"] == 64 and validation["looks"] == [64] and validation["confidence"] == 0.95
    assert validation["interval_level"] == pytest.approx(0.995)  # the first look spends a tenth of the 5%
    assert validation["reference"]["nfe"] == 100 and 0 < validation["reference"]["error_l2"] < 0.1
    assert read_artifact(tmp_path / "t.json").validation.better
    summary = read_artifact(tmp_path / "t.json").validation.summary()
    assert "(64 held-out samples, 99.5% intervals, 95% family-wise): better" in summary


def test_align_refuses_to_write_taus_that_validate_worse(cli, tiny_ckpt, tmp_path, isolated_cache, monkeypatch):
    from dpm_align.aligner_core import api
    from dpm_align.aligner_core.fitting.fit import FitResult

    def bad_fit(eps, schedule, grid, *args, **kwargs):  # taus far off the grid: surely worse
        return FitResult([t * 0.5 for t in grid[:-1]], [None] * (len(grid) - 1), [None] * (len(grid) - 1), 0.0)

    monkeypatch.setattr(api, "fit_taus", bad_fit)
    out = tmp_path / "t.json"
    base = ("align", "--model", tiny_ckpt, "--nfe", "3", "--out", out, "--device", "cpu", "--quiet")
    result = cli(*base, "--json")
    one_line_error(result, 3, "the aligned taus are worse than the plain sampler: end-point error +")
    assert parse_json(result)["better"] is False and parse_json(result)["written"] == []
    assert not out.exists() and list(isolated_cache.iterdir()) == []
    kept = cli(*base, "--keep-worse")
    assert kept.exit_code == 0 and out.exists() and "written anyway (--keep-worse)" in kept.stderr
    assert read_artifact(out).validation.better is False
    sampled = cli("sample", "--model", tiny_ckpt, "--taus", out, "-n", "2", "--out", tmp_path / "s", "--device", "cpu", "--quiet")
    assert sampled.exit_code == 0 and "warning:" in sampled.stderr and "worse than the plain sampler" in sampled.stderr


def test_align_says_when_the_models_samples_run_off(cli, tmp_path):
    """A random eps network's samples run off to RMS ~160 for images in [-1, 1]: a refusal's one
    error line gives that as the fix, --keep-worse warns and lists it under `warnings` in --json,
    and so does `eval`; read as v-prediction the same weights stay in range and nothing is said."""
    weights = make_tiny_checkpoint(tmp_path)
    base = ("align", "--model", weights, "--nfe", "2", "--iterations", "2", "--num-samples", "8", "--device", "cpu",
            "--quiet", "--no-cache", "--validation-samples", "8", "--validation-max-samples", "8",
            "--validation-reference-nfe", "6", "--candidates", "taus", "--json")
    refused = cli(*base, "--out", tmp_path / "a.json")
    one_line_error(refused, 3, "nothing written: the model's own samples run off its data range (RMS ")
    assert not (tmp_path / "a.json").exists()
    kept = cli(*base, "--out", tmp_path / "b.json", "--keep-worse")
    assert kept.exit_code == 0, kept.output
    warnings = parse_json(kept)["warnings"]
    assert len(warnings) == 1 and "run off its data range" in warnings[0] and f"warning: {warnings[0]}" in kept.stderr
    sane = cli(*base, "--out", tmp_path / "c.json", "--keep-worse", "--prediction-type", "v_prediction")
    assert sane.exit_code == 0 and parse_json(sane)["warnings"] == [] and "run off" not in sane.stderr
    evaluated = cli("eval", "--model", weights, "--taus", tmp_path / "b.json", "-n", "8", "--reference-nfe", "6",
                    "--device", "cpu", "--quiet", "--json")
    assert evaluated.exit_code == 0 and parse_json(evaluated)["reference_rms"] > 50
    assert "warning: the model's own samples run off its data range (RMS " in evaluated.stderr


# ------------------------------------------------------------------ every sampler x trajectory
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm-solver-2", "edm-heun", "analytic-ddim", "analytic-ddpm"])
@pytest.mark.parametrize("trajectory", ["uniform", "quadratic", "logsnr", "edm"])
def test_align_every_sampler_and_trajectory(cli, tiny_ckpt, tmp_path, sampler, trajectory):
    out = tmp_path / "t.json"
    result = cli("align", "--model", tiny_ckpt, "--sampler", sampler, "--trajectory", trajectory, "--nfe", "4",
                 "--out", out, "--json", *FAST)
    assert result.exit_code == 0, result.output
    artifact = read_artifact(out)
    per = 2 if sampler in ("dpm-solver-2", "edm-heun") else 1
    assert artifact.trajectory.nfe == len(artifact.taus) == len(artifact.eval_times) == 4
    assert artifact.trajectory.steps == 4 // per and len(artifact.trajectory.timesteps) == 4 // per + 1
    assert artifact.key.endswith(f"-{sampler}-eta{artifact.sampler.eta:g}-{artifact.trajectory.label}-nfe4")
    assert (artifact.trajectory.rho == 7.0) == (trajectory == "edm")
    analytic = sampler.startswith("analytic")
    assert (artifact.analytic is not None) == analytic
    if analytic:
        assert artifact.analytic.times == artifact.trajectory.timesteps[:-1] and artifact.analytic.source == "generated"
    stochastic = sampler in ("ddpm", "analytic-ddim", "analytic-ddpm")
    assert artifact.fit.objective == ("paper" if stochastic else "joint")  # what --preset default means
    if stochastic:
        assert artifact.fit.loss_before[0] is not None and artifact.fit.loss_before[-1] is None  # final step untuned
    else:  # the joint objective's one end-point loss, for every evaluation
        assert len(set(artifact.fit.loss_before)) == 1 and artifact.fit.loss_after[0] <= artifact.fit.loss_before[0]
    assert cli("inspect", out, "--check", "--model", tiny_ckpt).exit_code == 0
    sampled = cli("sample", "--model", tiny_ckpt, "--taus", out, "-n", "2", "--out", tmp_path / "s", "--device", "cpu", "--quiet")
    assert sampled.exit_code == 0, sampled.output


def test_second_order_nfe_must_be_even(cli, tiny_ckpt):
    one_line_error(cli("align", "--model", tiny_ckpt, "--sampler", "dpm-solver-2", "--nfe", "5", *FAST), 2,
                   "--nfe 5 is not a multiple of 2: dpm-solver-2 makes 2 network evaluations per step")


def test_rho_is_part_of_the_key(cli, tiny_ckpt, tmp_path):
    result = cli("align", "--model", tiny_ckpt, "--trajectory", "edm", "--rho", "3", "--nfe", "2", "--out", tmp_path / "t.json", "--json", *FAST)
    assert parse_json(result)["artifact"]["key"].endswith("-edm-rho3-nfe2")
    one_line_error(cli("sample", "--model", tiny_ckpt, "--taus", tmp_path / "t.json", "--trajectory", "edm",
                       "--out", tmp_path / "s", "--device", "cpu"), 1, "trajectory edm-rho3 != edm-rho7")
    one_line_error(cli("align", "--model", tiny_ckpt, "--rho", "3", *FAST), 2, "--rho applies to the edm trajectory only")


def test_torchscript_model_through_the_cli(cli, tiny_ckpt, tmp_path):
    from dpm_align.aligner_core.models.loading import load_model

    scripted = torch.jit.script(load_model(tiny_ckpt).eps.net)
    torch.jit.save(scripted, str(tmp_path / "net.ts"))
    args = ("--model", tmp_path / "net.ts", "--schedule", "linear", "--sample-shape", "1,8,8")
    result = cli("align", *args, "--nfe", "2", "--out", tmp_path / "t.json", "--json", *FAST)
    assert result.exit_code == 0, result.output
    assert parse_json(result)["artifact"]["model"]["format"] == "torchscript"
    assert cli("inspect", tmp_path / "t.json", "--check", "--model", tiny_ckpt).exit_code == 0  # same weights, same sha


def test_inspect_formats_for_other_tools(cli, aligned):
    out, document = aligned
    diffusers_form = parse_json(cli("inspect", out, "--format", "diffusers"))
    assert diffusers_form["timesteps"] == [round(t) for t in document["artifact"]["taus"]]
    assert "lose" in diffusers_form["note"]
    sigmas = parse_json(cli("inspect", out, "--format", "sigmas"))["sigmas"]
    assert sigmas[-1] == 0.0 and all(a > b for a, b in zip(sigmas, sigmas[1:]))
    assert parse_json(cli("inspect", out, "--format", "json")) == document["artifact"]
    one_line_error(cli("inspect", out, "--format", "yaml"), 2, "choose one of: json, diffusers, sigmas")


def test_aligned_scheduler_is_exposed_lazily():
    import dpm_align.aligner_core as core

    assert core.AlignedScheduler.__name__ == "AlignedScheduler"


def test_analytic_baseline_estimates_gamma_when_sampling_without_taus(cli, tiny_ckpt, tmp_path):
    result = cli("sample", "--model", tiny_ckpt, "--sampler", "analytic-ddpm", "--no-taus", "--nfe", "3", "-n", "2",
                 "--out", tmp_path / "s", "--device", "cpu", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    assert parse_json(result)["sampler"] == "analytic-ddpm"


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_prediction_types_end_to_end(cli, tmp_path, prediction_type):
    weights = make_tiny_checkpoint(tmp_path, seed=3, prediction_type=prediction_type)
    result = cli("align", "--model", weights, "--nfe", "3", "--out", tmp_path / "t.json", "--json", *FAST)
    assert result.exit_code == 0, result.output
    assert parse_json(result)["artifact"]["model"]["prediction_type"] == prediction_type
    sampled = cli("sample", "--model", weights, "--taus", tmp_path / "t.json", "-n", "2", "--out", tmp_path / "s",
                  "--device", "cpu", "--quiet", "--json")
    assert sampled.exit_code == 0 and parse_json(sampled)["aligned"] is True
    images = [np.asarray(Image.open(tmp_path / "s" / f"{k:06d}.png")) for k in range(2)]
    assert all(img.shape == (8, 8) for img in images)


@pytest.mark.parametrize(
    "argv,code,fragment",
    [(["align", "--nfe", "abc"], 2, "error: Invalid value for '--nfe'"),
     (["align", "--bogus"], 2, "error: No such option: --bogus"),
     (["align", "--patience", "-1"], 2, "error: Invalid value for '--patience'"),
     (["inspect"], 2, "error: Missing argument 'file'"),
     (["align", "--model", "/no/such/model", "-q"], 2, "error: model path /no/such/model does not exist")],
)
def test_console_script_errors_are_one_line_with_exit_codes(monkeypatch, capsys, argv, code, fragment):
    from dpm_align.cli.main import run

    monkeypatch.setattr("sys.argv", ["dpm-align", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == code and len(err) == 1 and err[0].startswith(fragment), err


def test_console_script_success_and_runtime_error_codes(monkeypatch, capsys, tiny_ckpt, tmp_path):
    from dpm_align.cli.main import run

    def console(*argv):
        monkeypatch.setattr("sys.argv", ["dpm-align", *map(str, argv)])
        with pytest.raises(SystemExit) as exit_info:
            run()
        return exit_info.value.code

    assert console("align", "--model", tiny_ckpt, "--nfe", "2", "--no-cache", "--out", tmp_path / "t.json", *FAST) == 0
    assert console("inspect", tmp_path / "t.json", "--check", "--model", make_tiny_checkpoint(tmp_path, seed=4)) == 1
    assert console("--version") == 0


def test_align_refuses_taus_not_shown_better_after_every_look(cli, tmp_path, monkeypatch):
    from dpm_align.aligner_core import api
    from dpm_align.aligner_core.fitting.fit import FitResult

    def plain_fit(eps, schedule, grid, *args, **kwargs):  # the plain times on a "fitted" copy of the grid: never
        # shown better, and not recognised as unchanged (which skips the verdict)
        return FitResult(list(grid[:-1]), [None] * (len(grid) - 1), [None] * (len(grid) - 1), 0.0, grid=list(grid))

    monkeypatch.setattr(api, "fit_taus", plain_fit)
    base = ("align", "--model", "gmm:dim=16,components=3", "--nfe", "4", "--out", tmp_path / "t.json", "--quiet",
            "--validation-samples", "16", "--validation-max-samples", "64")
    result = cli(*base, "--json")
    one_line_error(result, 3, "the aligned taus are not shown better than the plain sampler: end-point error +0.0%")
    validation = parse_json(result)["artifact"]["validation"]
    assert validation["verdict"] == "inconclusive" and validation["looks"] == [16, 32, 64]
    assert validation["confidence"] == 0.95 and not (tmp_path / "t.json").exists()
    budget = parse_json(cli(*base, "--validation-budget", "0", "--confidence", "0.9", "--json"))["artifact"]["validation"]
    assert budget["looks"] == [16] and budget["confidence"] == 0.9  # no further look past the budget


@pytest.mark.parametrize("command", ["align", "sample", "inspect", "eval"])
def test_help_reads_at_80_columns(runner, command):
    """Short metavars and panels: no line wider than 80, every option name whole, and the
    descriptions start before column 45 (they used to be squeezed into the last ~30 columns)."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in result.stdout and "<int" not in result.stdout and "<bool>" not in result.stdout
    starts = [line.index("random seed") for line in lines if "random seed" in line] or \
             [line.index("tau artifact") for line in lines if "tau artifact" in line]
    assert starts and max(starts) < 45, result.stdout
    if command == "align":
        assert "Verdict" in result.stdout and "(at least 8)" in result.stdout
