"""Joint-fit candidates: taus alone, the grid's interior points with the taus (LD3-style), the grid
alone; the winner by held-out loss, keyed by the trajectory kind the user asked for."""

import json

import pytest
import torch

from dpm_align.aligner_core.evaluation.compare import refine_grid
from dpm_align.aligner_core.fitting.fit import fit_taus, resolve_config
from dpm_align.aligner_core.sampling.samplers import StepContext, run_sampler
from dpm_align.aligner_core.sampling.schedule import NoiseSchedule, ScheduleSpec
from dpm_align.aligner_core.sampling.trajectory import make_grid
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
    result = fit_taus(gmm_eps, gmm_eps.schedule, grid, "ddim", 0.0, resolve_config("joint", candidates=("grid+taus",)),
                      SHAPE)
    assert result.candidate == "grid+taus" and result.candidates["grid+taus"].best_iteration > 0
    fitted = result.grid
    assert fitted[0] == grid[0] and fitted[-1] == grid[-1] and len(fitted) == len(grid)
    assert all(a > b for a, b in zip(fitted[:-1], fitted[1:])) and fitted != grid
    x = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    ctx = StepContext(gmm_eps.schedule)
    ref = run_sampler("ddim", gmm_eps, x, refine_grid(grid, 600)[0], None, ctx)
    plain = (run_sampler("ddim", gmm_eps, x, grid, None, ctx) - ref).flatten(1).norm(dim=1).mean()
    aligned = (run_sampler("ddim", gmm_eps, x, fitted, result.taus, ctx) - ref).flatten(1).norm(dim=1).mean()
    assert aligned < 0.9 * plain  # from the plain times (no taus-alone warm start): x0.84 measured


