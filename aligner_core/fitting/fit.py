"""Fitting the aligned timesteps tau_i (Sec. 3.3 and 3.5, Algorithm 1, Eq. 5 and Eq. 8).

Two strategies:
- ``sequential`` (Algorithm 1): for i = K..1, x~_{t_i} comes from running the *aligned* sampler
  from x_T ~ N(0, I) through the already fitted tau_K..tau_{i+1}; no data set is needed
  (x_T = alpha_T x_0 + sigma_T eps is pure noise up to alpha_T).
- ``parallel`` (Eq. 8): x_{t_i} = alpha_{t_i} x_0 + sigma_{t_i} eps from real data, every step
  independent of the others.

Objectives and optimizers are pluggable (``OBJECTIVES``, ``OPTIMIZERS``); a ``FitConfig`` names
them, and ``PRESETS`` holds named configurations. Besides the per-step objectives, ``joint``
(LD3-style, Tong et al. 2024) fits all taus at once with Adam so that the sampler's end point
matches an accurate teacher's from the same x_T (``fit_joint``). ``official`` reproduces the paper's code:
tau = r * t with r initialised at 1, Adam lr 2e-3, 500 iterations per step with fresh noise
each iteration, the final step (to t_0) left untuned.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.utils.checkpoint
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..distributed import World
from ..errors import UsageError
from ..progress import Progress
from ..evaluation.compare import reference_grid, reference_solve, refine_grid
from ..models.model import bind_labels, conditioning_of
from ..sampling.samplers import EpsFn, StepContext, get_sampler, is_stochastic, nominal_eval_times, run_sampler
from ..sampling.schedule import NoiseSchedule



class FitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: Literal["sequential", "parallel"] = "sequential"
    objective: str = "paper"
    optimizer: str = "golden"
    lr: float = Field(2e-3, description="adam: learning rate of r in tau = r * t")
    iterations: int = Field(10, ge=1, description="per step: adam steps, or golden-section loss evaluations")
    batch_size: int = Field(64, ge=1, description="network batch; adam minibatch")
    num_samples: int = Field(64, ge=1, description="trajectories (sequential) or data images (parallel) per step")
    fresh_noise: bool = Field(False, description="draw new x_T / x_0 every adam iteration (Algorithm 1 lines 3-5)")
    tune_last_step: bool = Field(False, description="also fit the final step to t_0")
    window: float = Field(0.5, gt=0, description="golden: search tau in t_i +- window * (t_i - t_{i-1})")
    teacher_steps: int = Field(20, ge=2, description="teacher objective: DDIM sub-steps per interval")
    teacher_nfe: int = Field(60, ge=2, description="joint objective: network evaluations of the teacher "
                             "(DPM-Solver++(2M), steps uniform in log-SNR from t_K to t_0)")
    candidates: tuple[Literal["taus", "grid+taus", "grid"], ...] | None = Field(
        None, description="joint objective: what to fit (taus alone, the grid's interior points with the taus, the grid "
        "alone; the grid needs ddim); the one with the lowest held-out loss wins. None: taus and grid+taus for ddim, else taus")
    holdout: int = Field(32, ge=1, description="joint objective: held-out noises that pick the best iterate and candidate")
    eval_every: int = Field(10, ge=1, description="joint objective: Adam steps between held-out evaluations")
    continue_iterations: int | None = Field(
        None, ge=1, description="joint objective: Adam steps of a candidate that continues another's fit (grid+taus "
        "after taus); None: iterations")
    continue_lr: float | None = Field(
        None, gt=0, description="joint objective: Adam learning rate of a candidate that continues another's fit; None: lr")
    patience: int | None = Field(
        None, ge=1, description="joint objective: held-out checks in a row that do not beat a candidate's best iterate "
        "(its start included) after which it stops; the learning-rate schedule stays that of the full run, so a stopped "
        "fit is a prefix of the full one. None (default): never stop early; 2 saved 20% of the zoo's Adam steps "
        "but lost 1-10% end-point error on 5 of its 24 settings (docs/RESULTS.md)")
    checkpointing: bool = Field(False, description="joint objective: keep no network activations in the forward pass and "
                                "recompute them in the backward one (memory of one evaluation instead of all NFE; about "
                                "one more forward pass of time); the taus are the same")
    warmup: float = Field(0.0, ge=0, lt=1, description="joint objective: fraction of a candidate's Adam steps over which "
                          "the learning rate rises linearly from 0 (then the cosine decay)")
    retry_gain: float | None = Field(
        None, gt=0, le=1, description="joint objective: when the winner's held-out loss is less than this fraction below "
        "the plain sampler's, fit the candidates again from the plain times with retry_iterations Adam steps at retry_lr "
        "on retry_samples noises, judge the candidates of both rounds on retry_holdout held-out noises and keep the "
        "lowest held-out loss of all. None: no retry")
    retry_iterations: int = Field(1000, ge=1, description="joint objective: Adam steps of each candidate of the retry")
    retry_samples: int = Field(512, ge=1, description="joint objective: the retry's pool of noises (the first pool and "
                               "fresh noises; at least the first pool)")
    retry_holdout: int = Field(256, ge=1, description="joint objective: the retry's held-out noises (the first ones and "
                               "fresh ones; at least those), on which the candidates of both rounds are judged")
    retry_lr: float = Field(0.05, gt=0, description="joint objective: Adam learning rate of the retry")
    norm_weight: float = Field(0.0, ge=0, description="joint objective: weight of the per-sample squared difference of "
                                "mean squares (end point vs teacher), a term against shrunken samples (off by default: "
                                "on heavy-tailed models it outweighed the distance, docs/RESULTS.md)")


PRESETS: dict[str, FitConfig] = {
    # Fast and deterministic: derivative-free golden-section search of Eq. 5 on a fixed sample.
    "golden": FitConfig(),
    # The official implementation's settings (see module docstring).
    "official": FitConfig(optimizer="adam", lr=2e-3, iterations=500, batch_size=64, fresh_noise=True),
    # All taus jointly against the end point of a DPM-Solver++(2M) teacher with 60 evaluations;
    # lr in units of the step width (tau = t + delta * (t - s)), iterations = Adam steps per candidate.
    "joint": FitConfig(objective="joint", optimizer="adam", lr=0.05, iterations=50, batch_size=8, num_samples=64),
}
# ``default`` is chosen by measurement (docs/RESULTS.md): ``joint`` for deterministic samplers,
# ``golden`` for stochastic ones (the joint objective needs eta = 0) and whenever the objective,
# optimizer or strategy is set explicitly.
PRESET_NAMES = ("default", *PRESETS)
# The default for DDIM at NFE <= SMALL_NFE: the joint fit with 80 + 80 Adam steps at lr 0.02. On the
# zoo's 12 NFE-5 settings it met the issue-9 targets in all 6 uniform ones (1024-sample eval), where
# 50 + 50 at 0.05 missed two (digits8 x0.913, mnist16-v-cosine x0.920); at NFE 10 it was worse on 4
# of 6 models, so NFE 10 keeps the preset. Chosen on those models; on a held-out seventh model it was
# validated better where the preset was not, but at x0.970 (docs/RESULTS.md; measured on DDIM only).
SMALL_NFE = 5
SMALL_NFE_JOINT = {"lr": 0.02, "iterations": 80}
# The default for DDIM at NFE <= RETRY_NFE, unless --iterations is given: when its fit gains less than
# RETRY_GAIN (the 10% end-point target) on the held-out noises, a longer fit (1000 + 1000 Adam steps
# at lr 0.05 on a pool of 512 noises, every candidate judged on 256 held-out noises) is tried too. 300 steps
# on the first 64 + 32 noises (the retry until 2026-11-29, eighth) depended on the seed: on mnist16-v-cosine
# uniform NFE 5 the grid+taus retry never beat its start at seeds 1 and 2 (end-point error -10% instead of
# -15% at seed 0). A fit that gains 10% or more (the demo) takes exactly the steps it took before
# (docs/RESULTS.md).
RETRY_NFE = 10
RETRY_GAIN = 0.1
# Options of the joint fit only, 0 meaning off: what each does, for the error when given with another objective.
JOINT_ONLY = {"patience": "--patience stops joint fits early", "retry_gain": "--retry-gain retries joint fits"}


def resolve_config(preset: str, strategy: str | None = None, *, stochastic: bool = False, sampler: str | None = None,
                   nfe: int | None = None, **overrides) -> FitConfig:
    """The fit settings of ``preset`` with ``overrides`` (None values ignored); ``stochastic``:
    whether the sampler draws noise (decides what ``default`` means); ``sampler`` and ``nfe``, the
    request (``default`` for DDIM at NFE <= SMALL_NFE is the joint fit with SMALL_NFE_JOINT; at NFE <= RETRY_NFE
    it retries a fit that gains less than RETRY_GAIN, unless ``iterations`` is given)."""
    if preset not in PRESET_NAMES:
        raise UsageError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESET_NAMES)}")
    few = retry = False
    if preset == "default":
        explicit = strategy is not None or any(overrides.get(k) is not None for k in ("objective", "optimizer"))
        preset = "golden" if stochastic or explicit else "joint"
        ddim = preset == "joint" and sampler == "ddim" and nfe is not None
        few = ddim and nfe <= SMALL_NFE
        retry = ddim and nfe <= RETRY_NFE and overrides.get("iterations") is None
    values = PRESETS[preset].model_dump()
    if few:
        values.update(SMALL_NFE_JOINT)
    if retry:
        values["retry_gain"] = RETRY_GAIN
    if strategy is not None:
        values["strategy"] = strategy
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values["strategy"] not in ("sequential", "parallel"):
        raise UsageError(f"unknown strategy {values['strategy']!r}; choose sequential or parallel")
    if values["objective"] not in (*OBJECTIVES, "joint"):
        raise UsageError(f"unknown objective {values['objective']!r}; choose one of: {', '.join(OBJECTIVES)}, joint")
    if values["objective"] == "joint" and (values["optimizer"] != "adam" or values["strategy"] != "sequential"):
        raise UsageError("the joint objective fits all taus together with adam from noise; use --preset joint "
                         "(not --optimizer golden or --strategy parallel)")
    if values.get("candidates") is not None and values["objective"] != "joint":
        raise UsageError("--candidates chooses among joint fits (taus, grid+taus, grid); use it with the default or "
                         "--preset joint")
    if overrides.get("checkpointing") and values["objective"] != "joint":
        raise UsageError("--gradient-checkpointing saves the joint fit's memory; the per-step fits keep no gradients "
                         "through the network: drop it, or use the default or --preset joint")
    for field, what in JOINT_ONLY.items():
        if overrides.get(field) is not None and values["objective"] != "joint":
            raise UsageError(f"{what}; use it with the default or --preset joint")
        if values.get(field) == 0:  # 0: off (run every planned step, never retry)
            values[field] = None
    if values["optimizer"] not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {values['optimizer']!r}; choose one of: {', '.join(OPTIMIZERS)}")
    try:
        return FitConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"invalid fit settings: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


# ---------------------------------------------------------------- objectives
@dataclass(frozen=True)
class Objective:
    """``target(eps, x_t, t, s, config)`` is computed once per sample (no tau in it);
    ``loss(eps, x_s, s, target)`` returns one loss per sample for the state x_s reached from x_t
    with a candidate tau. ``deterministic_only``: needs eta = 0."""

    target: Callable[[EpsFn, torch.Tensor, float, float, "FitConfig"], torch.Tensor]
    loss: Callable[[EpsFn, torch.Tensor, float, torch.Tensor], torch.Tensor]
    deterministic_only: bool = False


def _paper_target(eps: EpsFn, x_t: torch.Tensor, t: float, s: float, config: "FitConfig") -> torch.Tensor:
    return eps(x_t, t)


def _paper_loss(eps: EpsFn, x_s: torch.Tensor, s: float, target: torch.Tensor) -> torch.Tensor:
    # Eq. 5 / Eq. 8: || eps(f(x_t, tau), t_{i-1}) - eps(x_t, t_i) ||^2 (mean over dimensions).
    return (eps(x_s, s) - target).square().flatten(1).mean(1)


def _teacher_target(eps: EpsFn, x_t: torch.Tensor, t: float, s: float, config: "FitConfig") -> torch.Tensor:
    # The state at s of a fine DDIM teacher (config.teacher_steps sub-steps) from the same x_t.
    fine, _ = refine_grid([t, s], config.teacher_steps)
    return run_sampler("ddim", eps, x_t, fine, None, StepContext(eps.schedule, 0.0))


def _teacher_loss(eps: EpsFn, x_s: torch.Tensor, s: float, target: torch.Tensor) -> torch.Tensor:
    # Per-step trajectory matching: || f(x_t, tau) - x_s^teacher ||^2 (mean over dimensions).
    return (x_s - target).square().flatten(1).mean(1)


OBJECTIVES: dict[str, Objective] = {
    "paper": Objective(_paper_target, _paper_loss),
    "teacher": Objective(_teacher_target, _teacher_loss, deterministic_only=True),
}


def objective_needs_eta0(name: str) -> bool:
    return name == "joint" or OBJECTIVES[name].deterministic_only


# ---------------------------------------------------------------- the per-step problem
@dataclass
class StepProblem:
    """The objective of one step t -> s as a function of the tau of one of its evaluations
    (``index``); the step's other evaluations keep their current ``taus``."""

    eps: EpsFn
    step: Callable[..., torch.Tensor]
    objective: Objective
    schedule: NoiseSchedule
    eta: float
    t: float
    s: float
    batch_size: int
    gamma: Callable[[float], float] | None
    taus: list  # the step's current taus, one per network evaluation
    index: int  # the evaluation being fitted
    center: float  # its nominal network time (tau = center is the plain sampler)

    def advance(self, tau: torch.Tensor | float, batch: "Batch") -> torch.Tensor:
        """One aligned step x_t -> x_s (Eq. 4) of a batch, with its step noise (used when eta > 0)."""
        ctx = StepContext(self.schedule, self.eta, (lambda: batch.noise) if batch.noise is not None else None, self.gamma)
        taus = [tau if k == self.index else v for k, v in enumerate(self.taus)]
        return self.step(bind_labels(self.eps, batch.labels), batch.x_t, self.t, self.s, taus, ctx)

    def losses(self, tau: torch.Tensor | float, batch: "Batch") -> torch.Tensor:
        return self.objective.loss(bind_labels(self.eps, batch.labels), self.advance(tau, batch), self.s, batch.target)

    def mean_loss(self, tau: float, pool: "Batch") -> float:
        """Mean objective over the whole pool, evaluated in batches, without gradients."""
        total = 0.0
        with torch.no_grad():
            for batch in pool.batches(self.batch_size):
                total += float(self.losses(tau, batch).sum())
        return total / pool.size


