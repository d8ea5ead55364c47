"""High-level operations behind the commands: align, find taus, sample, trajectory gap.

Every CLI command is a thin wrapper over one function here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import torch
from pydantic import BaseModel, ConfigDict

from . import __version__
from .sampling.analytic import GammaTable
from .artifacts.artifact import (
    FitInfo,
    SamplerInfo,
    TauArtifact,
    TrajectoryInfo,
    artifact_key,
    trajectory_label,
    cache_path,
    check_artifact_matches,
    utc_now,
)
from .artifacts.artifact_check import load_artifact
from .evaluation.compare import REFERENCE_DESCRIPTION, Candidate, paired_trajectories, reference_nfe_of, union_grid
from .data import load_data
from .distributed import World
from .images import to_uint8
from .sample_dir import FORMATS, SampleDir, SampleManifest
from .errors import DpmAlignError, UsageError
from .evaluation.features import FeatureReference
from .fitting.fit import FitConfig, check_world, fit_taus
from .sampling.gamma_cache import cached_gammas
from .models.loading import LoadedModel
from .evaluation.metrics import frechet_distance
from .progress import Progress
from .sampling.samplers import PerSampleNoise, StepContext, get_sampler, nominal_eval_times, resolve_eta, run_sampler
from .sampling.schedule import NoiseSchedule
from .sampling.trajectory import make_grid, resolve_rho
from .evaluation.validation import ValidationSettings, reference_rms, run_off_message, unchanged, validate
from .evaluation.verdict import kernel_change, mean_ratio_change

DEFAULT_NFE, DEFAULT_SAMPLER, DEFAULT_TRAJECTORY = 10, "ddim", "uniform"


@dataclass(frozen=True)
class SamplingPlan:
    """A sampler on a trajectory: what an artifact is fitted for and keyed by."""

    sampler: str
    eta: float
    trajectory: str
    nfe: int
    rho: float | None
    grid: tuple[float, ...]  # the grid sampled on
    eval_times: tuple[float, ...]  # the plain sampler's network time of every evaluation
    gammas: GammaTable | None = None  # analytic samplers only
    base_grid: tuple[float, ...] | None = None  # with a fitted grid: the kind's grid (the baseline's)

    def with_grid(self, grid: Sequence[float], schedule: NoiseSchedule) -> "SamplingPlan":
        """The plan on a fitted ``grid`` (same ends); the kind's grid stays the baseline's."""
        return replace(self, grid=tuple(float(t) for t in grid), base_grid=self.baseline_grid,
                       eval_times=tuple(nominal_eval_times(self.sampler, grid, schedule)))

    @property
    def baseline_grid(self) -> tuple[float, ...]:
        """The grid of the plain sampler this plan is compared with."""
        return self.base_grid if self.base_grid is not None else self.grid

    @property
    def needs_gammas(self) -> bool:
        return get_sampler(self.sampler).needs_gamma

    def with_gammas(self, model: LoadedModel, *, table: GammaTable | None = None, data: torch.Tensor | None = None,
                    seed: int = 0, device: torch.device | str = "cpu") -> "SamplingPlan":
        """The plan with Gamma_t for an analytic sampler: ``table`` if given, else from the per-model
        Gamma cache (estimated on first use)."""
        if not self.needs_gammas:
            return self
        if table is None:
            table = cached_gammas(model.eps, model.info.sha256, self.grid[:-1], model.sample_shape, data=data,
                                  seed=seed, device=device)
        return replace(self, gammas=table)

    @classmethod
    def make(cls, schedule: NoiseSchedule, sampler: str, eta: float | None, trajectory: str, nfe: int,
             rho: float | None = None) -> "SamplingPlan":
        per = get_sampler(sampler).evals_per_step
        eta = resolve_eta(sampler, eta)
        limit = per * schedule.num_train_timesteps
        if not per <= nfe <= limit:
            raise UsageError(f"--nfe {nfe} is out of range; use {per} to {limit} for {sampler} "
                             f"({per} network evaluation(s) per step, at most num_train_timesteps steps)")
        if nfe % per:
            raise UsageError(f"--nfe {nfe} is not a multiple of {per}: {sampler} makes {per} network evaluations per step")
        grid = make_grid(trajectory, nfe // per, schedule, rho)
        return cls(sampler, eta, trajectory, nfe, resolve_rho(trajectory, rho), tuple(grid),
                   tuple(nominal_eval_times(sampler, grid, schedule)))

    @classmethod
    def make_with_defaults(cls, schedule: NoiseSchedule, sampler: str | None, eta: float | None,
                           trajectory: str | None, nfe: int | None, rho: float | None = None) -> "SamplingPlan":
        """``make`` with the defaults (ddim, uniform, NFE 10) for the options left out (None)."""
        return cls.make(schedule, DEFAULT_SAMPLER if sampler is None else sampler, eta,
                        DEFAULT_TRAJECTORY if trajectory is None else trajectory, DEFAULT_NFE if nfe is None else nfe, rho)

    @property
    def steps(self) -> int:
        return len(self.grid) - 1

    @property
    def label(self) -> str:
        return trajectory_label(self.trajectory, self.rho)

    def key(self, model: LoadedModel) -> str:
        return artifact_key(model.info.sha256, self.sampler, self.eta, self.label, self.nfe, model.eps.conditioning)

    def trajectory_info(self, schedule: NoiseSchedule) -> TrajectoryInfo:
        grid = torch.tensor(self.grid, dtype=torch.float64)
        return TrajectoryInfo(
            kind=self.trajectory,
            nfe=self.nfe,
            steps=self.steps,
            rho=self.rho,
            fitted=self.base_grid is not None,
            timesteps=list(self.grid),
            alphas=schedule.alpha(grid).tolist(),
            sigmas=schedule.sigma(grid).tolist(),
        )


def align(
    model: LoadedModel,
    plan: SamplingPlan,
    config: FitConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    data: str | None = None,
    validation: ValidationSettings | None = None,
    progress: Progress | None = None,
    world: World = World(),
) -> TauArtifact:
    """Fit taus for ``plan`` on ``model`` and return the (unwritten) artifact (keyed by ``plan``;
    on a fitted grid when the winning candidate fits it); with ``validation``, also the verdict of
    baseline vs aligned on held-out seeds. With several ranks (torchrun) the work is split over
    them and every rank returns the same artifact (``fit_joint``, ``validate``)."""
    check_world(config, world)
    images = None
    if data is not None and model.decoder is None:
        images = load_data(data, model.sample_shape)
    elif data is not None:  # a latent pipeline: the images at the decoded size, encoded into Eq. 8's x_0
        images = model.decoder.encode(load_data(data, model.image_shape))
    plan = plan.with_gammas(model, data=images, seed=seed, device=device)
    result = fit_taus(
        model.eps, model.eps.schedule, plan.grid, plan.sampler, plan.eta, config, model.sample_shape,
        seed=seed, device=device, data=images, gamma=plan.gammas, progress=progress, world=world,
    )
    if result.grid is not None:
        plan = plan.with_grid(result.grid, model.eps.schedule)
    checked = None
    if validation is not None and result.grid is None and result.taus == list(plan.eval_times):
        checked = unchanged(plan.sampler, plan.eta, validation, seed=seed)
    elif validation is not None:
        checked = validate(model.eps, plan.baseline_grid, plan.sampler, plan.eta, result.taus, model.sample_shape,
                           validation, batch_size=max(config.batch_size, 64), seed=seed, device=device,
                           gamma=plan.gammas, aligned_grid=plan.grid if plan.base_grid is not None else None,
                           progress=progress, world=world)
    return TauArtifact(
        dpm_align_version=__version__,
        created=utc_now(),
        key=plan.key(model),
        model=model.info,
        sampler=SamplerInfo(name=plan.sampler, eta=plan.eta),
        trajectory=plan.trajectory_info(model.eps.schedule),
        taus=result.taus,
        eval_times=list(plan.eval_times),
        fit=FitInfo(
            strategy=config.strategy,
            objective=config.objective,
            optimizer=config.optimizer,
            settings=config.model_dump(mode="json"),
            num_samples=result.num_samples or config.num_samples,
            iterations=config.iterations,
            seed=seed,
            device=str(device),
            dtype=str(model.eps.dtype).replace("torch.", ""),
            precision=model.eps.precision,
            loss_before=result.loss_before,
            loss_after=result.loss_after,
            candidate=result.candidate,
            candidates=result.candidates,
        ),
        validation=checked,
        analytic=plan.gammas,
        conditioning=model.eps.conditioning,
    )


def not_better_message(artifact: TauArtifact) -> str | None:
    """None when the artifact validated as better (or was not validated), else why not."""
    v = artifact.validation
    if v is None or v.better:
        return None
    if v.verdict == "unchanged":
        return f"the fit found no taus better than the plain sampler: {v.summary()}"
    shown = "worse than" if v.verdict == "worse" else "not shown better than"
    return f"the aligned taus are {shown} the plain sampler: {v.summary()}"


def resolve_plan(
    model: LoadedModel,
    *,
    sampler: str | None,
    eta: float | None,
    trajectory: str | None,
    nfe: int | None,
    rho: float | None = None,
    taus_path: Path | None = None,
    use_taus: bool = True,
    device: torch.device | str = "cpu",
) -> tuple[SamplingPlan, TauArtifact | None, Path | None]:
    """The plan to sample with and its artifact: ``taus_path`` if given (its settings fill the
    options left out, and must agree with those given), else the cache entry for the plan's key;
    a fitted grid comes from the artifact. ``use_taus=False`` is the plain sampler."""
    schedule = model.eps.schedule
    if taus_path is not None and use_taus:
        artifact = load_artifact(taus_path)
        label = None if trajectory is None else trajectory_label(trajectory, resolve_rho(trajectory, rho))
        check_artifact_matches(artifact, model=model.info, sampler=sampler, trajectory=label, nfe=nfe,
                               eta=None if eta is None else resolve_eta(artifact.sampler.name, eta),
                               conditioning=model.eps.conditioning, path=taus_path)
        traj = artifact.trajectory
        plan = SamplingPlan.make(schedule, artifact.sampler.name, artifact.sampler.eta, traj.kind, traj.nfe, traj.rho)
        return _with_artifact(plan, artifact, model, taus_path, device), artifact, Path(taus_path)
    plan = SamplingPlan.make_with_defaults(schedule, sampler, eta, trajectory, nfe, rho)
    if not use_taus:
        return plan.with_gammas(model, device=device), None, None
    path = cache_path(plan.key(model))
    if not path.is_file():
        raise DpmAlignError(
            f"no taus in the cache for {plan.key(model)} ({path}); run `dpm-align align` with the same "
            "--model/--sampler/--trajectory/--nfe (and --guidance-scale/--null-class) or pass --taus FILE "
            "(`sample --no-taus` runs the plain sampler)"
        )
    artifact = load_artifact(path)
    check_artifact_matches(artifact, model=model.info, sampler=plan.sampler, eta=plan.eta,
                           trajectory=plan.label, nfe=plan.nfe, conditioning=model.eps.conditioning, path=path)
    return _with_artifact(plan, artifact, model, path, device), artifact, path


def _with_artifact(plan: SamplingPlan, artifact: TauArtifact, model: LoadedModel, path: Path,
                   device: torch.device | str) -> SamplingPlan:
    """The plan with the artifact's fitted grid (if any; ``check_artifact`` has checked it) and Gamma
    table (analytic samplers)."""
    if artifact.trajectory.fitted:
        plan = plan.with_grid(artifact.trajectory.timesteps, model.eps.schedule)
    return plan.with_gammas(model, table=artifact.analytic, device=device)


def generate(
    model: LoadedModel,
    plan: SamplingPlan,
    taus: Sequence[float] | None,
    *,
    num_samples: int,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    start_index: int = 0,
    class_labels: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> Iterator[SampleBatch]:
    """Yield the samples start_index .. start_index+n-1 batch by batch. A class-conditional model
    gives sample k the label ``class_labels[k % len(class_labels)]``, or one drawn from (seed, k)."""
    cond = model.eps.conditioning
    if class_labels and (cond is None or cond.kind != "class"):
        raise UsageError("--class-label was given but the model is not class-conditional; leave it out")
    if class_labels:
        class_labels = cond.check_labels(class_labels)
    batches = math.ceil(num_samples / batch_size)
    for b in range(batches):
        lo = start_index + b * batch_size
        hi = min(start_index + num_samples, lo + batch_size)
        noise = PerSampleNoise(seed, range(lo, hi), model.sample_shape, device)
        labels = None if cond is None else cond.per_sample_labels(seed, range(lo, hi), class_labels).to(device)
        x = noise()
        with torch.no_grad():
            out = run_sampler(plan.sampler, model.eps.bind(labels), x, plan.grid, taus,
                              StepContext(model.eps.schedule, plan.eta, noise, plan.gammas))
        if progress:
            progress(b + 1, batches, f"batch {b + 1}/{batches}")
        yield SampleBatch(lo, out, labels)


def decode(model: LoadedModel, samples: torch.Tensor) -> torch.Tensor:
    """What ``sample`` writes as images: a latent pipeline's latents decoded by its VAE (float32, in
    [-1, 1]), else the samples themselves."""
    if model.decoder is None:
        return samples
    with torch.no_grad():
        return model.decoder(samples.float()).float()


@dataclass(frozen=True)
class SampleBatch:
    start: int  # index of the first sample
    samples: torch.Tensor  # [n, C, H, W] in [-1, 1] (float64); latents for a latent pipeline (see ``decode``)
    labels: torch.Tensor | None  # class labels (prompt indices) of a class- (text-) conditional model


class SampleRun(BaseModel):
    """What ``sample_to_dir`` did (all ranks together)."""

    model_config = ConfigDict(extra="forbid")

    out: str
    num_samples: int
    generated: int  # written by this run
    already_present: int  # found complete in the directory and kept
    world_size: int
    seconds: float
    files: dict[str, str]  # grid, and labels (png) or npz
    labels: list[int] | None


def sample_to_dir(
    model: LoadedModel,
    plan: SamplingPlan,
    taus: Sequence[float] | None,
    out: Path,
    *,
    num_samples: int,
    batch_size: int = 64,
    seed: int = 0,
    fmt: str = "png",
    device: torch.device = torch.device("cpu"),
    class_labels: Sequence[int] | None = None,
    world: World = World(),
    progress: Progress | None = None,
) -> SampleRun | None:
    """Write samples 0 .. num_samples-1 into ``out`` as they are made (``sample_dir``: one PNG each,
    atomically, a manifest; samples already there are kept), then the grid and labels or .npz. A
    latent pipeline's samples are decoded by its VAE first; ``fmt`` latents keeps them undecoded
    (one .npy each, then ``latents.npz``).
    Sample k depends on (seed, k) only; the work is split into global batches of ``batch_size``,
    batch b made by rank b mod world.size, so the network sees the same batches with any number of
    processes and after a resume (a batch with a sample missing is remade whole, its files that
    exist are kept). Returns the run's summary on rank 0, None on the others."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; choose {', '.join(FORMATS)}")
    cond = model.eps.conditioning
    if class_labels and (cond is None or cond.kind != "class"):
        raise UsageError("--class-label was given but the model is not class-conditional; leave it out")
    given = cond.check_labels(class_labels) if class_labels else None
    manifest = SampleManifest(
        dpm_align_version=__version__, model_sha256=model.info.sha256, key=plan.key(model), sampler=plan.sampler,
        eta=plan.eta, trajectory=plan.label, nfe=plan.nfe, grid=list(plan.grid), taus=None if taus is None else list(taus),
        seed=seed, num_samples=num_samples, class_labels=given, precision=model.eps.precision or "fp32",
        device=device.type, batch_size=batch_size,
        sample_shape=model.sample_shape if fmt == "latents" else model.image_shape,
        sample_files="npy" if fmt == "latents" else "png", conditioning=None if cond is None else cond.model_dump(mode="json"))
    problem = None
    if world.is_main:
        try:
            SampleDir.open(out, manifest)
        except DpmAlignError as exc:
            problem = exc
    problem = world.broadcast(problem)  # every rank stops on rank 0's refusal, none writes
    if problem is not None:
        raise problem
    directory = SampleDir(out, manifest)
    started = time.monotonic()
    batches = [range(b * batch_size, min(num_samples, (b + 1) * batch_size))
               for b in world.batches(math.ceil(num_samples / batch_size))]
    todo = [idx for idx in batches if not all(directory.done(k) for k in idx)]
    total = sum(len(idx) for idx in todo)
    made = written = 0
    for idx in todo:
        (batch,) = generate(model, plan, taus, num_samples=len(idx), batch_size=len(idx), seed=seed, device=device,
                            start_index=idx.start, class_labels=given)
        files = batch.samples.float().cpu().numpy() if fmt == "latents" else to_uint8(decode(model, batch.samples))
        for k, image in zip(idx, files):
            if not directory.done(k):
                directory.write(k, image)
                written += 1
        made += len(idx)
        if progress:
            progress(made, total, _rate(made, total, time.monotonic() - started, world))
    counts = world.gather((written, sum(len(idx) for idx in batches) - written))
    world.barrier()  # every rank's files are on disk
    if not world.is_main:
        return None
    labels = None if cond is None else cond.per_sample_labels(seed, range(num_samples), given).tolist()
    files = directory.finish(fmt, labels)
    return SampleRun(out=str(out), num_samples=num_samples, generated=sum(c[0] for c in counts),
                     already_present=sum(c[1] for c in counts), world_size=world.size,
                     seconds=round(time.monotonic() - started, 3), files={k: str(v) for k, v in files.items()},
                     labels=labels)


