"""``dpm-align``: align, sample, inspect, eval. Exit codes: 0 ok, 1 runtime error (incl. an artifact that fails
its check, out of memory), 2 usage error (incl. a file that cannot be written), 3 not better, 130 interrupted
(Ctrl-C)."""

from __future__ import annotations

import functools
import inspect
import os
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer
from rich.console import Console
from rich.table import Table

from dpm_align.aligner_core import __version__
from dpm_align.aligner_core.api import (
    DEFAULT_NFE,
    DEFAULT_SAMPLER,
    SamplingPlan,
    ValidationSettings,
    align,
    not_better_message,
    resolve_plan,
    sample_to_dir,
    trajectory_gap,
)
from dpm_align.aligner_core.artifacts.artifact import (
    CACHE_FIX,
    cache_path,
    ensure_writable,
    read_artifact,
    write_artifact,
    write_cache_entry,
)
from dpm_align.aligner_core.artifacts.artifact_check import check_artifact
from dpm_align.aligner_core.errors import NotBetterError, UsageError
from dpm_align.aligner_core.artifacts.exports import export_schedule
from dpm_align.aligner_core.evaluation.features import FeatureNet, feature_reference
from dpm_align.aligner_core.fitting.fit import JOINT_CANDIDATES, resolve_config
from dpm_align.aligner_core.distributed import World
from dpm_align.aligner_core.images import check_out_dir, prepare_out_dir
from dpm_align.aligner_core.artifacts.inspection import inspect_rows
from dpm_align.aligner_core.artifacts.plots import plot_ablation, plot_artifact, plot_gap
from dpm_align.aligner_core.models.loading import load_model, resolve_device
from dpm_align.aligner_core.resources import peak_memory, reuse_freed_host_memory
from dpm_align.aligner_core.models.model import PRECISIONS, TextConditioning, check_precision
from dpm_align.aligner_core.models.pipelines import read_prompts
from dpm_align.aligner_core.sample_dir import FORMATS
from dpm_align.aligner_core.sampling.samplers import is_stochastic, resolve_eta

from .output import CompactCommand, emit_json, handle_errors, progress_bar, warn

stdout = Console(soft_wrap=True)

