"""Tau fitting against an exact model (Gaussian mixture, closed-form eps)."""

import pytest
import torch

from dpm_align.aligner_core.evaluation.compare import refine_grid
from dpm_align.aligner_core.errors import UsageError
from dpm_align.aligner_core.fitting.fit import PRESETS, fit_taus, resolve_config
from dpm_align.aligner_core.sampling.samplers import StepContext, run_sampler
from dpm_align.aligner_core.sampling.trajectory import make_grid

SHAPE = (1, 8, 8)  # 64 dimensions


def fit(gmm_eps, grid, sampler="ddim", eta=0.0, data=None, **overrides):
    config = resolve_config("golden", **{"num_samples": 128, "batch_size": 128, **overrides})
    return fit_taus(gmm_eps, gmm_eps.schedule, grid, sampler, eta, config, SHAPE, seed=0, data=data)


@pytest.fixture(scope="module")
def quadratic10(gmm_eps):
    grid = make_grid("quadratic", 10, gmm_eps.schedule)
    return grid, fit(gmm_eps, grid)


def test_sequential_fit_lowers_the_paper_loss_at_every_tuned_step(quadratic10):
    grid, result = quadratic10
    tuned = [(b, a) for b, a in zip(result.loss_before, result.loss_after) if b is not None]
    assert len(tuned) == 9  # the final step is left untuned, as in the official code
    assert all(a <= b for b, a in tuned)
    assert sum(a < 0.95 * b for b, a in tuned) >= 5
    assert result.taus[-1] == grid[-2]


def test_fitted_taus_bring_the_end_point_closer_to_the_999_step_reference(gmm_eps, quadratic10):
    grid, result = quadratic10
    x = torch.randn(128, *SHAPE, generator=torch.Generator().manual_seed(99), dtype=torch.float64)  # held-out seeds
    fine, _ = refine_grid(grid, 1000)
    ctx = StepContext(gmm_eps.schedule)
    ref = run_sampler("ddim", gmm_eps, x, fine, None, ctx)
    gap = {name: (run_sampler("ddim", gmm_eps, x, grid, taus, ctx) - ref).flatten(1).norm(dim=1).mean()
           for name, taus in (("baseline", None), ("aligned", result.taus))}
    assert gap["aligned"] < 0.8 * gap["baseline"]


def test_same_seed_same_taus(gmm_eps):
    grid = make_grid("uniform", 4, gmm_eps.schedule)
    assert fit(gmm_eps, grid, num_samples=32).taus == fit(gmm_eps, grid, num_samples=32).taus


def test_parallel_strategy_uses_data(gmm_eps):
    grid = make_grid("uniform", 4, gmm_eps.schedule)
    data = gmm_eps.net.mixture.sample(64, torch.Generator().manual_seed(0)).reshape(64, *SHAPE).float()
    result = fit(gmm_eps, grid, data=data, strategy="parallel", num_samples=64)
    assert all(a <= b for b, a in zip(result.loss_before[:-1], result.loss_after[:-1]))
    with pytest.raises(UsageError, match="the parallel strategy needs data: pass --data"):
        fit(gmm_eps, grid, strategy="parallel")


def test_stochastic_sampler_fit_runs_and_records_losses(gmm_eps):
    grid = make_grid("uniform", 3, gmm_eps.schedule)
    result = fit(gmm_eps, grid, sampler="ddpm", eta=1.0, num_samples=32, iterations=4)
    assert result.loss_before[0] is not None and result.loss_after[0] <= result.loss_before[0]


def test_official_preset_is_the_papers_optimizer(gmm_eps):
    official = PRESETS["official"]
    assert (official.optimizer, official.lr, official.iterations, official.tune_last_step, official.fresh_noise) == (
        "adam", 2e-3, 500, False, True)
    grid = make_grid("uniform", 3, gmm_eps.schedule)
    config = resolve_config("official", iterations=15, batch_size=16, num_samples=32)
    result = fit_taus(gmm_eps, gmm_eps.schedule, grid, "ddim", 0.0, config, SHAPE, seed=0)
    assert result.taus[0] != grid[0] and result.taus[-1] == grid[-2]


@pytest.mark.parametrize(
    "kwargs,message",
    [({"preset": "fast"}, "unknown preset 'fast'; choose one of: default, golden, official, joint"),
     ({"preset": "default", "strategy": "random"}, "unknown strategy 'random'"),
     ({"preset": "default", "optimizer": "sgd"}, "unknown optimizer 'sgd'; choose one of: golden, adam"),
     ({"preset": "default", "objective": "fid"}, "unknown objective 'fid'"),
     ({"preset": "default", "iterations": 0}, "invalid fit settings: iterations: Input should be greater than or equal to 1"),
     ({"preset": "joint", "warmup": 1.0}, "invalid fit settings: warmup: Input should be less than 1")],
)
def test_bad_fit_settings(kwargs, message):
    with pytest.raises(UsageError, match=message):
        resolve_config(**kwargs)