def _rate(done: int, total: int, seconds: float, world: World) -> str:
    """``12.3 samples/s, ETA 0:01:05`` (this rank's), for the progress line."""
    rate = done / seconds if seconds > 0 else float("inf")
    left = (total - done) / rate if rate > 0 else 0.0
    where = f" (rank {world.rank} of {world.size})" if world.size > 1 else ""
    return f"{rate:.1f} samples/s, ETA {int(left) // 3600}:{int(left) // 60 % 60:02d}:{int(left) % 60:02d}{where}"


class AblationRow(BaseModel):
    """Fig. 6: the first ``aligned_steps`` taus (from t_K down) aligned, the rest plain."""

    model_config = ConfigDict(extra="forbid")

    aligned_steps: int
    end_l2: float
    frechet_pixel: float


class KidReport(BaseModel):
    """Kernel distance (KID) of the end points to the real images in the same feature space."""

    model_config = ConfigDict(extra="forbid")

    library: str  # "torchmetrics <version>"
    subsets: int
    subset_size: int
    baseline: float
    baseline_std: float
    aligned: float
    aligned_std: float


class InceptionScoreReport(BaseModel):
    """Inception Score (higher is better) of the end points."""

    model_config = ConfigDict(extra="forbid")

    library: str  # "torchmetrics <version>"
    splits: int
    baseline: float
    baseline_std: float
    aligned: float
    aligned_std: float