app = typer.Typer(
    name="dpm-align",
    help="Fit, store and use aligned timesteps (DPM-Aligner) for few-step diffusion sampling.\n\n"
    "Exit codes: 0 ok, 1 runtime error (incl. an artifact that fails its check or does not belong to the model, "
    "out of memory), 2 usage error (incl. a file that cannot be written: read-only, disk full), "
    "3 align: the fitted taus are not better than the plain sampler (nothing written), 130 interrupted (Ctrl-C).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="diffusers pipeline dir, unet/ dir, .safetensors/.pt checkpoint, TorchScript file, package.module:factory, or gmm; omit for the embedded demo model", rich_help_panel="Model")]
ScheduleOpt = Annotated[Optional[str], typer.Option(help="noise schedule for a bare UNet: linear | scaled_linear | squaredcos_cap_v2 | scheduler_config.json", rich_help_panel="Model")]
PredOpt = Annotated[Optional[str], typer.Option("--prediction-type", help="override: epsilon | sample | v_prediction", rich_help_panel="Model")]
TrustOpt = Annotated[bool, typer.Option("--trust-pickle", help="allow full pickle loading of .pt files (only for files you trust)", rich_help_panel="Model")]
ArchOpt = Annotated[Optional[str], typer.Option(help="network class package.module:Class for a bare state dict --model", rich_help_panel="Model")]
ArchConfigOpt = Annotated[Optional[Path], typer.Option(help="JSON file of the --arch constructor's keyword arguments", rich_help_panel="Model")]
GuidanceOpt = Annotated[Optional[float], typer.Option(help="class- or text-conditional models: classifier-free guidance scale w, eps_null + w (eps_cond - eps_null) [default: 1, no guidance]", rich_help_panel="Model")]
PromptOpt = Annotated[Optional[list[str]], typer.Option("--prompt", help="text-conditioned pipelines (Stable Diffusion): a prompt; repeat for several (sample i gets prompt i mod P)", rich_help_panel="Model")]
PromptsOpt = Annotated[Optional[Path], typer.Option("--prompts", help="text-conditioned pipelines: a text file, one prompt per line (after any --prompt)", rich_help_panel="Model")]
NegativeOpt = Annotated[Optional[str], typer.Option("--negative-prompt", help="text-conditioned pipelines with guidance: the null condition instead of the empty prompt", rich_help_panel="Model")]
NullClassOpt = Annotated[Optional[int], typer.Option(help="class-conditional models: the unconditional label [default with guidance: the last class embedding]", rich_help_panel="Model")]
ShapeOpt = Annotated[Optional[str], typer.Option(help="sample shape C,H,W (TorchScript, factory, --arch models without a sidecar)", rich_help_panel="Model")]
NfeOpt = Annotated[Optional[int], typer.Option(help="network evaluations (= steps for ddim/ddpm, 2 x steps for dpm-solver-2/edm-heun) [default: 10]", rich_help_panel="Sampler")]
SamplerOpt = Annotated[Optional[str], typer.Option(help="ddim | ddpm | dpm-solver-2 | edm-heun | analytic-ddim | analytic-ddpm [default: ddim]", rich_help_panel="Sampler")]
EtaOpt = Annotated[Optional[float], typer.Option(help="noise scale of DDIM-family samplers [default: 0 for ddim, 1 for ddpm]", rich_help_panel="Sampler")]
TrajOpt = Annotated[Optional[str], typer.Option(help="uniform | quadratic | logsnr | edm [default: uniform]", rich_help_panel="Sampler")]
RhoOpt = Annotated[Optional[float], typer.Option(help="edm trajectory only: rho [default: 7]", rich_help_panel="Sampler")]
SeedOpt = Annotated[int, typer.Option(help="random seed")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress on stderr")]
PrecisionOpt = Annotated[str, typer.Option(help=f"the network's arithmetic: {' | '.join(PRECISIONS)} (tf32 and fp16 on CUDA; bf16/fp16 by autocast; the sampler's state stays float64)")]


@dataclass(frozen=True)
class ModelSpec:
    """The model-loading options every command shares (added by ``with_model_options``)."""

    model: str | None = None
    schedule: str | None = None
    prediction_type: str | None = None
    trust_pickle: bool = False
    arch: str | None = None
    arch_config: Path | None = None
    sample_shape: str | None = None
    guidance_scale: float | None = None
    null_class: int | None = None
    prompt: list[str] | None = None
    prompts: Path | None = None
    negative_prompt: str | None = None

    @property
    def given(self) -> bool:
        return self.model is not None or self.schedule is not None

    def prompt_list(self) -> list[str] | None:
        """--prompt values, then the lines of --prompts; None when neither was given."""
        given = [*(self.prompt or []), *(read_prompts(self.prompts) if self.prompts is not None else [])]
        return given or None

    def load(self, device: str | torch.device, precision: str | None = None, *, identity_only: bool = False):
        """The model on ``device``; ``identity_only`` (inspect --check): only its ModelInfo is used,
        so a text-conditioned model needs no prompts."""
        dev = resolve_device(device) if isinstance(device, str) else device
        return load_model(self.model, device=dev, schedule=self.schedule, prediction_type=self.prediction_type,
                          trust_pickle=self.trust_pickle, arch=self.arch, arch_config=self.arch_config,
                          sample_shape=self.sample_shape, guidance_scale=self.guidance_scale,
                          null_class=self.null_class, prompts=self.prompt_list(), negative_prompt=self.negative_prompt,
                          identity_only=identity_only, precision=precision), dev

    @contextmanager
    def load_on_world(self, device: str, precision: str):
        """Under torchrun (WORLD_SIZE > 1): join the process group first (each rank on its own CUDA
        device), then load; yields (model, device, world) and leaves the group at the end."""
        dev = resolve_device(device)
        check_precision(precision, dev)  # before joining: a usage error needs no process group
        world, dev = World.start(dev)
        try:
            loaded, dev = self.load(dev, precision)
            yield loaded, dev, world
        except BaseException:
            world.close(wait=False)
            raise
        world.close()


def _model_options(
    model: ModelOpt = None,
    schedule: ScheduleOpt = None,
    prediction_type: PredOpt = None,
    trust_pickle: TrustOpt = False,
    arch: ArchOpt = None,
    arch_config: ArchConfigOpt = None,
    sample_shape: ShapeOpt = None,
    guidance_scale: GuidanceOpt = None,
    null_class: NullClassOpt = None,
    prompt: PromptOpt = None,
    prompts: PromptsOpt = None,
    negative_prompt: NegativeOpt = None,
) -> None:
    """Template: the options ``with_model_options`` adds to a command (fields of ModelSpec)."""


@dataclass(frozen=True)
class SamplingOptions:
    """The sampler/trajectory options of align, sample and eval (None: default or from the artifact)."""

    sampler: str | None = None
    eta: float | None = None
    trajectory: str | None = None
    nfe: int | None = None
    rho: float | None = None


def _sampling_options(
    nfe: NfeOpt = None,
    sampler: SamplerOpt = None,
    eta: EtaOpt = None,
    trajectory: TrajOpt = None,
    rho: RhoOpt = None,
) -> None:
    """Template: the options ``with_sampling_options`` adds to a command (fields of SamplingOptions)."""


def shared_options(template, bundle, param: str):
    """A decorator giving a Typer command the options declared by ``template``'s parameters; the
    command receives them as one ``param: bundle(...)`` argument."""
    extra = inspect.signature(template, eval_str=True).parameters

    def decorate(command):
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != param]

        @functools.wraps(command)
        def wrapper(**kwargs):
            kwargs[param] = bundle(**{name: kwargs.pop(name) for name in extra})
            return command(**kwargs)

        wrapper.__signature__ = inspect.Signature(own + list(extra.values()))
        wrapper.__annotations__ = {**{k: v for k, v in command.__annotations__.items() if k != param},
                                   **template.__annotations__}
        return wrapper

    return decorate


with_model_options = shared_options(_model_options, ModelSpec, "spec")
with_sampling_options = shared_options(_sampling_options, SamplingOptions, "sampling")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dpm-align {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="show the version")] = False) -> None:
    """Fit, store and use aligned timesteps for few-step diffusion sampling."""