@dataclass
class Batch:
    """States x_t at a step's start with what the step needs per sample: step noise (stochastic
    samplers), class labels (class-conditional models) and the objective's target."""

    x_t: torch.Tensor
    noise: torch.Tensor | None
    labels: torch.Tensor | None
    target: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return self.x_t.shape[0]

    def parts(self) -> tuple[torch.Tensor | None, ...]:
        return self.x_t, self.noise, self.labels, self.target

    def select(self, idx: slice | torch.Tensor) -> "Batch":
        return Batch(*(None if v is None else v[idx] for v in self.parts()))

    def batches(self, batch_size: int):
        for i in range(0, self.size, batch_size):
            yield self.select(slice(i, i + batch_size))

    def concat(self, more: "Batch") -> "Batch":
        return Batch(*(None if a is None else torch.cat([a, b]) for a, b in zip(self.parts(), more.parts())))


BatchSource = Callable[[], Batch]


# ---------------------------------------------------------------- optimizers
def golden_search(problem: StepProblem, pool: Batch, draw: BatchSource, config: FitConfig) -> float:
    """Golden-section search of the pool-mean objective over tau in center +- window * (t - s),
    within [0, ``schedule.tau_max``].

    Deterministic (fixed pool, no gradients); keeps tau = center (the plain sampler's time)
    unless a better value is found.
    """
    t, s, center = problem.t, problem.s, problem.center
    lo, hi = max(0.0, center - config.window * (t - s)), center + config.window * (t - s)
    if problem.schedule.tau_max is not None:
        hi = min(hi, problem.schedule.tau_max)
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = hi - inv_phi * (hi - lo), lo + inv_phi * (hi - lo)
    fc, fd = problem.mean_loss(c, pool), problem.mean_loss(d, pool)
    for _ in range(max(0, config.iterations - 2)):
        if fc < fd:
            hi, d, fd = d, c, fc
            c = hi - inv_phi * (hi - lo)
            fc = problem.mean_loss(c, pool)
        else:
            lo, c, fc = c, d, fd
            d = lo + inv_phi * (hi - lo)
            fd = problem.mean_loss(d, pool)
    best, fbest = (c, fc) if fc < fd else (d, fd)
    return best if fbest < problem.mean_loss(center, pool) else center