class FeatureReport(BaseModel):
    """Fréchet distance of the end points to real data in a feature space (FID for Inception),
    the KID where the real images (not only their statistics) were given, and for Inception the
    Inception Score."""

    model_config = ConfigDict(extra="forbid")

    metric: str  # "fid" (Inception-v3) or "fd_features" (a user's TorchScript network)
    network: str  # "<kind>:<sha256[:16]>" of the network file
    reference: str  # the --data value or statistics file
    reference_samples: int
    num_samples: int
    baseline: float
    aligned: float
    kid: KidReport | None = None  # None with --reference-stats: the KID needs the real features
    inception_score: InceptionScoreReport | None = None  # --inception-weights, at least 4 samples


class GapReport(BaseModel):
    """Fig. 2: per grid point, mean L2 between the few-step sampler's state and a high-NFE
    deterministic reference trajectory (DDIM, eta=0) from the same x_T; plus the pixel-space
    Fréchet distance of the end points to the reference's end points, and optionally Fig. 6."""

    model_config = ConfigDict(extra="forbid")

    model_sha256: str
    key: str
    sampler: str
    eta: float
    trajectory: str
    nfe: int
    num_samples: int
    seed: int
    reference: str
    reference_nfe: int
    timesteps: list[float]
    timesteps_aligned: list[float] | None = None  # artifacts on a fitted grid: that grid
    taus: list[float]
    gap_baseline: list[float]
    gap_aligned: list[float]
    end_gap_baseline: float  # mean end-point L2 of the delivered samples (clamped to data_range; gap_* are raw states)
    end_gap_aligned: float
    data_range: tuple[float, float] | None = None  # the end-point metrics' clamp (pixel models: [-1, 1])
    reference_rms: float | None = None  # RMS of the reference's end points before the clamp (run_off)
    end_gap_ratio: float
    end_gap_interval: tuple[float, float] | None = None  # 95% interval of end_gap_ratio (paired, see verdict.py)
    kernel_baseline: float | None = None  # unbiased MMD^2 of the end points to the reference's (verdict.py)
    kernel_aligned: float | None = None
    kernel_change_interval: tuple[float, float] | None = None  # 95% interval of kernel_aligned / kernel_baseline - 1
    frechet_pixel_baseline: float
    frechet_pixel_aligned: float
    ablation: list[AblationRow] | None = None
    features: FeatureReport | None = None

    def run_off(self) -> str | None:
        """Why the model itself looks broken, or None (``validation.run_off_message``)."""
        return run_off_message(self.reference_rms, self.data_range, self.reference_nfe)


