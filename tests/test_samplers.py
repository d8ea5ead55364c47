import math

import pytest
import torch

from dpm_align.aligner_core.evaluation.compare import refine_grid
from dpm_align.aligner_core.errors import UsageError
from dpm_align.aligner_core.models.model import EpsModel
from dpm_align.aligner_core.models.nets import TinyUNet
from dpm_align.aligner_core.sampling.samplers import (PerSampleNoise, StepContext, dpm_solver_pp_multistep, get_sampler,
                                                       resolve_eta, run_sampler)
from dpm_align.aligner_core.sampling.schedule import NoiseSchedule, ScheduleSpec
from dpm_align.aligner_core.sampling.trajectory import make_grid

SCHED = NoiseSchedule(ScheduleSpec())


@pytest.fixture(scope="module")
def eps():
    torch.manual_seed(0)
    return EpsModel(TinyUNet(1, (8, 16, 16), groups=4), SCHED, "epsilon")


def reference_ddim(eps, x, grid, taus, eta=0.0, noises=()):
    """Song et al. (2021) Eq. 12 written from alphas_cumprod, float64, integer grid points only."""
    abar = SCHED.alphas_cumprod
    noises = iter(noises)
    for t, s, tau in zip(grid[:-1], grid[1:], taus):
        at, as_ = abar[int(t)], abar[int(s)]
        e = eps(x, tau).double()
        x0 = (x - torch.sqrt(1 - at) * e) / torch.sqrt(at)
        std = eta * torch.sqrt((1 - as_) / (1 - at) * (1 - at / as_))
        x = torch.sqrt(as_) * x0 + torch.sqrt(1 - as_ - std**2) * e + (std * next(noises) if eta else 0)
    return x


def test_ddim_matches_float64_reference_with_and_without_taus(eps):
    grid = [999.0, 749.0, 499.0, 249.0, 0.0]
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    for taus in (grid[:-1], [990.0, 700.5, 512.25, 200.0]):
        ours = run_sampler("ddim", eps, x, grid, taus, StepContext(SCHED))
        assert torch.allclose(ours, reference_ddim(eps, x, grid, taus), atol=1e-10, rtol=1e-9)


