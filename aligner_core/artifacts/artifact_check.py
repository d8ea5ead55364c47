"""The one check every reader of a tau artifact runs before using it: ``sample``, ``eval``,
``inspect`` (``--check`` prints what it verified) and ``AlignedScheduler.from_artifact``.

The schema (types, required and unknown keys, list lengths, taus = NFE, key = contents) is checked
by pydantic in ``read_artifact``; ``check_artifact`` checks what a schema cannot: every number
finite, a known sampler and trajectory, the grid strictly decreasing and the kind's grid (or a
fitted grid with the kind's ends), the stored alphas and sigmas those of the stored schedule at the
grid (and alpha^2 + sigma^2 = 1), the evaluation times the sampler's at the grid, the taus inside
the time range and near their evaluation times, the verdict consistent with its numbers; with a
model, that the artifact belongs to it (``check_artifact_matches``). The first problem found is
raised as one ``ArtifactError`` line: the file, the field, what is wrong, the fix.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .artifact import ModelInfo, TauArtifact, check_artifact_matches, read_artifact
from ..errors import ArtifactError
from ..sampling.samplers import SAMPLERS, nominal_eval_times
from ..sampling.schedule import LAMBDA_MIN, NoiseSchedule
from ..sampling.trajectory import TRAJECTORIES, make_grid

RECREATE = "re-create it with `dpm-align align`"
RTOL = 1e-6  # stored vs recomputed times and coefficients, relative to max(1, |value|)
TAU_WINDOW = 2.0  # |tau - t| <= TAU_WINDOW x the width of tau's step (t: its plain evaluation time)


def check_artifact(artifact: TauArtifact, model: ModelInfo | None = None, *, source: str | Path = "artifact") -> list[str]:
    """Raise ``ArtifactError`` naming the first problem of ``artifact`` (``source``: the file, for
    the message); with ``model``, also ``check_artifact_matches`` (sha256, schedule, prediction
    type). Returns what was verified, one line per check.

    The tau window: a tau must lie within ``TAU_WINDOW`` = 2 widths of its step (t_j - t_{j+1}) of
    the plain sampler's time of its evaluation, and inside [0, T - 1 + width of the first step]
    (T - 1: the last trained time), or [0, t_max] where the schedule's grids start before T - 1
    (``NoiseSchedule.tau_max``: no fit feeds the network a later time). The fitters search near
    the plain time: golden within half a width, the joint fit in units of the width from 0; the fitted artifacts measured so far
    moved a tau by at most 0.97 widths (an official-preset fit on the mixture, whose first tau of
    1037.95 is also why the range reaches a step above T - 1, where the schedule extrapolates
    linearly). Twice the width leaves room for those fits and still refuses a tau from another
    step, another time unit (sigma, a 0..1 time) or a typo."""
    problem = next(_problems(artifact), None)
    if problem is not None:
        raise ArtifactError(f"{source}: {problem}")
    traj, validation = artifact.trajectory, artifact.validation
    checks = [
        f"schema v{artifact.schema_version}, key matches its contents, every number finite",
        f"{traj.label} grid decreasing; alphas, sigmas and evaluation times match the stored schedule and sampler",
        f"{len(artifact.taus)} taus (= nfe) in [0, {_tau_range(artifact)[0]:g}], each within {TAU_WINDOW:g} step "
        "widths of its evaluation time",
        "no validation block" if validation is None else f"verdict {validation.verdict!r} consistent with its numbers",
    ]
    if model is not None:
        check_artifact_matches(artifact, model=model, path=source)
        checks.append(f"belongs to model {model.source} (sha256 {model.sha256[:16]}…)")
    return checks


def load_artifact(path: str | Path) -> TauArtifact:
    """``read_artifact`` (the schema) then ``check_artifact`` (the values): how every command reads
    an artifact; the model and the request are matched by ``check_artifact_matches``."""
    artifact = read_artifact(Path(path))
    check_artifact(artifact, source=path)
    return artifact


def _problems(artifact: TauArtifact) -> Iterator[str]:
    """Every problem found, in order; each check runs only when the ones before it passed (a
    grid check needs a known trajectory kind, a tau check the grid)."""
    for check in (_non_finite, _settings, _schedule, _grid, _coefficients, _eval_times, _taus, _validation,
                  _analytic):
        problem = check(artifact)
        if problem is not None:
            yield problem
            return


def _non_finite(artifact: TauArtifact) -> str | None:
    for where, value in _numbers(artifact.model_dump(mode="python"), ""):
        if not math.isfinite(value):
            return f"{where} is {value}: every number in an artifact must be finite; {RECREATE}"
    return None


def _numbers(value: Any, where: str) -> Iterator[tuple[str, float]]:
    if isinstance(value, float):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{where}[{i}]")


def _settings(artifact: TauArtifact) -> str | None:
    sampler, traj, model = artifact.sampler, artifact.trajectory, artifact.model
    if sampler.name not in SAMPLERS:
        return f"sampler.name {sampler.name!r} is not a sampler of this dpm-align ({', '.join(SAMPLERS)}); {RECREATE}"
    spec = SAMPLERS[sampler.name]
    if spec.default_eta is None and sampler.eta != 0 or sampler.eta < 0:
        allowed = "0 (a deterministic sampler)" if spec.default_eta is None else ">= 0"
        return f"sampler.eta {sampler.eta:g} is not allowed for {sampler.name}: it must be {allowed}; {RECREATE}"
    if traj.kind not in TRAJECTORIES:
        return f"trajectory.kind {traj.kind!r} is not a trajectory of this dpm-align ({', '.join(TRAJECTORIES)}); {RECREATE}"
    if (traj.kind == "edm") != (traj.rho is not None) or traj.rho is not None and traj.rho <= 0:
        return f"trajectory.rho {traj.rho} does not fit the {traj.kind} trajectory (a positive rho for edm only); {RECREATE}"
    if traj.nfe != traj.steps * spec.evals_per_step:
        return (f"trajectory.nfe {traj.nfe} != steps {traj.steps} x {spec.evals_per_step} evaluation(s) per step of "
                f"{sampler.name}; {RECREATE}")
    if model.num_train_timesteps != model.schedule.num_train_timesteps:
        return (f"model.num_train_timesteps {model.num_train_timesteps} != model.schedule.num_train_timesteps "
                f"{model.schedule.num_train_timesteps}; {RECREATE}")
    return None


def _schedule(artifact: TauArtifact) -> str | None:
    alphas = NoiseSchedule(artifact.model.schedule).alphas_cumprod
    if not bool(torch.all((alphas > 0) & (alphas <= 1))):
        return (f"model.schedule gives alphas_cumprod outside (0, 1] (every beta must lie in [0, 1)); fix the schedule "
                f"or {RECREATE}")
    return None


def _grid(artifact: TauArtifact) -> str | None:
    traj = artifact.trajectory
    stored = traj.timesteps
    for i in range(traj.steps):
        if not stored[i] > stored[i + 1]:
            return (f"trajectory.timesteps must decrease strictly (timesteps[{i}] = {stored[i]:g}, "
                    f"timesteps[{i + 1}] = {stored[i + 1]:g}); {RECREATE}")
    schedule = NoiseSchedule(artifact.model.schedule)
    grid = make_grid(traj.kind, traj.steps, schedule, traj.rho)
    last = schedule.num_train_timesteps - 1
    if schedule.tau_max is not None and _close(stored[0], last):
        return (f"trajectory.timesteps[0] = {stored[0]:g}: grids of this schedule now start at t = {grid[0]:.6g}, where "
                f"log-SNR = {LAMBDA_MIN:g} (not at its last timestep, where it is below); {RECREATE}")
    if traj.fitted:  # a fitted grid keeps the kind grid's ends
        for end in (0, -1):
            if not _close(stored[end], grid[end]):
                return (f"trajectory.timesteps[{end}] = {stored[end]:g}, but a fitted grid keeps the {traj.label} "
                        f"grid's end {grid[end]:g}; re-create it with `dpm-align align --candidates grid+taus`")
        return None
    return _first_difference("trajectory.timesteps", stored, grid, f"the {traj.label} grid of the stored schedule")


def _coefficients(artifact: TauArtifact) -> str | None:
    traj = artifact.trajectory
    for i, (a, s) in enumerate(zip(traj.alphas, traj.sigmas)):  # variance preserving, whatever the schedule
        if not _close(a * a + s * s, 1.0):
            return (f"trajectory.alphas[{i}]^2 + trajectory.sigmas[{i}]^2 = {a * a + s * s:.9g}, not 1 (variance "
                    f"preserving); {RECREATE}")
    schedule = NoiseSchedule(artifact.model.schedule)
    grid = torch.tensor(traj.timesteps, dtype=torch.float64)
    for name, stored, expected in (("alphas", traj.alphas, schedule.alpha(grid).tolist()),
                                   ("sigmas", traj.sigmas, schedule.sigma(grid).tolist())):
        problem = _first_difference(f"trajectory.{name}", stored, expected, "the stored schedule at the grid")
        if problem is not None:
            return problem
    return None


def _eval_times(artifact: TauArtifact) -> str | None:
    expected = nominal_eval_times(artifact.sampler.name, artifact.trajectory.timesteps,
                                  NoiseSchedule(artifact.model.schedule))
    return _first_difference("eval_times", artifact.eval_times, expected,
                             f"the {artifact.sampler.name} sampler's evaluation times on the grid")


def _taus(artifact: TauArtifact) -> str | None:
    grid, per = artifact.trajectory.timesteps, artifact.trajectory.nfe // artifact.trajectory.steps
    ceiling, what = _tau_range(artifact)
    for e, (tau, t) in enumerate(zip(artifact.taus, artifact.eval_times)):
        if not 0 <= tau <= ceiling:
            return f"taus[{e}] = {tau:g} is outside the model's time range [0, {ceiling:g}] ({what}); {RECREATE}"
        width = grid[e // per] - grid[e // per + 1]
        if not abs(tau - t) <= TAU_WINDOW * width:
            return (f"taus[{e}] = {tau:g} is {abs(tau - t):g} from its evaluation time {t:g}, more than {TAU_WINDOW:g} "
                    f"x its step's width {width:g}; {RECREATE}")
    return None


def _tau_range(artifact: TauArtifact) -> tuple[float, str]:
    """The latest time a fit feeds the network, and what it is: a clipped schedule's t_max
    (``NoiseSchedule.tau_max``), else T - 1 plus the first step's width."""
    tau_max = NoiseSchedule(artifact.model.schedule).tau_max
    if tau_max is not None:
        return tau_max * (1 + RTOL), "where the clipped schedule's grids start"
    grid = artifact.trajectory.timesteps
    return artifact.model.schedule.num_train_timesteps - 1 + (grid[0] - grid[1]), "T - 1 plus one step"