@app.command("align", cls=CompactCommand)
@handle_errors
@with_model_options
@with_sampling_options
def align_cmd(
    spec: ModelSpec,
    sampling: SamplingOptions,
    strategy: Annotated[Optional[str], typer.Option(help="sequential (Algorithm 1) | parallel (Eq. 8, needs --data)", rich_help_panel="Fit")] = None,
    preset: Annotated[str, typer.Option(help="default (joint for deterministic samplers, with 80 Adam steps at lr 0.02 for ddim at NFE <= 5 and a longer retry for ddim at NFE <= 10 when the fit gains under 10%; golden for stochastic ones) | joint (all taus at once against a fine DPM-Solver++(2M) teacher, LD3-style) | golden (golden-section search of Eq. 5 per step) | official (the paper code's Adam settings)", rich_help_panel="Fit")] = "default",
    data: Annotated[Optional[str], typer.Option(help="image folder, .npz, or mnist | cifar10 | digits", rich_help_panel="Fit")] = None,
    objective: Annotated[Optional[str], typer.Option(help="override the preset: paper (Eq. 5) | teacher (per-step match of a fine DDIM) | joint (use --preset joint)", rich_help_panel="Fit")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="override the preset: golden | adam", rich_help_panel="Fit")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="override the preset: iterations per step", rich_help_panel="Fit")] = None,
    num_samples: Annotated[Optional[int], typer.Option(help="override the preset: samples per step", rich_help_panel="Fit")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="override the preset: network batch size", rich_help_panel="Fit")] = None,
    out: Annotated[Optional[Path], typer.Option(help="also write the artifact here")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="do not write into the cache directory")] = False,
    candidates: Annotated[Optional[str], typer.Option(help="joint fits, comma-separated: taus | grid+taus | grid (the grid needs ddim); the one with the lowest held-out loss wins [default: taus,grid+taus for ddim, taus otherwise]", rich_help_panel="Fit")] = None,
    patience: Annotated[Optional[int], typer.Option(min=0, help="joint fits: stop a candidate after this many held-out checks (every 10 steps) in a row without a gain, for a faster fit that can miss late gains [default: 0 = run every step]", rich_help_panel="Fit")] = None,
    retry_gain: Annotated[Optional[float], typer.Option(min=0, max=1, help="joint fits: when the fit gains less than this fraction of the plain sampler's held-out loss, also try 1000 + 1000 Adam steps at lr 0.05 on 512 noises, judge every fit on 256 held-out noises and keep the best [default: 0.1 for ddim at NFE <= 10 without --iterations; 0 = never]", rich_help_panel="Fit")] = None,
    precision: PrecisionOpt = "fp32",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="joint fits: recompute the network's activations in the backward pass instead of keeping those of every step (memory of one evaluation; fitting time x1.34 on the CIFAR 32x32 zoo model, CPU; same taus)", rich_help_panel="Fit")] = False,
    no_validate: Annotated[bool, typer.Option("--no-validate", help="skip the verdict (baseline vs aligned on held-out seeds after fitting)", rich_help_panel="Verdict")] = False,
    validation_samples: Annotated[int, typer.Option(min=8, help="verdict: held-out samples at the first look (it spends a tenth of the error rate: only a clear result stops there)", rich_help_panel="Verdict")] = 64,
    validation_max_samples: Annotated[int, typer.Option(min=8, help="verdict: while inconclusive, double the samples up to this many", rich_help_panel="Verdict")] = 512,
    validation_budget: Annotated[Optional[float], typer.Option(min=0, help="verdict: seconds after which no further look is started [default: no limit; a limit makes the verdict depend on the machine's speed]", rich_help_panel="Verdict")] = None,
    validation_reference_nfe: Annotated[int, typer.Option(min=2, help="verdict: network evaluations of the reference (DPM-Solver++(2M), steps uniform in log-SNR)", rich_help_panel="Verdict")] = 100,
    confidence: Annotated[float, typer.Option(min=0.5, max=0.999, help="verdict: family-wise confidence of the intervals", rich_help_panel="Verdict")] = 0.95,
    keep_worse: Annotated[bool, typer.Option("--keep-worse", help="write the taus even if the verdict is not 'better'", rich_help_panel="Verdict")] = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit aligned timesteps and write the tau artifact (cache and/or --out)."""
    sampler = sampling.sampler or DEFAULT_SAMPLER
    config = resolve_config(preset, strategy, stochastic=is_stochastic(sampler, resolve_eta(sampler, sampling.eta)),
                            sampler=sampler, nfe=sampling.nfe or DEFAULT_NFE, objective=objective, optimizer=optimizer,
                            iterations=iterations, num_samples=num_samples, batch_size=batch_size,
                            candidates=_candidates(candidates), patience=patience, retry_gain=retry_gain,
                            checkpointing=gradient_checkpointing or None)
    if no_cache and out is None:
        raise UsageError("--no-cache without --out would write nothing; pass --out FILE")
    if out is not None:
        ensure_writable(out)  # before loading the model: fail fast
    with spec.load_on_world(device, precision) as (loaded, dev, world):
        plan = SamplingPlan.make_with_defaults(loaded.eps.schedule, **asdict(sampling))
        if not no_cache:
            ensure_writable(cache_path(plan.key(loaded)), CACHE_FIX)
        with progress_bar(f"aligning {plan.sampler} {plan.label} nfe={plan.nfe}", quiet or not world.is_main) as progress:
            artifact = align(loaded, plan, config, seed=seed, device=dev, data=data, progress=progress, world=world,
                             validation=ValidationSettings(validation_samples, validation_max_samples,
                                                           validation_reference_nfe, confidence, validation_budget)
                             if not no_validate else None)
    problem = not_better_message(artifact)
    if not world.is_main:  # every rank holds the same artifact; rank 0 writes and reports it
        if problem and not keep_worse:
            raise typer.Exit(NotBetterError.exit_code)
        return
    peak = peak_memory(dev)
    run_off = None if artifact.validation is None else artifact.validation.run_off()
    if run_off and (keep_worse or not problem):  # else it is the refusal's fix (one line on stderr)
        warn(run_off)
    written: list[str] = []
    if keep_worse or not problem:  # the cache entry first (under its lock), then --out
        if not no_cache:
            written.append(str(write_cache_entry(artifact)))
        if out is not None:
            written.append(str(write_artifact(artifact, out)))
    if json_out:
        emit_json({"written": written, "better": None if artifact.validation is None else artifact.validation.better,
                   "world_size": world.size, "peak_memory": peak.model_dump(mode="json"),
                   "warnings": [run_off] if run_off else [],
                   "artifact": artifact.model_dump(mode="json")})
    else:
        _print_table(artifact)
        typer.echo(peak.describe())
        for path in written:
            typer.echo(f"wrote {path}")
    if problem and not keep_worse:
        fix = run_off or ("use the plain sampler, try another --preset or --strategy, raise --validation-max-samples, "
                          "or pass --keep-worse to write them anyway")
        raise NotBetterError(f"{problem}; nothing written: {fix}")
    if problem:
        warn(f"{problem}; written anyway (--keep-worse)")


def _candidates(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in JOINT_CANDIDATES]
    if unknown or not names:
        raise UsageError(f"unknown --candidates {', '.join(unknown) or repr(text)}; choose from {', '.join(JOINT_CANDIDATES)}"
                         ", comma-separated")
    return names


@app.command("sample", cls=CompactCommand)
@handle_errors
@with_model_options
@with_sampling_options
def sample_cmd(
    spec: ModelSpec,
    sampling: SamplingOptions,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", min=1, help="number of samples")] = 64,
    batch_size: Annotated[int, typer.Option(min=1, help="samples per network batch (sample k depends on (seed, k); the same batch size gives byte-identical files with any number of processes, another may change the network's last bits)")] = 64,
    out: Annotated[Path, typer.Option(help="output directory: one PNG per sample, written as it is made (folders of 1000 above 1000 samples); re-running the same command completes it")] = Path("samples"),
    fmt: Annotated[str, typer.Option("--format", help="png (one file per sample + grid.png) | npz (also samples.npz: uint8 NHWC arr_0, labels arr_1) | latents (latent pipelines: undecoded, one .npy per sample + latents.npz)")] = "png",
    taus: Annotated[Optional[Path], typer.Option("--taus", help="tau artifact; default: the cache entry for the model/sampler/trajectory/nfe")] = None,
    no_taus: Annotated[bool, typer.Option("--no-taus", help="plain sampler (baseline), no alignment")] = False,
    class_label: Annotated[Optional[list[int]], typer.Option("--class-label", help="class-conditional models: the label of the samples (repeat it to cycle through several) [default: random per sample]")] = None,
    precision: PrecisionOpt = "fp32",
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate samples with the aligned taus (or --no-taus for the plain sampler); under torchrun, split over the ranks."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; choose {', '.join(FORMATS)}")
    if taus is not None and no_taus:
        raise UsageError("--taus and --no-taus contradict each other; pass one of them")
    check_out_dir(out)  # fail fast, creating nothing: the directory is made when the first sample is written
    with spec.load_on_world(device, precision) as (loaded, dev, world):
        if fmt == "latents" and loaded.decoder is None:
            raise UsageError("--format latents is for latent pipelines (a diffusers pipeline with a vae/); "
                             "use --format png or npz")
        plan, artifact, source = resolve_plan(loaded, **asdict(sampling), taus_path=taus, use_taus=not no_taus, device=dev)
        chosen = artifact.taus if artifact is not None else None
        problem = not_better_message(artifact) if artifact is not None else None
        if problem and world.is_main:
            warn(f"{source}: {problem}")
        with progress_bar(f"sampling {num_samples}", quiet or not world.is_main) as progress:
            run = sample_to_dir(loaded, plan, chosen, out, num_samples=num_samples, batch_size=batch_size, seed=seed,
                                fmt=fmt, device=dev, class_labels=class_label, world=world, progress=progress)
    if run is None:  # not rank 0: rank 0 reports for all
        return
    peak = peak_memory(dev)
    summary = {
        "out": str(out), "num_samples": num_samples, "format": fmt, "seed": seed, "key": plan.key(loaded),
        "sampler": plan.sampler, "eta": plan.eta, "trajectory": plan.label, "nfe": plan.nfe,
        "aligned": artifact is not None, "taus_file": str(source) if source else None,
        "taus": chosen, "grid": run.files.get("grid"), "npz": run.files.get("npz"), "labels": run.labels,
        "prompts": spec.prompt_list() if isinstance(loaded.eps.conditioning, TextConditioning) else None,
        "guidance_scale": None if loaded.eps.conditioning is None else loaded.eps.conditioning.guidance_scale,
        "precision": precision, "generated": run.generated, "already_present": run.already_present,
        "world_size": run.world_size, "seconds": run.seconds, "peak_memory": peak.model_dump(mode="json"),
    }
    if json_out:
        emit_json(summary)
    else:
        kept = f", {run.already_present} already there" if run.already_present else ""
        typer.echo(f"wrote {run.generated} samples{kept} ({'aligned' if chosen else 'baseline'}, {plan.sampler} "
                   f"{plan.label} nfe={plan.nfe}, {run.world_size} process(es), {run.seconds:.1f}s, "
                   f"{peak.describe()} on rank 0) to {out}"
                   + "".join(f"; {name}: {path}" for name, path in run.files.items() if name in ("grid", "npz")))


@app.command("inspect", cls=CompactCommand)
@handle_errors
@with_model_options
def inspect_cmd(
    spec: ModelSpec,
    file: Annotated[Path, typer.Argument(help="tau artifact (.json)")],
    check: Annotated[bool, typer.Option("--check", help="also list what was verified (every command checks an artifact before using it: finite values, taus near their times, grid and schedule, verdict; with --model: that it belongs to it); exit 1 on a failure")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="write a PNG of tau_i - t_i and the per-step loss")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="json | diffusers (integer timesteps) | sigmas (k-diffusion style); one JSON document on stdout")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show an artifact: t_i, tau_i, tau_i - t_i, per-step loss; --check for CI; --plot; --format for other tools."""
    artifact = read_artifact(file)
    checks = check_artifact(artifact, spec.load("cpu", identity_only=True)[0].info if spec.given else None, source=file)
    if fmt is not None:
        emit_json(export_schedule(artifact, fmt))
        return
    if plot is not None:
        plot_artifact(artifact, plot)
    if json_out:
        document = artifact.model_dump(mode="json")
        emit_json({"artifact": document, "checks": checks, "ok": True} if check else document)
        return
    _print_table(artifact)
    for line in checks if check else ():
        typer.echo(f"ok: {line}")