def test_ddpm_matches_reference_with_the_same_noise(eps):
    grid = [999.0, 666.0, 333.0, 0.0]
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    noises = [torch.randn(2, 1, 8, 8, dtype=torch.float64) for _ in range(3)]
    stream = iter(noises)
    ours = run_sampler("ddpm", eps, x, grid, None, StepContext(SCHED, resolve_eta("ddpm", None), lambda: next(stream)))
    assert torch.allclose(ours, reference_ddim(eps, x, grid, grid[:-1], 1.0, noises), atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_identity_taus_equal_the_plain_sampler_exactly(eps, name):
    grid = make_grid("quadratic", 6, SCHED)
    x = torch.randn(2, 1, 8, 8)
    runs = [run_sampler(name, eps, x, grid, taus, StepContext(SCHED, resolve_eta(name, None), PerSampleNoise(0, [0, 1], (1, 8, 8))))
            for taus in (None, grid[:-1])]
    assert torch.equal(runs[0], runs[1])


def test_record_returns_every_grid_state(eps):
    grid = make_grid("uniform", 4, SCHED)
    states = run_sampler("ddim", eps, torch.randn(1, 1, 8, 8), grid, None, StepContext(SCHED), record=True)
    assert len(states) == 5 and all(s.dtype == torch.float64 for s in states)


def test_per_sample_noise_does_not_depend_on_batching():
    whole = PerSampleNoise(7, range(4), (1, 2, 2))()
    parts = torch.cat([PerSampleNoise(7, range(0, 2), (1, 2, 2))(), PerSampleNoise(7, range(2, 4), (1, 2, 2))()])
    assert torch.equal(whole, parts)


def test_tau_gradient_reaches_the_network(eps):
    tau = torch.tensor(500.0, dtype=torch.float64, requires_grad=True)
    out = run_sampler("ddim", eps, torch.randn(2, 1, 8, 8), [600.0, 400.0], [tau], StepContext(SCHED))
    out.square().mean().backward()
    assert tau.grad is not None and math.isfinite(float(tau.grad)) and float(tau.grad) != 0.0


@pytest.mark.parametrize("prediction", ["sample", "v_prediction"])
def test_parameterizations_convert_to_the_same_eps(prediction):
    """A net predicting x0 (or v) consistent with an eps net yields the same eps after the wrapper."""
    torch.manual_seed(1)
    base = EpsModel(TinyUNet(1, (8, 16, 16), groups=4), SCHED, "epsilon")

    class Converted(torch.nn.Module):
        def forward(self, x, t):
            e = base(x, t)
            a = SCHED.alpha(t.double())[:, None, None, None]
            s = SCHED.sigma(t.double())[:, None, None, None]
            x0 = (x - s * e) / a
            return x0 if prediction == "sample" else a * e - s * x0

    wrapped = EpsModel(Converted(), SCHED, prediction, dtype=torch.float64)
    x, t = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([700.5, 20.25], dtype=torch.float64)
    assert torch.allclose(wrapped(x, t), base(x, t), atol=1e-6)


def test_unknown_sampler_and_bad_eta():
    with pytest.raises(UsageError, match="unknown sampler 'heun'; choose one of: ddim, ddpm"):
        get_sampler("heun")
    with pytest.raises(UsageError, match="--eta -1.0 is negative"):
        resolve_eta("ddim", -1.0)


def test_wrong_number_of_taus(eps):
    with pytest.raises(UsageError, match="3 taus given for 2 steps"):
        run_sampler("ddim", eps, torch.randn(1, 1, 8, 8), [900.0, 500.0, 0.0], [1.0, 2.0, 3.0], StepContext(SCHED))


# ------------------------------------------------------------------ second-order samplers
def test_dpm_solver_2_step_matches_the_papers_formula(eps):
    """Lu et al. (2022), Algorithm 1 (DPM-Solver-2, r1 = 1/2), written from lambda directly."""
    t, s = 700.0, 420.5
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    lam_t, lam_s = (float(SCHED.lambda_(torch.tensor([v], dtype=torch.float64))) for v in (t, s))
    h = lam_s - lam_t
    s1 = float(SCHED.inverse_lambda(torch.tensor([lam_t + h / 2], dtype=torch.float64)))
    a = {v: float(SCHED.alpha(torch.tensor([v], dtype=torch.float64))) for v in (t, s1, s)}
    sg = {v: float(SCHED.sigma(torch.tensor([v], dtype=torch.float64))) for v in (t, s1, s)}
    u = a[s1] / a[t] * x - sg[s1] * (math.exp(h / 2) - 1) * eps(x, 650.0)
    expected = a[s] / a[t] * x - sg[s] * (math.exp(h) - 1) * eps(u, 500.0)
    ours = run_sampler("dpm-solver-2", eps, x, [t, s], [650.0, 500.0], StepContext(SCHED))
    assert torch.allclose(ours, expected, atol=1e-10, rtol=1e-9)
    assert get_sampler("dpm-solver-2").eval_times(t, s, SCHED)[1] == pytest.approx(s1)


def test_edm_heun_step_matches_karras_algorithm_1(eps):
    """Karras et al. (2022) Algorithm 1 (deterministic) in the VE view x/alpha, sigma = sigma_t/alpha_t."""
    t, s = 600.0, 300.0
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    (a_t, s_t), (a_s, s_s) = SCHED.coeffs(t), SCHED.coeffs(s)
    sig_t, sig_s = s_t / a_t, s_s / a_s

    def denoise(x_hat, sigma, alpha, tau):  # EDM's D(x; sigma) for a VP eps-model: x_hat - sigma * eps
        return x_hat - sigma * eps(alpha * x_hat, tau)

    x_hat = x / a_t
    d = (x_hat - denoise(x_hat, sig_t, a_t, 590.0)) / sig_t
    x_next = x_hat + (sig_s - sig_t) * d
    d_prime = (x_next - denoise(x_next, sig_s, a_s, 310.0)) / sig_s
    expected = a_s * (x_hat + (sig_s - sig_t) * (0.5 * d + 0.5 * d_prime))
    ours = run_sampler("edm-heun", eps, x, [t, s], [590.0, 310.0], StepContext(SCHED))
    assert torch.allclose(ours, expected, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name,order", [("ddim", 1), ("dpm-solver-2", 2), ("edm-heun", 2)])
def test_convergence_order_on_the_exact_gmm_model(gmm_eps, name, order):
    """Halving the step size divides the end-point error by about 2^order (logsnr grid). The
    median over samples is used: a few samples near a boundary between mixture components
    switch components under any discretization. The reference is a 1000-step run of another
    second-order sampler."""
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ctx = StepContext(gmm_eps.schedule)
    other = "edm-heun" if name == "dpm-solver-2" else "dpm-solver-2"
    ref = run_sampler(other, gmm_eps, x, refine_grid(make_grid("logsnr", 20, gmm_eps.schedule), 1000)[0], None, ctx)
    errors = [float((run_sampler(name, gmm_eps, x, make_grid("logsnr", k, gmm_eps.schedule), None, ctx) - ref)
                    .flatten(1).norm(dim=1).median()) for k in (20, 40)]
    assert errors[0] / errors[1] == pytest.approx(2**order, rel=0.25)


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_solver_pp_multistep_has_its_order(gmm_eps, order):
    """DPM-Solver++(2M) / (3M): halving the step divides the error by about 2^order on the exact
    mixture (against a 1000-step DPM-Solver-2; measured: 4.05 and 6.97)."""
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sched = gmm_eps.schedule
    ctx = StepContext(sched)
    ref = run_sampler("dpm-solver-2", gmm_eps, x, refine_grid(make_grid("logsnr", 20, sched), 1000)[0], None, ctx)
    errors = [float((dpm_solver_pp_multistep(gmm_eps, x, make_grid("logsnr", k, sched), ctx, order) - ref)
                    .flatten(1).norm(dim=1).median()) for k in (20, 40)]
    assert errors[0] / errors[1] == pytest.approx(2**order, rel=0.25)


def test_dpm_solver_pp_2m_matches_its_formula(gmm_eps):
    """The reference solver's second step is Lu et al. (2022b) Algorithm 2 by hand."""
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sched = gmm_eps.schedule
    ctx = StepContext(sched)
    grid = [999.0, 600.0, 250.0]
    (a0, s0), (a1, s1), (a2, s2) = (sched.coeffs(t) for t in grid)
    l0, l1, l2 = (math.log(a / s) for a, s in ((a0, s0), (a1, s1), (a2, s2)))
    d0 = (x - s0 * gmm_eps(x, grid[0])) / a0
    x1 = s1 / s0 * x + a1 * (1 - math.exp(-(l1 - l0))) * d0  # first step: DDIM in data prediction
    d1 = (x1 - s1 * gmm_eps(x1, grid[1])) / a1
    r = (l1 - l0) / (l2 - l1)
    x2 = s2 / s1 * x1 + a2 * (1 - math.exp(-(l2 - l1))) * ((1 + 1 / (2 * r)) * d1 - d0 / (2 * r))
    states = dpm_solver_pp_multistep(gmm_eps, x, grid, ctx, keep=[1, 2])
    assert torch.allclose(states[0], x1, atol=1e-10) and torch.allclose(states[1], x2, atol=1e-10)


def test_reference_grid_passes_every_point_with_near_equal_log_snr_steps():
    from dpm_align.aligner_core.evaluation.compare import reference_grid

    grid = [999.0, 990.0, 754.3, 380.2, 0.0]  # a short first interval and a long last one
    fine, positions = reference_grid(grid, 100, SCHED)
    assert [fine[k] for k in positions] == grid and 100 <= len(fine) - 1 <= 100 + len(grid) - 1
    steps = SCHED.lambda_(torch.tensor(fine, dtype=torch.float64)).diff()
    h = float(SCHED.lambda_(torch.tensor([grid[-1]], dtype=torch.float64)) -
              SCHED.lambda_(torch.tensor([grid[0]], dtype=torch.float64))) / 100
    assert bool((steps > 0).all()) and float(steps.max()) <= h * (1 + 1e-9)


def test_deterministic_samplers_take_no_eta():
    assert resolve_eta("edm-heun", None) == 0.0
    with pytest.raises(UsageError, match="--eta does not apply to the deterministic sampler dpm-solver-2"):
        resolve_eta("dpm-solver-2", 0.5)


# ------------------------------------------------------------------ analytic-DPM
def test_analytic_step_matches_bao_et_al_theorem_1(eps):
    """Optimal variance of the DDIM family with lambda = eta * DDPM std, written from alphas_cumprod."""
    abar = SCHED.alphas_cumprod
    t, s, gamma = 700, 350, 0.93
    x, z = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.randn(2, 1, 8, 8, dtype=torch.float64)
    for name, eta in (("analytic-ddim", 0.0), ("analytic-ddpm", 1.0)):
        at, as_ = abar[t], abar[s]
        e = eps(x, float(t)).double()
        lam2 = eta**2 * (1 - as_) / (1 - at) * (1 - at / as_)
        mean = torch.sqrt(as_) * (x - torch.sqrt(1 - at) * e) / torch.sqrt(at) + torch.sqrt(1 - as_ - lam2) * e
        var = lam2 + (torch.sqrt(1 - as_ - lam2) - torch.sqrt(as_ * (1 - at) / at)) ** 2 * (1 - gamma)
        ctx = StepContext(SCHED, resolve_eta(name, None), lambda: z, lambda _t: gamma)
        ours = run_sampler(name, eps, x, [float(t), float(s)], None, ctx)
        assert torch.allclose(ours, mean + torch.sqrt(var) * z, atol=1e-10, rtol=1e-9)
    final = run_sampler("analytic-ddim", eps, x, [100.0, 0.0], None, StepContext(SCHED, 0.0, lambda: z, lambda _t: gamma))
    assert torch.allclose(final, run_sampler("ddim", eps, x, [100.0, 0.0], None, StepContext(SCHED)))  # no noise at the end


def test_gamma_estimates_on_the_exact_gmm_model(gmm_eps):
    from dpm_align.aligner_core.sampling.analytic import estimate_gammas

    data = gmm_eps.net.mixture.sample(128, torch.Generator().manual_seed(0)).reshape(128, 1, 8, 8)
    times = [999.0, 500.0, 100.0]
    from_data = estimate_gammas(gmm_eps, times, (1, 8, 8), data=data)
    generated = estimate_gammas(gmm_eps, times, (1, 8, 8), num_samples=64)
    assert from_data.source == "data" and generated.source == "generated"
    # E||eps*||^2/d = 1 - E||eps - eps*||^2/d <= 1, up to Monte Carlo error; ~1 at t = T-1
    assert all(0.0 < g < 1.1 for g in from_data.gammas)
    assert from_data.gammas[0] == pytest.approx(1.0, abs=0.1)
    assert from_data.gammas[0] > from_data.gammas[1] > from_data.gammas[2]
    assert generated.gammas == pytest.approx(from_data.gammas, abs=0.05)
    assert from_data(500.2) == from_data.gammas[1]