def test_builtin_gmm_model_spec():
    from dpm_align.aligner_core.models.loading import load_model

    model = load_model("gmm:dim=16,components=3,seed=2")
    assert model.sample_shape == (1, 4, 4) and model.info.format == "gmm"
    assert model.info.source == "gmm:dim=16,components=3,seed=2"
    assert model.info.sha256 == load_model("gmm:components=3,dim=16,seed=2").info.sha256
    assert model.info.sha256 != load_model("gmm:dim=16,components=3,seed=3").info.sha256
    with pytest.raises(UsageError, match="bad gmm option 'size=3'"):
        load_model("gmm:size=3")


def test_teacher_objective_matches_a_fine_ddim_step(gmm_eps, quadratic10):
    grid, _ = quadratic10
    result = fit(gmm_eps, grid, objective="teacher", teacher_steps=8)
    tuned = [(b, a) for b, a in zip(result.loss_before, result.loss_after) if b is not None]
    assert all(a <= b for b, a in tuned) and sum(a < 0.95 * b for b, a in tuned) >= 5
    with pytest.raises(UsageError, match="the teacher objective matches a deterministic teacher; use it with a deterministic sampler"):
        fit(gmm_eps, grid, sampler="ddpm", eta=1.0, objective="teacher")


@pytest.mark.parametrize("sampler", ["dpm-solver-2", "edm-heun"])
def test_second_order_samplers_fit_one_tau_per_evaluation(gmm_eps, sampler):
    from dpm_align.aligner_core.sampling.samplers import nominal_eval_times

    grid = make_grid("logsnr", 3, gmm_eps.schedule)
    result = fit(gmm_eps, grid, sampler=sampler, num_samples=32, iterations=6)
    assert len(result.taus) == 6 and result.taus[-2:] == nominal_eval_times(sampler, grid, gmm_eps.schedule)[-2:]
    tuned = [(b, a) for b, a in zip(result.loss_before, result.loss_after) if b is not None]
    assert len(tuned) == 4 and all(a <= b for b, a in tuned)


def test_default_preset_is_joint_for_deterministic_samplers_else_golden():
    assert resolve_config("default") == PRESETS["joint"]
    assert resolve_config("default", stochastic=True) == PRESETS["golden"]
    assert resolve_config("default", objective="teacher").objective == "teacher"
    assert resolve_config("default", "parallel").optimizer == "golden"


@pytest.mark.parametrize("nfe", [5, 10])
def test_default_cuts_the_uniform_grid_gap_by_30_percent(gmm_eps, nfe):
    """The issue's GMM target on the uniform DDIM grids, which the per-step objectives miss: the
    default (taus, and grid + taus, fitted jointly against the teacher's end point) cuts the
    end-point L2 to a 999-step reference on held-out seeds by >= 30%. (NFE 5 needs the cosine learning-rate decay:
    without it the last Adam steps left the pool loss above the plain times' and the fit was dropped.)"""
    grid = make_grid("uniform", nfe, gmm_eps.schedule)
    result = fit_taus(gmm_eps, gmm_eps.schedule, grid, "ddim", 0.0, resolve_config("default"), SHAPE, seed=0)
    assert result.loss_after[0] < 0.7 * result.loss_before[0]
    x = torch.randn(128, *SHAPE, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    ctx = StepContext(gmm_eps.schedule)
    ref = run_sampler("ddim", gmm_eps, x, refine_grid(grid, 1000)[0], None, ctx)
    gap = {name: (run_sampler("ddim", gmm_eps, x, path, taus, ctx) - ref).flatten(1).norm(dim=1).mean()
           for name, path, taus in (("baseline", grid, None), ("aligned", result.grid or grid, result.taus))}
    assert gap["aligned"] < 0.7 * gap["baseline"]


def test_joint_keeps_the_plain_times_when_it_cannot_improve(gmm_eps):
    grid = make_grid("uniform", 3, gmm_eps.schedule)
    result = fit_taus(gmm_eps, gmm_eps.schedule, grid, "ddim", 0.0, resolve_config("joint", lr=1e3, iterations=2,
                      num_samples=16), SHAPE, seed=0)
    assert result.taus == list(grid[:-1]) and result.loss_after == result.loss_before  # lr 1e3 overshoots


@pytest.mark.parametrize("overrides,message", [
    ({"optimizer": "golden"}, "the joint objective fits all taus together with adam"),
    ({"strategy": "parallel"}, "use --preset joint"),
])
def test_joint_objective_settings_are_checked(overrides, message):
    with pytest.raises(UsageError, match=message):
        resolve_config("joint", **{k: v for k, v in overrides.items() if k != "strategy"},
                       strategy=overrides.get("strategy"))


def test_joint_objective_needs_a_deterministic_sampler(gmm_eps):
    grid = make_grid("uniform", 3, gmm_eps.schedule)
    with pytest.raises(UsageError, match="use it with a deterministic sampler"):
        fit_taus(gmm_eps, gmm_eps.schedule, grid, "ddpm", 1.0, resolve_config("joint"), SHAPE)