def _print_table(artifact) -> None:
    table = Table(title=f"{artifact.key}  ({artifact.sampler.name} eta={artifact.sampler.eta:g}, "
                  f"{artifact.trajectory.label}, nfe={artifact.trajectory.nfe}, steps={artifact.trajectory.steps})")
    for column in ("step", "eval", "t_i", "t_i-1", "plain t", "tau", "tau - t", "loss before", "loss after"):
        table.add_column(column, justify="right")
    for row in inspect_rows(artifact):
        table.add_row(*row)
    stdout.print(table)
    typer.echo(f"model: {artifact.model.source} ({artifact.model.format}, sha256 {artifact.model.sha256[:16]}…); "
               f"fit: {artifact.fit.strategy}/{artifact.fit.objective}/{artifact.fit.optimizer} on {artifact.fit.device}"
               + (f" ({artifact.fit.precision})" if artifact.fit.precision not in (None, "fp32") else ""))
    c = artifact.conditioning
    if isinstance(c, TextConditioning):
        guidance = f"guidance w={c.guidance_scale:g}" if c.guidance_scale != 1 else "no guidance"
        null = ("the negative prompt" if c.negative_prompt_sha256 else
                "zeros (force_zeros_for_empty_prompt)" if c.zero_null else "the empty prompt")
        typer.echo(f"conditioning: text, fitted on {c.num_prompts} prompt(s) (sha256 {c.prompts_sha256[:16]}…; "
                   f"{guidance}, null condition {null})")
    elif c is not None:
        guidance = f"guidance w={c.guidance_scale:g}" if c.guidance_scale != 1 else "no guidance"
        null = f", null class {c.null_class}" if c.null_class is not None else ""
        labels = ", ".join(map(str, c.classes)) if len(c.classes) <= 12 else f"{c.classes[0]}..{c.classes[-1]}"
        typer.echo(f"conditioning: class labels {labels} ({guidance}{null})")
    if artifact.fit.candidate is not None:
        held = ", ".join(f"{name} {c.holdout_loss:.4g}{f' (best at step {c.best_iteration} of {c.steps})' if c.steps else ''}"
                         for name, c in (artifact.fit.candidates or {}).items())
        grid = "on a fitted grid" if artifact.trajectory.fitted else "on the kind's grid"
        typer.echo(f"candidate: {artifact.fit.candidate} ({grid}); held-out loss: plain "
                   f"{artifact.fit.loss_before[0]:.4g}, {held}")
    v = artifact.validation
    if v is not None:
        r = v.reference
        error = "" if r.error_l2 is None else f", its own error ~{r.error_l2:.2g}"
        where = "" if v.verdict == "unchanged" else f" [reference: {r.solver}, {r.nfe} evaluations{error}]"
        typer.echo(f"verdict: {v.summary()}{where}")