def _validation(artifact: TauArtifact) -> str | None:
    v = artifact.validation
    if v is None:
        return None
    if v.better != (v.verdict == "better"):
        return (f"validation.better is {v.better} but validation.verdict is {v.verdict!r} (better must be "
                f"verdict == 'better'); {RECREATE}")
    if v.verdict == "unchanged":
        if v.num_samples != 0 or v.changes:
            return (f"validation.verdict 'unchanged' (the fit kept the plain times) needs num_samples 0 and no changes, "
                    f"not {v.num_samples} samples and {len(v.changes)} change(s); {RECREATE}")
        if artifact.taus != artifact.eval_times or artifact.trajectory.fitted:
            return f"validation.verdict 'unchanged' but the taus or the grid differ from the plain sampler's; {RECREATE}"
    missing = [m for m in v.metrics if m not in v.changes]
    if missing:
        return f"validation.metrics names {missing[0]!r}, which validation.changes lacks; {RECREATE}"
    for block in ("baseline", "aligned"):
        value = getattr(v, block).get("end_l2")
        if value is not None and not value >= 0:
            return f"validation.{block}.end_l2 = {value:g} is negative (an L2 distance); {RECREATE}"
    return None


def _analytic(artifact: TauArtifact) -> str | None:
    table, sampler = artifact.analytic, artifact.sampler.name
    if table is None:
        return None
    if not SAMPLERS[sampler].needs_gamma:
        return f"analytic holds a Gamma table, but the {sampler} sampler does not use one; {RECREATE}"
    if table.times != artifact.trajectory.timesteps[:-1] or len(table.gammas) != len(table.times):
        return f"analytic.times/gammas must give one Gamma per step start of the grid (timesteps[:-1]); {RECREATE}"
    return None


def _first_difference(field: str, stored: Sequence[float], expected: Sequence[float], what: str) -> str | None:
    for i, (a, b) in enumerate(zip(stored, expected)):
        if not _close(a, b):
            return f"{field}[{i}] = {a:.9g} differs from {what} ({b:.9g}); {RECREATE}"
    return None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= RTOL * max(1.0, abs(b))  # False for NaN