@pytest.fixture
def fitgrid_artifact(cli, tmp_path):
    out = tmp_path / "fg.json"
    result = cli("align", "--model", GMM, "--nfe", "4", "--candidates", "grid+taus", "--iterations", "20",
                 "--out", out, "--json", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return out, parse_json(result)["artifact"]


def test_cli_fit_grid_round_trip(cli, tmp_path, fitgrid_artifact):
    out, artifact = fitgrid_artifact
    # keyed by what was asked for (uniform, NFE 4), with the fitted grid and the winner recorded
    assert artifact["key"].endswith("-uniform-nfe4") and artifact["trajectory"]["fitted"]
    assert artifact["fit"]["candidate"] == "grid+taus" and set(artifact["fit"]["candidates"]) == {"grid+taus"}
    assert artifact["eval_times"] == artifact["trajectory"]["timesteps"][:-1]
    assert cli("inspect", out, "--check").exit_code == 0
    found = cli("sample", "--model", GMM, "--nfe", "4", "-n", "2", "--out", tmp_path / "s", "--json", "--quiet")
    assert found.exit_code == 0 and parse_json(found)["trajectory"] == "uniform"
    assert parse_json(found)["taus"] == artifact["taus"]
    from_file = cli("sample", "--model", GMM, "--taus", out, "--trajectory", "uniform", "-n", "2", "--out", tmp_path / "t",
                    "--json", "--quiet")
    assert from_file.exit_code == 0 and parse_json(from_file)["taus"] == artifact["taus"]
    report = parse_json(cli("eval", "--model", GMM, "--nfe", "4", "-n", "8", "--reference-nfe", "40", "--json", "--quiet"))
    assert report["timesteps"] == make_grid("uniform", 4, NoiseSchedule(ScheduleSpec()))
    assert report["timesteps_aligned"] == artifact["trajectory"]["timesteps"]
    one_line_error(cli("eval", "--model", GMM, "--nfe", "4", "--ablation", "-n", "4", "--quiet"), 2,
                   "--ablation aligns the first k steps of one grid")


def test_tampered_fitted_grid_fails_the_check(cli, fitgrid_artifact, tmp_path):
    out, artifact = fitgrid_artifact
    grid = artifact["trajectory"]["timesteps"]
    grid[1], grid[2] = grid[2], grid[1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(artifact))
    one_line_error(cli("inspect", bad, "--check"), 1, "trajectory.timesteps must decrease strictly (timesteps[1] = ")
    one_line_error(cli("sample", "--model", GMM, "--taus", bad, "--out", tmp_path / "s"), 1, "trajectory.timesteps must decrease strictly")


@pytest.mark.parametrize("options,fragment", [
    (("--candidates", "grid", "--preset", "golden"), "use it with the default or --preset joint"),
    (("--candidates", "grid+taus", "--sampler", "dpm-solver-2"), "supports the ddim sampler only, not dpm-solver-2"),
    (("--candidates", "taus,steps"), "unknown --candidates steps; choose from taus, grid+taus, grid"),
    (("--candidates", ","), "unknown --candidates ','"),
    (("--patience", "1", "--preset", "golden"), "--patience stops joint fits early; use it with the default or --preset joint"),
    (("--retry-gain", "0.2", "--preset", "golden"), "--retry-gain retries joint fits; use it with the default or --preset joint"),
])
def test_candidate_usage_errors(cli, options, fragment):
    one_line_error(cli("align", "--model", GMM, "--nfe", "4", *options, "--quiet", "--no-validate"), 2, fragment)


def test_default_tries_the_candidates_and_keeps_the_best_held_out(gmm_eps):
    grid = make_grid("uniform", 5, gmm_eps.schedule)
    result = fit_taus(gmm_eps, gmm_eps.schedule, grid, "ddim", 0.0, resolve_config("default"), SHAPE)
    assert set(result.candidates) == {"taus", "grid+taus"}
    best = min(result.candidates.values(), key=lambda c: c.holdout_loss)
    assert result.candidates[result.candidate] == best and result.loss_after[0] == best.holdout_loss
    assert best.holdout_loss < result.loss_before[0]  # the plain sampler's held-out loss
    assert (result.grid is None) == (result.candidate == "taus")


@pytest.mark.parametrize("trajectory,steps", [("quadratic", 5), ("uniform", 8)])
def test_patience_stops_a_candidate_as_a_prefix_of_the_full_run(gmm_eps, trajectory, steps):
    """A stopped candidate has seen the full run's held-out checks up to its stop (same learning-rate
    schedule, same minibatches): it keeps the full run's best iterate whenever that came before."""
    grid = make_grid(trajectory, steps, gmm_eps.schedule)

    def fit(patience):
        config = resolve_config("default", patience=patience)
        return fit_taus(gmm_eps, gmm_eps.schedule, grid, "ddim", 0.0, config, SHAPE).candidates

    full, stopped = fit(0), fit(1)
    assert all(c.steps == 50 for c in full.values())
    assert any(c.steps < 50 for c in stopped.values())
    for name, c in stopped.items():
        assert c.steps % 10 == 0 and c.steps >= c.best_iteration + 10 or c.steps == 50
        if name == "taus" or stopped["taus"].best_iteration == full["taus"].best_iteration:
            if full[name].best_iteration <= c.steps:
                assert (c.best_iteration, c.holdout_loss) == (full[name].best_iteration, full[name].holdout_loss)
            else:
                assert c.holdout_loss >= full[name].holdout_loss


def test_second_order_samplers_fit_taus_alone(gmm_eps):
    grid = make_grid("uniform", 3, gmm_eps.schedule)
    result = fit_taus(gmm_eps, gmm_eps.schedule, grid, "dpm-solver-2", 0.0, resolve_config("default", iterations=10), SHAPE)
    assert set(result.candidates) == {"taus"} and result.grid is None and len(result.taus) == 6


@pytest.mark.parametrize("preset", ["default", "golden", "official"])
def test_a_cosine_schedules_taus_stay_at_or_below_its_clipped_start(preset):
    """A cosine schedule's grid starts at lambda = -5.1 (t_max = 995.08; alpha(999) = 4.9e-5 is left
    out). Past t_max log alpha falls steeply (a v-model's fit there was a cliff), so no fit feeds the
    network a later time; below it the taus move as on any schedule."""
    from dpm_align.aligner_core.models.gmm import GaussianMixture, GMMEpsNet
    from dpm_align.aligner_core.models.model import EpsModel

    schedule = NoiseSchedule(ScheduleSpec(beta_schedule="squaredcos_cap_v2"))
    assert schedule.tau_max == schedule.t_max < 999 and NoiseSchedule(ScheduleSpec()).tau_max is None
    eps = EpsModel(GMMEpsNet(GaussianMixture.random(3, 64, seed=0), schedule), schedule, "epsilon", dtype=torch.float64)
    grid = make_grid("uniform", 4, schedule)
    result = fit_taus(eps, schedule, grid, "ddim", 0.0, resolve_config(preset, iterations=20), SHAPE)
    assert max(result.taus) <= schedule.t_max and result.taus[1:] != list(grid[1:-1])
    if preset == "default":
        assert result.loss_after[0] < 0.5 * result.loss_before[0]


def test_the_default_for_ddim_at_few_steps_takes_more_smaller_adam_steps():
    """DDIM at NFE <= 5: the joint default with 80 + 80 steps at lr 0.02 (docs/RESULTS.md); above,
    for other samplers and for an explicit preset, the joint preset; options still win."""
    few = resolve_config("default", sampler="ddim", nfe=5)
    assert (few.objective, few.lr, few.iterations, few.continue_iterations) == ("joint", 0.02, 80, None)
    for config in (resolve_config("default", sampler="ddim", nfe=6), resolve_config("default"),
                   resolve_config("default", sampler="dpm-solver-2", nfe=4),
                   resolve_config("joint", sampler="ddim", nfe=5)):
        assert (config.objective, config.lr, config.iterations) == ("joint", 0.05, 50)
    assert resolve_config("default", sampler="ddim", nfe=3, iterations=6).model_dump() == \
        {**few.model_dump(), "iterations": 6, "retry_gain": None}  # an explicit budget: no retry
    assert resolve_config("default", stochastic=True, sampler="ddim", nfe=5).optimizer == "golden"


def test_the_default_for_ddim_up_to_nfe_10_retries_a_fit_that_gains_little():
    """DDIM at NFE <= 10 without --iterations: a longer fit when the default gains under 10% (docs/RESULTS.md);
    not above NFE 10, for other samplers, for an explicit preset or budget; 0 switches it off."""
    for nfe in (3, 5, 10):
        config = resolve_config("default", sampler="ddim", nfe=nfe)
        assert (config.retry_gain, config.retry_iterations, config.retry_lr, config.retry_samples, config.retry_holdout) \
            == (0.1, 1000, 0.05, 512, 256)
    for config in (resolve_config("default", sampler="ddim", nfe=11), resolve_config("default"),
                   resolve_config("default", sampler="dpm-solver-2", nfe=5),
                   resolve_config("default", sampler="ddim", nfe=5, iterations=80),
                   resolve_config("default", sampler="ddim", nfe=5, retry_gain=0),
                   resolve_config("joint", sampler="ddim", nfe=5)):
        assert config.retry_gain is None
    assert resolve_config("joint", retry_gain=0.3).retry_gain == 0.3


def test_a_retry_adds_longer_fits_and_the_lowest_held_out_loss_of_all_wins(gmm_eps):
    grid = make_grid("uniform", 4, gmm_eps.schedule)
    seen: dict[str, int] = {}

    def progress(done, total, message):
        if message.startswith("joint "):
            seen[message.split(":")[0][len("joint "):]] = total

    def fit(retry_gain):
        config = resolve_config("default", iterations=4, num_samples=16, retry_gain=retry_gain, retry_iterations=6,
                                retry_samples=40, retry_holdout=48)
        return fit_taus(gmm_eps, gmm_eps.schedule, grid, "ddim", 0.0, config, SHAPE, progress=progress)

    plain = fit(None)
    assert set(plain.candidates) == {"taus", "grid+taus"}
    retried = fit(1.0)  # every fit gains less than 100%: always retried
    assert seen == {"taus": 4, "grid+taus": 4, "taus (retry)": 6, "grid+taus (retry)": 6}
    for k, first in plain.candidates.items():  # the first round unchanged, then judged on the larger held-out set
        again = retried.candidates[k]
        assert (again.best_iteration, again.steps) == (first.best_iteration, first.steps)
        assert again.holdout_loss != first.holdout_loss
    assert (plain.num_samples, retried.num_samples) == (28, 40)  # the retry's pool: the first one and 12 fresh noises
    assert retried.loss_before[0] != plain.loss_before[0]  # the plain sampler judged on 48 held-out noises, not 32
    best = min(retried.candidates, key=lambda k: retried.candidates[k].holdout_loss)
    assert retried.candidate == best and retried.loss_after[0] == retried.candidates[best].holdout_loss
    assert (retried.grid is None) == best.startswith("taus")
    gain = 1 - plain.loss_after[0] / plain.loss_before[0]
    assert 0 < gain < 1 and set(fit(gain * 0.99).candidates) == set(plain.candidates)  # gained enough: no retry


def test_a_fit_that_keeps_the_plain_times_is_unchanged_without_validating(cli, tmp_path, monkeypatch):
    from dpm_align.aligner_core.fitting import fit
    from dpm_align.aligner_core.api import SamplingPlan, align, not_better_message
    from dpm_align.aligner_core.models.loading import load_model
    from dpm_align.aligner_core.evaluation.validation import ValidationSettings

    model = load_model(GMM)
    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", 4)
    artifact = align(model, plan, resolve_config("default", lr=0.0, iterations=10), validation=ValidationSettings())
    v = artifact.validation
    assert v.verdict == "unchanged" and not v.better and v.num_samples == 0 and artifact.taus == list(plan.eval_times)
    assert "no taus better than the plain sampler" in not_better_message(artifact)
    monkeypatch.setitem(fit.PRESETS, "joint", fit.PRESETS["joint"].model_copy(update={"lr": 0.0}))
    monkeypatch.setitem(fit.SMALL_NFE_JOINT, "lr", 0.0)  # NFE 4: the default's few-step settings
    result = cli("align", "--model", GMM, "--nfe", "4", "--iterations", "10", "--out", tmp_path / "u.json", "--quiet",
                 "--device", "cpu")
    one_line_error(result, 3, "the fit found no taus better than the plain sampler")
    assert not (tmp_path / "u.json").exists()


def test_the_joint_fit_compares_delivered_end_points(tiny_ckpt):
    """The fit's loss is the verdict's metric: a pixel model's end points clamped to its data range
    (here so narrow that every distance is at most its width); a mixture's are left as they are."""
    from dpm_align.aligner_core.models.loading import load_model

    model = load_model(tiny_ckpt)
    model.eps.data_range = (-0.01, 0.01)
    grid = make_grid("uniform", 3, model.eps.schedule)
    result = fit_taus(model.eps, model.eps.schedule, grid, "ddim", 0.0,
                      resolve_config("default", iterations=2, eval_every=1, num_samples=8), model.sample_shape)
    assert max(result.loss_before + result.loss_after) <= 0.02 + 1e-9  # per-sample RMS of clamped differences


def test_grid_and_taus_continue_with_their_own_step_count(gmm_eps):
    """``continue_iterations``: the Adam steps of grid+taus, which continues from the taus' fit
    (benchmarks/fit_budget.py compares budgets); None keeps ``iterations`` for both."""
    grid = make_grid("uniform", 3, gmm_eps.schedule)
    for continued, expected in ((5, {"taus": 2, "grid+taus": 5}), (None, {"taus": 2, "grid+taus": 2})):
        seen: dict[str, int] = {}

        def progress(done, total, message):
            if message.startswith("joint "):
                seen[message.split(":")[0][len("joint "):]] = total

        fit_taus(gmm_eps, gmm_eps.schedule, grid, "ddim", 0.0,
                 resolve_config("default", iterations=2, continue_iterations=continued, num_samples=8), SHAPE,
                 progress=progress)
        assert seen == expected


def test_cli_patience_zero_runs_every_step_and_says_so(cli, tmp_path):
    out = tmp_path / "p.json"
    result = cli("align", "--model", GMM, "--nfe", "4", "--patience", "0", "--iterations", "20", "--no-validate",
                 "--no-cache", "--out", out, "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    fit = json.loads(out.read_text())["fit"]
    assert fit["settings"]["patience"] is None and all(c["steps"] == 20 for c in fit["candidates"].values())
    assert "of 20)" in result.stdout and "(best at step" in result.stdout


def test_grid_and_taus_continue_with_their_own_learning_rate(gmm_eps):
    """``continue_lr``: the Adam learning rate of grid+taus only; the taus' fit is the default's."""
    grid = make_grid("uniform", 4, gmm_eps.schedule)

    def fit(continue_lr):
        config = resolve_config("default", iterations=10, num_samples=16, continue_lr=continue_lr)
        return fit_taus(gmm_eps, gmm_eps.schedule, grid, "ddim", 0.0, config, SHAPE).candidates

    default, slower, same = fit(None), fit(1e-3), fit(0.05)  # 0.05: the joint preset's lr
    assert slower["taus"] == default["taus"] == same["taus"]
    assert same["grid+taus"] == default["grid+taus"] and slower["grid+taus"] != default["grid+taus"]


def test_the_joint_learning_rate_rises_over_the_warmup_then_decays_on_a_cosine():
    """``learning_rate_factor``: linear from 1/warmup to 1 over the warm-up steps, then 0.5 (1 + cos(pi k / K));
    no warm-up by default (warmup = 0 is the plain cosine)."""
    from dpm_align.aligner_core.fitting.fit import PRESETS, learning_rate_factor

    assert [round(learning_rate_factor(k, 80, 8), 4) for k in (0, 3, 7, 8, 40, 79)] == \
        [0.125, 0.4983, 0.9812, 0.9755, 0.5, 0.0004]
    assert [learning_rate_factor(k, 50, 1) for k in (0, 25, 50)] == [1.0, 0.5, 0.0]
    assert PRESETS["joint"].warmup == 0 == resolve_config("default", sampler="ddim", nfe=5).warmup