@app.command("eval", cls=CompactCommand)
@handle_errors
@with_model_options
@with_sampling_options
def eval_cmd(
    spec: ModelSpec,
    sampling: SamplingOptions,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", min=1, help="trajectories to compare")] = 64,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    reference_nfe: Annotated[int, typer.Option(min=2, help="network evaluations of the reference (DPM-Solver++(2M), steps of equal log-SNR length through every grid point), at least")] = 1000,
    ablation: Annotated[bool, typer.Option("--ablation", help="Fig. 6: also align only the first k steps, k = 0..K")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="directory for gap.png, taus.png (and ablation.png)")] = None,
    taus: Annotated[Optional[Path], typer.Option("--taus", help="tau artifact; default: the cache entry")] = None,
    inception_weights: Annotated[Optional[Path], typer.Option(help="FID and Inception Score (KID too with --data): a local TorchScript Inception-v3 (inception-2015-12-05.pt of StyleGAN2-ADA/EDM/clean-fid); nothing is downloaded")] = None,
    feature_net: Annotated[Optional[Path], typer.Option(help="Fréchet distance (KID too with --data) in the features of your TorchScript network f(x in [-1, 1]) -> [N, F]")] = None,
    data: Annotated[Optional[str], typer.Option(help="real images for --inception-weights/--feature-net: image folder, .npz, or mnist | cifar10 | digits")] = None,
    reference_stats: Annotated[Optional[Path], typer.Option(help="precomputed real-data statistics (.npz with mu, sigma) instead of --data")] = None,
    save_stats: Annotated[Optional[Path], typer.Option(help="write the statistics of --data to this .npz for later --reference-stats")] = None,
    precision: PrecisionOpt = "fp32",
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Trajectory gap (Fig. 2): baseline vs aligned distance to a high-NFE reference, per step and at the end;
    FID / feature-space Fréchet distance (and KID, Inception Score) to real data with --inception-weights or --feature-net."""
    if plot is not None:
        check_out_dir(plot)  # fail fast, creating nothing: the directory is made when the plots are written
    if inception_weights is not None and feature_net is not None:
        raise UsageError("--inception-weights and --feature-net both name a feature network; pass one of them")
    if inception_weights is None and feature_net is None and (data or reference_stats or save_stats):
        raise UsageError("--data, --reference-stats and --save-stats are for a feature distance; "
                         "also pass --inception-weights FILE or --feature-net FILE")
    with spec.load_on_world(device, precision) as (loaded, dev, world):
        plan, artifact, _ = resolve_plan(loaded, **asdict(sampling), taus_path=taus, device=dev)
        reference = None
        if world.is_main and (inception_weights is not None or feature_net is not None):
            net = FeatureNet(inception_weights or feature_net, "inception" if inception_weights else "torchscript", dev)
            reference = feature_reference(net, loaded.image_shape, data=data, stats=reference_stats, save=save_stats)
        with progress_bar(f"eval {plan.sampler} {plan.label} nfe={plan.nfe}", quiet or not world.is_main) as progress:
            report = trajectory_gap(loaded, plan, artifact.taus, num_samples=num_samples, batch_size=batch_size,
                                    reference_nfe=reference_nfe, seed=seed, ablation=ablation, features=reference,
                                    device=dev, world=world, progress=progress)
    if report is None:  # not rank 0: rank 0 reports for all
        return
    run_off = report.run_off()
    if run_off:
        warn(run_off)
    if plot is not None:
        prepare_out_dir(plot)
        plot_gap(report, plot / "gap.png")
        plot_artifact(artifact, plot / "taus.png")
        if report.ablation:
            plot_ablation(report, plot / "ablation.png")
    if json_out:
        emit_json(report.model_dump(mode="json"))
        return
    table = Table(title=f"trajectory gap, mean L2 to the reference ({report.reference}, {report.reference_nfe} "
                  f"evaluations; {report.num_samples} samples)")
    fitted = report.timesteps_aligned
    for column in ("t", "baseline", *(("t (fitted grid)",) if fitted else ()), "aligned"):
        table.add_column(column, justify="right")
    for k, (t, b, a) in enumerate(zip(report.timesteps, report.gap_baseline, report.gap_aligned)):
        table.add_row(f"{t:.1f}", f"{b:.4f}", *((f"{fitted[k]:.1f}",) if fitted else ()), f"{a:.4f}")
    stdout.print(table)
    if report.ablation:
        table = Table(title="ablation (Fig. 6): the first k steps aligned, from t_K down")
        for column in ("k", "end-point L2", "pixel FD"):
            table.add_column(column, justify="right")
        for row in report.ablation:
            table.add_row(str(row.aligned_steps), f"{row.end_l2:.4f}", f"{row.frechet_pixel:.4f}")
        stdout.print(table)
    change = (report.end_gap_ratio - 1) * 100
    interval = "" if report.end_gap_interval is None else \
        " [{:+.1f}%, {:+.1f}%] (95%)".format(*((v - 1) * 100 for v in report.end_gap_interval))
    clamped = "" if report.data_range is None else " of the images clamped to [{:g}, {:g}]".format(*report.data_range)
    typer.echo(f"end-point gap{clamped}: baseline {report.end_gap_baseline:.4f}, aligned {report.end_gap_aligned:.4f} "
               f"({change:+.1f}%{interval})")
    if report.kernel_change_interval is not None:
        typer.echo("kernel distance (MMD^2) to the reference samples: baseline {:.4g}, aligned {:.4g} ({:+.1f}% "
                   "[{:+.1f}%, {:+.1f}%] (95%))".format(report.kernel_baseline, report.kernel_aligned,
                                                     (report.kernel_aligned / report.kernel_baseline - 1) * 100,
                                                     *(v * 100 for v in report.kernel_change_interval)))
    typer.echo(f"pixel Fréchet distance to the reference samples: baseline {report.frechet_pixel_baseline:.4f}, "
               f"aligned {report.frechet_pixel_aligned:.4f}")
    f = report.features
    if f is not None:
        typer.echo(f"{'FID' if f.metric == 'fid' else 'feature Fréchet distance'} to {f.reference} "
                   f"({f.reference_samples} real, {f.num_samples} generated): baseline {f.baseline:.4f}, "
                   f"aligned {f.aligned:.4f}")
        if f.kid is not None:
            typer.echo(f"KID ({f.kid.library}, {f.kid.subsets} subsets of {f.kid.subset_size}): "
                       f"baseline {f.kid.baseline:.5f} ± {f.kid.baseline_std:.5f}, aligned {f.kid.aligned:.5f} ± {f.kid.aligned_std:.5f}")
        if f.inception_score is not None:
            s = f.inception_score
            typer.echo(f"Inception Score ({s.library}, {s.splits} splits; higher is better): baseline {s.baseline:.4f} ± "
                       f"{s.baseline_std:.4f}, aligned {s.aligned:.4f} ± {s.aligned_std:.4f}")


def run() -> None:
    """The console script: Typer/Click usage errors too become one ``error:`` line and exit code 2."""
    reuse_freed_host_memory()
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        code = 130
    except typer.TyperException as exc:  # Typer's (vendored Click) parsing errors
        code = getattr(exc, "exit_code", 2)
        if type(exc).__name__ != "NoArgsIsHelpError":  # a bare `dpm-align` has printed the help already
            ctx = getattr(exc, "ctx", None)
            message = " ".join(exc.format_message().split())
            print(f"error: {message}; see `{ctx.command_path if ctx else 'dpm-align'} --help`", file=sys.stderr)
    code = code if isinstance(code, int) else 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun rank leaves without Python's and torch's teardown: there, after the command had
        # finished and left the process group, gloo ranks on CPU died with SIGABRT ("terminate called
        # without an active exception") in about 1 run of 100 (docs/RELIABILITY.md), failing the run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    run()
