"""--fit-grid: the grid's interior points fitted together with the taus (LD3-style, joint objective)."""

import json

import pytest
import torch

from dpm_align.aligner_core.compare import refine_grid
from dpm_align.aligner_core.fit import fit_taus, resolve_config
from dpm_align.aligner_core.samplers import StepContext, run_sampler
from dpm_align.aligner_core.schedule import NoiseSchedule, ScheduleSpec
from dpm_align.aligner_core.trajectory import make_grid
from tests.conftest import parse_json
from tests.test_cli import one_line_error

SHAPE = (1, 8, 8)
GMM = "gmm:dim=16,components=3"


def test_coeffs_are_differentiable_tensors_for_a_grad_tensor():
    schedule = NoiseSchedule(ScheduleSpec())
    t = torch.tensor(400.0, dtype=torch.float64, requires_grad=True)
    alpha, sigma = schedule.coeffs(t)
    (alpha + sigma).backward()
    assert t.grad is not None and t.grad != 0
    values = (alpha.detach().item(), sigma.detach().item())
    assert schedule.coeffs(400.0) == (pytest.approx(values[0]), pytest.approx(values[1]))


def test_fitted_grid_keeps_its_ends_and_order_and_beats_the_plain_grid(gmm_eps):
    grid = make_grid("uniform", 6, gmm_eps.schedule)
    result = fit_taus(gmm_eps, gmm_eps.schedule, grid, "ddim", 0.0, resolve_config("joint", fit_grid=True), SHAPE)
    fitted = result.grid
    assert fitted[0] == grid[0] and fitted[-1] == grid[-1] and len(fitted) == len(grid)
    assert all(a > b for a, b in zip(fitted[:-1], fitted[1:])) and fitted != grid
    x = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    ctx = StepContext(gmm_eps.schedule)
    ref = run_sampler("ddim", gmm_eps, x, refine_grid(grid, 600)[0], None, ctx)
    plain = (run_sampler("ddim", gmm_eps, x, grid, None, ctx) - ref).flatten(1).norm(dim=1).mean()
    aligned = (run_sampler("ddim", gmm_eps, x, fitted, result.taus, ctx) - ref).flatten(1).norm(dim=1).mean()
    assert aligned < 0.7 * plain


@pytest.fixture
def fitgrid_artifact(cli, tmp_path):
    out = tmp_path / "fg.json"
    result = cli("align", "--model", GMM, "--nfe", "4", "--preset", "joint", "--fit-grid", "--iterations", "20",
                 "--out", out, "--json", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return out, parse_json(result)["artifact"]


def test_cli_fit_grid_round_trip(cli, tmp_path, fitgrid_artifact):
    out, artifact = fitgrid_artifact
    assert artifact["key"].endswith("-uniform-fitgrid-nfe4") and artifact["trajectory"]["fitted"]
    assert artifact["eval_times"] == artifact["trajectory"]["timesteps"][:-1]
    assert cli("inspect", out, "--check").exit_code == 0
    found = cli("sample", "--model", GMM, "--nfe", "4", "--fit-grid", "-n", "2", "--out", tmp_path / "s", "--json", "--quiet")
    assert found.exit_code == 0 and parse_json(found)["trajectory"] == "uniform-fitgrid"
    from_file = cli("sample", "--model", GMM, "--taus", out, "--trajectory", "uniform", "-n", "2", "--out", tmp_path / "t",
                    "--json", "--quiet")
    assert from_file.exit_code == 0 and parse_json(from_file)["taus"] == artifact["taus"]
    one_line_error(cli("sample", "--model", GMM, "--nfe", "4", "--out", tmp_path / "u"), 1, "no taus in the cache for")
    report = parse_json(cli("eval", "--model", GMM, "--nfe", "4", "--fit-grid", "-n", "8", "--reference-nfe", "40",
                            "--json", "--quiet"))
    assert report["timesteps"] == make_grid("uniform", 4, NoiseSchedule(ScheduleSpec()))
    assert report["timesteps_aligned"] == artifact["trajectory"]["timesteps"]
    one_line_error(cli("eval", "--model", GMM, "--nfe", "4", "--fit-grid", "--ablation", "-n", "4", "--quiet"), 2,
                   "--ablation aligns the first k steps of one grid")


def test_tampered_fitted_grid_fails_the_check(cli, fitgrid_artifact, tmp_path):
    out, artifact = fitgrid_artifact
    grid = artifact["trajectory"]["timesteps"]
    grid[1], grid[2] = grid[2], grid[1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(artifact))
    one_line_error(cli("inspect", bad, "--check"), 1, "the fitted grid must have 5 strictly decreasing timesteps")
    one_line_error(cli("sample", "--model", GMM, "--taus", bad, "--out", tmp_path / "s"), 1, "strictly decreasing")


@pytest.mark.parametrize("options,fragment", [
    (("--fit-grid", "--preset", "golden"), "use it with --preset joint"),
    (("--fit-grid", "--preset", "joint", "--sampler", "dpm-solver-2"), "--fit-grid supports the ddim sampler only"),
])
def test_fit_grid_usage_errors(cli, options, fragment):
    one_line_error(cli("align", "--model", GMM, "--nfe", "4", *options, "--quiet", "--no-validate"), 2, fragment)