def adam_ratio(problem: StepProblem, pool: Batch, draw: BatchSource, config: FitConfig) -> float:
    """The official optimizer: tau = r * t (t: the evaluation's nominal time), r initialised at 1,
    Adam on minibatches; tau at most ``schedule.tau_max``."""
    r = torch.ones((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([r], lr=config.lr)
    tau_max = problem.schedule.tau_max
    for _ in range(config.iterations):
        tau = r * problem.center
        loss = problem.losses(tau if tau_max is None else tau.clamp(max=tau_max), draw()).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    tau = float(r.detach()) * problem.center
    return tau if tau_max is None else min(tau, tau_max)


Optimizer = Callable[[StepProblem, Batch, BatchSource, FitConfig], float]
OPTIMIZERS: dict[str, Optimizer] = {"golden": golden_search, "adam": adam_ratio}


# ---------------------------------------------------------------- the fit
class CandidateFit(BaseModel):
    """One joint-fit candidate: its loss on the held-out noises at its best iterate (after a retry, every
    candidate's on the retry's held-out noises)."""

    model_config = ConfigDict(extra="forbid")

    holdout_loss: float
    best_iteration: int  # Adam steps taken at the kept iterate; 0 = the plain sampler was not beaten
    steps: int | None = None  # Adam steps taken (fewer than planned when stopped by ``patience``; None: before 0.2.0)


@dataclass
class FitResult:
    taus: list[float]
    loss_before: list[float | None]
    loss_after: list[float | None]
    seconds: float
    grid: list[float] | None = None  # the fitted grid (K+1 points, same ends) when the winner fits it
    candidate: str | None = None  # joint: the winning candidate
    candidates: dict[str, CandidateFit] | None = None  # joint: every candidate's held-out result
    num_samples: int | None = None  # joint: the fitting pool's size (at least config.num_samples; after a retry, its pool)


def fit_taus(
    eps: EpsFn,
    schedule: NoiseSchedule,
    grid: Sequence[float],
    sampler: str,
    eta: float,
    config: FitConfig,
    sample_shape: Sequence[int],
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    data: torch.Tensor | None = None,
    gamma: Callable[[float], float] | None = None,
    progress: Progress | None = None,
    world: World = World(),
) -> FitResult:
    """Fit one tau per network evaluation along ``grid`` (sampling order): step by step from t_K,
    and within a step one evaluation at a time. Same seed + device -> same taus. With several
    ranks (torchrun) only the joint objective runs, its work split over them (``fit_joint``)."""
    spec = get_sampler(sampler)
    stochastic = is_stochastic(sampler, eta)
    if objective_needs_eta0(config.objective) and stochastic:
        raise UsageError(f"the {config.objective} objective matches a deterministic teacher; use it with a deterministic "
                         "sampler (ddim, dpm-solver-2, edm-heun)")
    grid_candidates = [c for c in config.candidates or () if c != "taus"]
    if grid_candidates and sampler != "ddim":
        raise UsageError(f"fitting the grid (--candidates {','.join(grid_candidates)}) supports the ddim sampler only, "
                         f"not {sampler}; use --candidates taus")
    if config.objective == "joint":
        return fit_joint(eps, schedule, grid, sampler, config, sample_shape, seed=seed, device=device, progress=progress,
                         world=world)
    check_world(config, world)
    if config.strategy == "parallel" and data is None:
        raise UsageError("the parallel strategy needs data: pass --data (an image folder, an .npz, or mnist|cifar10|digits)")
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    shape = tuple(sample_shape)
    objective = OBJECTIVES[config.objective]
    optimize = OPTIMIZERS[config.optimizer]
    steps, per = len(grid) - 1, spec.evals_per_step
    nominal = nominal_eval_times(sampler, grid, schedule)
    taus = list(nominal)
    before: list[float | None] = [None] * len(taus)
    after: list[float | None] = [None] * len(taus)

    cond = conditioning_of(eps)
    if cond is not None and config.strategy == "parallel":
        raise UsageError("the parallel strategy needs each data image's condition (class label or prompt) for a "
                         "conditional model, which --data does not give; use --strategy sequential")
    sequential = config.strategy == "sequential"

    def randn(n: int) -> torch.Tensor:
        return torch.randn((n, *shape), generator=gen, dtype=torch.float64).to(device)

    def random_labels(n: int) -> torch.Tensor | None:
        return None if cond is None else cond.random_labels(n, gen).to(device)

    def run_prefix(states: Batch, upto: int) -> Batch:
        """Aligned sampler from grid[0] to grid[upto] (fresh step noise when eta > 0)."""
        x, e = states.x_t, bind_labels(eps, states.labels)
        with torch.no_grad():
            for j in range(upto):
                ctx = StepContext(schedule, eta, (lambda n=x.shape[0]: randn(n)) if stochastic else None, gamma)
                x = spec.step(e, x, grid[j], grid[j + 1], taus[j * per : (j + 1) * per], ctx)
        return Batch(x, None, states.labels)

    def data_state(n: int, t: float) -> Batch:
        idx = torch.randint(0, data.shape[0], (n,), generator=gen)
        a, s = schedule.coeffs(t)
        return Batch(a * data[idx].to(device=device, dtype=torch.float64) + s * randn(n), None, None)

    def fresh_states(n: int, j: int, t: float) -> Batch:
        """New x_{t_j}: from new x_T through the fitted steps (sequential) or from data (parallel)."""
        return run_prefix(Batch(randn(n), None, random_labels(n)), j) if sequential else data_state(n, t)

    def make_pool(states: Batch, t: float, s: float) -> Batch:
        noise = randn(states.size) if stochastic else None
        with torch.no_grad():
            target = torch.cat([objective.target(bind_labels(eps, b.labels), b.x_t, t, s, config)
                                for b in states.batches(config.batch_size)])
        return Batch(states.x_t, noise, states.labels, target)

    state = Batch(randn(config.num_samples), None, random_labels(config.num_samples)) if sequential else None
    for j in range(steps):
        t, s = float(grid[j]), float(grid[j + 1])
        evals = range(j * per, (j + 1) * per)
        step_noise = None
        if j < steps - 1 or config.tune_last_step:
            pool = make_pool(state if sequential else data_state(config.num_samples, t), t, s)
            step_noise = pool.noise

            def draw(pool=pool, t=t, s=s, j=j) -> Batch:
                if config.fresh_noise:
                    return make_pool(fresh_states(config.batch_size, j, t), t, s)
                return pool.select(torch.randint(0, pool.size, (min(config.batch_size, pool.size),), generator=gen))

            if progress:
                progress(j, steps, f"step {j + 1}/{steps}: t={t:.1f} -> {s:.1f}")
            for k, e in enumerate(evals):
                problem = StepProblem(eps, spec.step, objective, schedule, eta, t, s, config.batch_size, gamma,
                                      taus[evals.start : evals.stop], k, nominal[e])
                before[e] = problem.mean_loss(nominal[e], pool)
                taus[e] = optimize(problem, pool, draw, config)
                after[e] = problem.mean_loss(taus[e], pool)
        if sequential and j < steps - 1:  # advance the trajectories with the fitted taus
            if step_noise is None and stochastic:
                step_noise = randn(state.size)
            problem = StepProblem(eps, spec.step, objective, schedule, eta, t, s, config.batch_size, gamma,
                                  taus[evals.start : evals.stop], 0, taus[evals.start])
            current = Batch(state.x_t, step_noise, state.labels)
            with torch.no_grad():
                x = torch.cat([problem.advance(taus[evals.start], b) for b in current.batches(config.batch_size)])
            state = Batch(x, None, state.labels)
    if progress:
        progress(steps, steps, "done")
    return FitResult(taus, before, after, time.perf_counter() - start)


def check_world(config: FitConfig, world: World) -> None:
    """Several ranks split the joint fit only; refuse the per-step fits there (before any work)."""
    if world.size > 1 and config.objective != "joint":
        raise UsageError(f"on torchrun, align fits with the joint objective only (the default for deterministic samplers), "
                         f"not {config.objective}/{config.optimizer}; run this fit as one process: dpm-align align ...")


JOINT_CANDIDATES = ("taus", "grid+taus", "grid")
DEFAULT_CANDIDATES = ("taus", "grid+taus")  # ddim; "grid" alone rarely won on the mixture (docs/RESULTS.md)
POOL_PER_PARAMETER = 4  # fitting noises per fitted number, at least
RETRIED = " (retry)"  # the label of a retried candidate: "taus (retry)", "grid+taus (retry)"


def fit_joint(
    eps: EpsFn,
    schedule: NoiseSchedule,
    grid: Sequence[float],
    sampler: str,
    config: FitConfig,
    sample_shape: Sequence[int],
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    world: World = World(),
) -> FitResult:
    """All taus at once (LD3-style): tau_e = t_e + delta_e * h_e (h_e: the width of e's step),
    delta from 0, tau in [0, ``schedule.tau_max``], Adam on minibatches of a fixed pool of x_T,
    loss = mean over samples of the RMS distance of the sampler's end point to a teacher's from the same x_T (the reference solver of
    ``compare``, ``teacher_nfe`` log-SNR-uniform steps of DPM-Solver++(2M) from t_K to t_0), both
    as delivered (``EpsModel.delivered``: a pixel model's clamped to [-1, 1]; straight-through
    gradient): the verdict's end-point L2 up to a constant. Its square, used before, was steered by a few
    heavy-tailed samples (CIFAR 16x16 patches, uniform NFE 10: held-out loss -14%, verdict +8%; with
    the distance itself: -33%). ``norm_weight`` adds the squared difference of the mean squares
    (per sample), off by default. The learning rate rises over the first ``warmup`` of the steps, then decays
    to 0 on a cosine (``learning_rate_factor``). Deterministic samplers only.

    Candidates (``config.candidates``; ddim: taus and grid+taus by default, other samplers: taus): ``taus``
    alone on the given grid; ``grid+taus``, the interior grid points fitted too, as LD3 learns both
    time sets: t_j = t_K (1 - sum_{k<=j} softmax(z)_k), which keeps the ends and the order, with z
    starting at the given grid, and tau_j = t_j + delta_j (t_j - t_{j+1}); ``grid`` alone (tau_j =
    t_j on the fitted grid). The pool has at least ``POOL_PER_PARAMETER`` noises per fitted number.
    Every ``eval_every`` steps the loss on ``holdout`` further noises (teacher from the same x_T) is
    measured; each candidate keeps its best iterate, the plain sampler (iterate 0) included, stops
    after ``patience`` checks in a row without a gain, and the candidate with the lowest held-out
    loss wins. With ``retry_gain``, a winner less than that fraction below the plain sampler's held-out loss
    sends every candidate through a longer fit (``retry_iterations`` steps at ``retry_lr``, labelled
    "name (retry)") on a larger pool (``retry_samples``: the first pool and fresh noises); the candidates of both
    rounds are then judged on more held-out noises (``retry_holdout``: the first ones and fresh ones), and the
    lowest held-out loss of all wins. ``loss_before`` / ``loss_after`` hold the held-out
    loss of the plain sampler and of the winner for every evaluation.

    With several ranks (torchrun): teacher and held-out batches go to rank b mod N (the batches of
    one process, so the same teacher); each Adam minibatch (the same indices on every rank) is split
    over the ranks and the gradients summed, so every rank takes the same steps; the taus equal one
    process's up to the order of floating-point sums."""
    start = time.perf_counter()
    spec = get_sampler(sampler)
    names = config.candidates or (DEFAULT_CANDIDATES if sampler == "ddim" else ("taus",))
    gen = torch.Generator().manual_seed(int(seed))
    steps, per = len(grid) - 1, spec.evals_per_step
    base = torch.tensor(grid, dtype=torch.float64, device=device)
    nominal = torch.tensor(nominal_eval_times(sampler, grid, schedule), dtype=torch.float64, device=device)
    widths = torch.tensor([grid[j] - grid[j + 1] for j in range(steps) for _ in range(per)], dtype=torch.float64,
                          device=device)
    parameters = max((len(nominal) if name != "grid" else 0) + (steps - 1 if name != "taus" else 0) for name in names)
    n = max(config.num_samples, POOL_PER_PARAMETER * parameters)
    cond = conditioning_of(eps)
    fine, _ = reference_grid([grid[0], grid[-1]], config.teacher_nfe, schedule)
    ctx = StepContext(schedule, 0.0)

    def noises(count: int) -> Batch:
        """``count`` further x_T from ``gen`` (and labels, for a conditional model) with the teacher's end points
        as delivered (a pixel model's clamped to [-1, 1])."""
        x_T = torch.randn((count, *sample_shape), generator=gen, dtype=torch.float64).to(device)
        labels = None if cond is None else cond.random_labels(count, gen).to(device)
        starts = list(Batch(x_T, None, labels).batches(max(config.batch_size, 64)))
        with torch.no_grad():
            mine = [(b, eps.delivered(reference_solve(bind_labels(eps, starts[b].labels), starts[b].x_t, fine, ctx)).cpu())
                    for b in world.batches(len(starts))]
        return Batch(x_T, None, labels, torch.cat(world.all_gather_batches(mine)).to(device))

    everything = noises(n + config.holdout)
    pool, holdout = everything.select(slice(0, n)), everything.select(slice(n, n + config.holdout))

    def losses(batch: Batch, g: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
        net = bind_labels(eps, batch.labels)
        if config.checkpointing and torch.is_grad_enabled():
            net = _checkpointed(net)
        out = run_sampler(sampler, net, batch.x_t, list(g), list(taus.clamp(0.0, schedule.tau_max)), ctx)
        if eps.data_range is not None:  # compared as delivered, like the verdict; the gradient passes the clamp
            # unchanged (straight-through), so a pixel pushed out of range is still pulled back towards the teacher's
            out = out + (eps.delivered(out) - out).detach()
        # the per-sample RMS distance (the verdict's end-point L2 up to the constant sqrt(dim)), not its
        # square: the squared distance let a few heavy-tailed samples steer the fit (docs/RESULTS.md)
        distance = ((out - batch.target).square().flatten(1).mean(1) + 1e-24).sqrt()
        if not config.norm_weight:
            return distance
        power, target_power = out.square().flatten(1).mean(1), batch.target.square().flatten(1).mean(1)
        return distance + config.norm_weight * (power - target_power).square()

    def scorer(held: Batch) -> Callable[[torch.Tensor, torch.Tensor], float]:
        """The mean loss on the held-out noises ``held`` of the sampler on grid g with ``taus``."""
        batches = list(held.batches(max(config.batch_size, 64)))  # no gradients: batches as large as the teacher's

        def holdout_loss(g: torch.Tensor, taus: torch.Tensor) -> float:
            with torch.no_grad():
                total = sum(float(losses(batches[b], g, taus).sum()) for b in world.batches(len(batches)))
            return world.sum(total) / held.size
        return holdout_loss

    holdout_loss = scorer(holdout)
    plain = holdout_loss(base, nominal)
    fits: dict[str, tuple[CandidateFit, torch.Tensor, torch.Tensor]] = {}

    def fit_all(settings: FitConfig, suffix: str, pool: Batch, holdout_loss, plain: float) -> None:
        for k, name in enumerate(sorted(names, key=JOINT_CANDIDATES.index)):
            # grid+taus starts where the taus alone ended (when fitted): the grid then only has to add to it
            warm = fits.get("taus" + suffix) if name == "grid+taus" else None
            fits[name + suffix] = _fit_candidate(name, name + suffix, k, base, nominal, widths, warm, pool, losses,
                                                 holdout_loss, plain, settings, seed, progress, world)

    def best() -> str:
        return min(fits, key=lambda label: fits[label][0].holdout_loss)

    fit_all(config, "", pool, holdout_loss, plain)
    if config.retry_gain is not None and fits[best()][0].holdout_loss > (1 - config.retry_gain) * plain:
        # too small a gain: a longer fit of every candidate on a larger pool, and every candidate of both rounds
        # judged on more held-out noises (the first pool and held-out noises plus fresh ones)
        more_pool, more_held = max(0, config.retry_samples - n), max(0, config.retry_holdout - config.holdout)
        if more_pool + more_held:
            extra = noises(more_pool + more_held)
            pool = pool.concat(extra.select(slice(0, more_pool)))
            holdout = holdout.concat(extra.select(slice(more_pool, None)))
            holdout_loss = scorer(holdout)
            plain = holdout_loss(base, nominal)
            fits.update({label: (fit.model_copy(update={"holdout_loss": holdout_loss(g, taus)}), g, taus)
                         for label, (fit, g, taus) in fits.items()})
        fit_all(config.model_copy(update={"iterations": config.retry_iterations, "lr": config.retry_lr,
                                          "continue_iterations": None, "continue_lr": None}), RETRIED,
                pool, holdout_loss, plain)
    winner = best()
    result, fitted_grid, fitted = fits[winner]
    if progress:
        progress(config.iterations, config.iterations, "done")
    count = len(nominal)
    return FitResult([float(v) for v in fitted.clamp(0.0, schedule.tau_max)], [plain] * count, [result.holdout_loss] * count,
                     time.perf_counter() - start,
                     None if torch.equal(fitted_grid, base) else [float(v) for v in fitted_grid], winner,
                     {label: fit[0] for label, fit in fits.items()}, pool.size)


def _checkpointed(net: EpsFn) -> EpsFn:
    """``net`` whose activations are recomputed in the backward pass (torch.utils.checkpoint)."""
    def call(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        return torch.utils.checkpoint.checkpoint(net, x, t, use_reentrant=False)
    return call


def learning_rate_factor(step: int, iterations: int, warmup_steps: int) -> float:
    """The joint fit's learning rate at Adam step ``step`` (from 0) as a fraction of ``lr``: a linear rise
    over ``warmup_steps`` (1: none, the default), then a cosine decay to 0 at ``iterations``. Without the
    decay the last minibatch steps can throw the taus off a good point (mixture, uniform NFE 5: pool loss
    0.0013 -> 0.012). A 10% rise steadied mnist16-v-cosine's fits but made other zoo settings worse (3 of 6
    at NFE 5, 4 of 5 at NFE 10), so it is off by default (docs/RESULTS.md)."""
    return min(1.0, (step + 1) / warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(step, iterations) / iterations))


def _fit_candidate(name: str, label: str, index: int, base: torch.Tensor, nominal: torch.Tensor, widths: torch.Tensor,
                   start: tuple | None, pool: Batch, losses, holdout_loss, plain: float, config: FitConfig, seed: int,
                   progress: Progress | None, world: World) -> tuple[CandidateFit, torch.Tensor, torch.Tensor]:
    """Adam on one candidate's parameters (see ``fit_joint``), from the plain times or from ``start``
    (the taus-alone fit: its result, grid and taus); its best iterate by held-out loss. ``widths``:
    the width of each evaluation's step; ``label``: its name in the progress messages."""
    gen = torch.Generator().manual_seed(int(seed) * 7919 + index)
    logits = torch.log(base[:-1] - base[1:]).requires_grad_(name != "taus")
    initial = torch.zeros_like(nominal) if start is None else (start[2] - nominal) / widths
    delta = initial.clone().requires_grad_(name != "grid")

    def grid_of(z: torch.Tensor) -> torch.Tensor:
        if name == "taus":
            return base
        inner = base[0] - (base[0] - base[-1]) * torch.cumsum(torch.softmax(z, 0), 0)[:-1]
        return torch.cat([base[:1], inner, base[-1:]])

    def taus_of(g: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        if name == "taus":
            return nominal + widths * d
        return g[:-1] + d * (g[:-1] - g[1:])  # ddim: one evaluation per step, at t_j

    best = (plain, 0, base, nominal) if start is None else (start[0].holdout_loss, 0, base, start[2])
    iterations = config.iterations if start is None or config.continue_iterations is None else config.continue_iterations
    params = [p for p in (delta, logits) if p.requires_grad]
    lr = config.lr if start is None or config.continue_lr is None else config.continue_lr
    opt = torch.optim.Adam(params, lr=lr)
    warm = max(1, round(config.warmup * iterations))
    # without a warm-up, torch's own cosine (its floats differ from the closed form in the last bit)
    decay = (torch.optim.lr_scheduler.LambdaLR(opt, lambda k: learning_rate_factor(k, iterations, warm)) if warm > 1
             else torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations))
    it, misses = 0, 0
    while it < iterations and (config.patience is None or misses < config.patience):
        it += 1
        batch = pool.select(torch.randint(0, pool.size, (min(config.batch_size, pool.size),), generator=gen))
        opt.zero_grad(set_to_none=True)
        if world.size == 1:  # one process: the minibatch mean, exactly as before torchrun support
            g = grid_of(logits)
            losses(batch, g, taus_of(g, delta)).mean().backward()
        else:  # this rank's share of the minibatch; the gradients of the minibatch mean, summed over the ranks
            part = batch.select(slice(world.rank, None, world.size))
            if part.size:
                g = grid_of(logits)
                (losses(part, g, taus_of(g, delta)).sum() / batch.size).backward()
            for p in params:
                if p.grad is None:  # a rank without samples in this minibatch adds nothing
                    p.grad = torch.zeros_like(p)
                world.all_reduce(p.grad)
        opt.step()
        decay.step()
        if it % config.eval_every == 0 or it == iterations:
            with torch.no_grad():
                g = grid_of(logits.detach())
                taus = taus_of(g, delta.detach())
            held = holdout_loss(g, taus)
            if held < best[0]:
                best, misses = (held, it, g, taus), 0
            else:
                misses += 1
            if progress:
                progress(it, iterations, f"joint {label}: step {it}/{iterations}, held-out loss {held:.4g}")
    loss, best_iteration, g, taus = best
    return CandidateFit(holdout_loss=loss, best_iteration=best_iteration, steps=it), g, taus
