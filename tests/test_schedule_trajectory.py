import pytest
import torch

from dpm_align.aligner_core.errors import UsageError
from dpm_align.aligner_core.sampling.schedule import LAMBDA_MIN, NoiseSchedule, ScheduleSpec
from dpm_align.aligner_core.sampling.trajectory import TRAJECTORIES, make_grid

SCHED = NoiseSchedule(ScheduleSpec())


def test_golden_values_linear_schedule():
    # alphas_cumprod of the DDPM linear schedule (beta 1e-4..0.02, T=1000), computed in float64.
    assert float(SCHED.alphas_cumprod[0]) == pytest.approx(0.9999, abs=1e-12)
    assert float(SCHED.alphas_cumprod[999]) == pytest.approx(4.035e-05, rel=1e-3)
    a, s = SCHED.coeffs(999)
    assert a**2 + s**2 == pytest.approx(1.0, abs=1e-12)


def test_fractional_time_interpolates_log_alpha_and_extrapolates():
    la = SCHED.log_alpha(torch.tensor([10.0, 10.25, 11.0], dtype=torch.float64))
    assert float(la[1]) == pytest.approx(0.75 * float(la[0]) + 0.25 * float(la[2]), rel=1e-12)
    beyond = SCHED.log_alpha(torch.tensor([1000.5], dtype=torch.float64))
    assert float(beyond) < float(SCHED.log_alpha(torch.tensor([999.0])))


def test_log_alpha_is_differentiable_in_t():
    t = torch.tensor(500.3, dtype=torch.float64, requires_grad=True)
    SCHED.alpha(t).backward()
    assert t.grad is not None and float(t.grad) < 0


@pytest.mark.parametrize("t", [0.0, 3.7, 250.0, 998.2, 999.0])
def test_inverse_lambda_round_trip(t):
    tt = torch.tensor([t], dtype=torch.float64)
    assert float(SCHED.inverse_lambda(SCHED.lambda_(tt))) == pytest.approx(t, abs=1e-6)


@pytest.mark.parametrize("spec, start", [
    (ScheduleSpec(), 999.0),  # linear: lambda(999) = -5.06
    (ScheduleSpec(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), 999.0),  # -2.68
    (ScheduleSpec(beta_schedule="squaredcos_cap_v2"), 995.0773),  # -9.92 at 999: clipped
])
def test_grids_start_at_T_minus_1_or_where_lambda_is_lambda_min(spec, start):
    """Sampling starts no lower in log-SNR than LAMBDA_MIN (diffusers' lambda_min_clipped): the
    cosine schedule's capped last beta (alpha(999) = 4.9e-5) is left out, the others start at T-1."""
    schedule = NoiseSchedule(spec)
    assert schedule.t_max == pytest.approx(start, abs=1e-4)
    lam = float(schedule.lambda_(torch.tensor([schedule.t_max], dtype=torch.float64)))
    assert lam >= LAMBDA_MIN - 1e-9
    for kind in TRAJECTORIES:
        grid = make_grid(kind, 10, schedule)
        assert grid[0] <= schedule.t_max + 1e-9 and grid[-1] == 0.0


@pytest.mark.parametrize("kind", list(TRAJECTORIES))
@pytest.mark.parametrize("nfe", [1, 5, 10, 20])
def test_grids_have_k_plus_1_decreasing_points_from_T_minus_1_to_0(kind, nfe):
    grid = make_grid(kind, nfe, SCHED)
    assert len(grid) == nfe + 1
    assert grid[0] == (999.0 if kind != "edm" else pytest.approx(929.6, abs=0.1)) and grid[-1] == 0.0
    assert all(a > b for a, b in zip(grid, grid[1:]))


def test_logsnr_grid_is_uniform_in_lambda():
    grid = torch.tensor(make_grid("logsnr", 8, SCHED), dtype=torch.float64)
    steps = SCHED.lambda_(grid).diff()
    assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-6)


def test_quadratic_grid_values():
    assert make_grid("quadratic", 2, SCHED) == [999.0, 999.0 / 4, 0.0]


@pytest.mark.parametrize(
    "kind,nfe,message",
    [("zigzag", 10, "unknown trajectory 'zigzag'"), ("uniform", 0, "--nfe gives 0 steps, out of range"),
     ("uniform", 1001, "--nfe gives 1001 steps, out of range")],
)
def test_bad_grid_requests(kind, nfe, message):
    with pytest.raises(UsageError, match=message):
        make_grid(kind, nfe, SCHED)


def test_trained_betas_need_matching_length():
    with pytest.raises(ValueError, match="trained_betas"):
        ScheduleSpec(beta_schedule="trained", num_train_timesteps=3, trained_betas=[0.1])


def test_edm_grid_is_karras_rho_spacing_in_sigma_clamped_to_the_model():
    grid = torch.tensor(make_grid("edm", 6, SCHED), dtype=torch.float64)
    sigmas = torch.exp(-SCHED.lambda_(grid))
    assert float(sigmas[0]) == pytest.approx(80.0, rel=1e-6)  # EDM's sigma_max, inside the model's range
    assert float(sigmas[-1]) == pytest.approx(float(torch.exp(-SCHED.lambda_(torch.tensor([0.0])))), rel=1e-9)
    ramp = sigmas ** (1 / 7)
    assert torch.allclose(ramp.diff(), ramp.diff().mean().expand(6), rtol=1e-6)  # uniform in sigma^(1/rho)
    assert make_grid("edm", 6, SCHED, rho=3.0) != make_grid("edm", 6, SCHED)
    with pytest.raises(UsageError, match="--rho applies to the edm trajectory only"):
        make_grid("uniform", 6, SCHED, rho=3.0)
    with pytest.raises(UsageError, match="--rho -1.0 must be positive"):
        make_grid("edm", 6, SCHED, rho=-1.0)