def _feature_report(features: FeatureReference, ends: dict[str, list[torch.Tensor]], num_samples: int,
                    seed: int) -> FeatureReport:
    base, aligned = (features.scores(torch.cat(ends[name]), seed=seed) for name in ("baseline", "aligned"))
    kid = score = None
    if base.kid is not None and aligned.kid is not None:
        kid = KidReport(library=base.kid.library, subsets=base.kid.subsets, subset_size=base.kid.subset_size,
                        baseline=base.kid.mean, baseline_std=base.kid.std, aligned=aligned.kid.mean,
                        aligned_std=aligned.kid.std)
    if base.inception_score is not None and aligned.inception_score is not None:
        b, a = base.inception_score, aligned.inception_score
        score = InceptionScoreReport(library=b.library, splits=b.splits, baseline=b.mean, baseline_std=b.std,
                                     aligned=a.mean, aligned_std=a.std)
    return FeatureReport(metric=features.net.metric, network=features.net.id, reference=features.name,
                         reference_samples=features.stats.num_samples, num_samples=num_samples,
                         baseline=base.frechet, aligned=aligned.frechet, kid=kid, inception_score=score)


def trajectory_gap(
    model: LoadedModel,
    plan: SamplingPlan,
    taus: Sequence[float],
    *,
    num_samples: int = 64,
    batch_size: int = 64,
    reference_nfe: int = 1000,
    seed: int = 0,
    ablation: bool = False,
    features: FeatureReference | None = None,
    device: torch.device | str = "cpu",
    world: World = World(),
    progress: Progress | None = None,
) -> GapReport | None:
    """Fig. 2 (and Fig. 6 with ``ablation``); with ``features``, also the Fréchet distance of the
    baseline and aligned end points (decoded, for a latent pipeline) to the real data's statistics
    in that feature space. With a
    fitted grid the baseline is the plain sampler on the kind's grid, and the aligned gaps are
    taken at the fitted grid's points (``timesteps_aligned``). With several ranks, batch b is
    made by rank b mod world.size and rank 0 sums the batches in order, so the report is the
    one-process report bit for bit; it is returned on rank 0 (``features`` is needed there
    only), None on the others."""
    fitted = plan.base_grid is not None
    if fitted and ablation:
        raise UsageError("--ablation aligns the first k steps of one grid; it does not apply to taus on a fitted grid "
                         "(trajectory.fitted in the artifact)")
    candidates: dict[str, Candidate] = {"baseline": None, "aligned": (plan.grid, taus) if fitted else taus}
    per = len(plan.eval_times) // plan.steps
    if ablation:  # k = 0 is the baseline and k = K the fully aligned sampler: only 1..K-1 are new
        candidates.update({f"first-{k}": [*taus[: k * per], *plan.eval_times[k * per :]] for k in range(1, plan.steps)})
    mine = world.batches(math.ceil(num_samples / batch_size))
    made = []  # (batch, end points by name, summed gaps by name) of this rank's batches
    for done, b in enumerate(mine, 1):
        lo = b * batch_size
        (states,) = paired_trajectories(model.eps, plan.baseline_grid, plan.sampler, plan.eta, candidates,
                                        model.sample_shape, num_samples=min(batch_size, num_samples - lo), start=lo,
                                        reference_nfe=reference_nfe, seed=seed, device=device, batch_size=batch_size,
                                        gamma=plan.gammas)
        made.append((b, {name: states[name][-1].cpu() for name in ("reference", *candidates)},
                     {name: torch.tensor([(a - r).flatten(1).norm(dim=1).sum().item()
                                          for a, r in zip(states[name], states.get(f"reference:{name}", states["reference"]))],
                                         dtype=torch.float64) for name in candidates}))
        if progress:
            progress(done, len(mine), f"batch {b + 1}" + (f" (rank {world.rank} of {world.size})" if world.size > 1 else ""))
    gathered = world.gather(made)
    if gathered is None:
        return None
    sums = {name: torch.zeros(len(plan.grid), dtype=torch.float64) for name in candidates}
    ends: dict[str, list[torch.Tensor]] = {name: [] for name in ("reference", *candidates)}
    for _, batch_ends, batch_sums in sorted((item for part in gathered for item in part), key=lambda item: item[0]):
        for name in ends:
            ends[name].append(batch_ends[name])
        for name in sums:
            sums[name] += batch_sums[name]
    delivered = {name: model.eps.delivered(torch.cat(batches)) for name, batches in ends.items()}  # as the verdict
    reference = delivered["reference"]
    end_errors = {name: (delivered[name] - reference).flatten(1).norm(dim=1) for name in candidates}
    change = mean_ratio_change(end_errors["baseline"], end_errors["aligned"], 0.95)
    kernel = kernel_change(delivered["baseline"], delivered["aligned"], reference, 0.95)
    frechet = {name: frechet_distance(delivered[name], reference) for name in candidates}
    gaps = {name: (total / num_samples).tolist() for name, total in sums.items()}
    base, aligned = gaps["baseline"], gaps["aligned"]
    end_l2 = {name: float(e.mean()) for name, e in end_errors.items()}
    end_base, end_aligned = end_l2["baseline"], end_l2["aligned"]
    feature_report = None
    if features is not None:  # in image space: a latent pipeline's end points decoded, batch by batch
        images = {name: [decode(model, batch).cpu() for batch in ends[name]] for name in ("baseline", "aligned")}
        feature_report = _feature_report(features, images, num_samples, seed)
    rows = None
    if ablation:
        names = ["baseline", *[f"first-{k}" for k in range(1, plan.steps)], "aligned"]
        rows = [AblationRow(aligned_steps=k, end_l2=end_l2[name], frechet_pixel=frechet[name]) for k, name in enumerate(names)]
    return GapReport(
        model_sha256=model.info.sha256, key=plan.key(model), sampler=plan.sampler, eta=plan.eta,
        trajectory=plan.label, nfe=plan.nfe, num_samples=num_samples, seed=seed,
        reference=REFERENCE_DESCRIPTION,
        reference_nfe=reference_nfe_of(union_grid(plan.baseline_grid, candidates), reference_nfe, model.eps.schedule),
        timesteps=list(plan.baseline_grid), timesteps_aligned=list(plan.grid) if fitted else None,
        taus=list(taus), gap_baseline=base, gap_aligned=aligned,
        end_gap_baseline=end_base, end_gap_aligned=end_aligned, data_range=model.eps.data_range,
        reference_rms=reference_rms(torch.cat(ends["reference"])),
        end_gap_ratio=end_aligned / end_base if end_base > 0 else float("nan"),
        end_gap_interval=None if change.low is None else (1 + change.low, 1 + change.high),
        kernel_baseline=kernel.baseline, kernel_aligned=kernel.aligned,
        kernel_change_interval=None if kernel.low is None else (kernel.low, kernel.high),
        frechet_pixel_baseline=frechet["baseline"], frechet_pixel_aligned=frechet["aligned"], ablation=rows,
        features=feature_report,
    )
