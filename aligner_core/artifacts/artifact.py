"""The tau artifact: a versioned JSON document (pydantic, extra="forbid"), its key, the cache.

Artifacts are written atomically (temp file in the same directory + os.replace) and looked up by
key; a cache entry is written under a file lock (``write_cache_entry``). A reader refuses an
artifact whose model, sampler or trajectory differ from the request, and checks its values first
(``artifact_check``). An artifact is a function of the inputs and the seed: only ``created``
differs between two runs on the same device.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from types import EllipsisType
from typing import Any, Literal

import platformdirs
from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import DpmAlignError, UsageError
from ..sampling.schedule import ScheduleSpec
from ..sampling.analytic import GammaTable
from ..atomic import atomic_file, cannot_write
from ..models.model import AnyConditioning, same_key
from ..fitting.fit import CandidateFit
from ..evaluation.validation import Validation, upgrade_v3

SCHEMA_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelInfo(_Strict):
    sha256: str = Field(description="sha256 over the network's tensors (names, dtypes, shapes, bytes)")
    source: str
    format: str
    prediction_type: Literal["epsilon", "sample", "v_prediction"]
    num_train_timesteps: int
    schedule: ScheduleSpec


class SamplerInfo(_Strict):
    name: str
    eta: float


class TrajectoryInfo(_Strict):
    kind: str
    nfe: int = Field(description="network evaluations = steps x evaluations per step")
    steps: int = Field(description="K, the number of sampler steps")
    rho: float | None = Field(None, description="edm trajectory only")
    fitted: bool = Field(False, description="the interior timesteps were fitted (ends kept): the sampler runs on "
                         "them, not on the kind's grid")
    timesteps: list[float] = Field(description="K+1 grid points, sampling order, first = start")
    alphas: list[float]
    sigmas: list[float]

    @model_validator(mode="after")
    def _lengths(self) -> "TrajectoryInfo":
        n = self.steps + 1
        if not (len(self.timesteps) == len(self.alphas) == len(self.sigmas) == n):
            raise ValueError(f"timesteps, alphas and sigmas must each have steps+1 = {n} values")
        if self.steps < 1 or self.nfe % self.steps:
            raise ValueError(f"nfe {self.nfe} is not a multiple of steps {self.steps}")
        return self

    @property
    def label(self) -> str:
        return trajectory_label(self.kind, self.rho)


class FitInfo(_Strict):
    strategy: str
    objective: str
    optimizer: str
    settings: dict[str, Any]
    num_samples: int
    iterations: int
    seed: int
    device: str
    dtype: str
    precision: str | None = Field(None, description="the network's arithmetic during the fit and the verdict (fp32 | tf32 "
                                  "| bf16 | fp16; None: torch's settings, and artifacts before 0.2.0)")
    loss_before: list[float | None]
    loss_after: list[float | None]
    candidate: str | None = Field(None, description="joint fits: the winning candidate (taus, grid+taus, grid; "
                                  "'name (retry)' when the longer fit of retry_gain won)")
    candidates: dict[str, CandidateFit] | None = Field(None, description="joint fits: every candidate's held-out loss")


class TauArtifact(_Strict):
    schema_version: Literal[4] = SCHEMA_VERSION
    dpm_align_version: str
    created: datetime
    key: str
    model: ModelInfo
    sampler: SamplerInfo
    trajectory: TrajectoryInfo
    taus: list[float] = Field(description="one per network evaluation, sampling order, network time units")
    eval_times: list[float] = Field(description="the plain sampler's network time of each evaluation (what taus replace)")
    fit: FitInfo
    validation: Validation | None = Field(None, description="the verdict: baseline vs aligned on held-out seeds")
    analytic: GammaTable | None = Field(None, description="analytic samplers: Gamma_t at every step time")
    conditioning: AnyConditioning | None = Field(None, description="class- or text-conditional models: kind, "
                                                 "guidance (and the prompts' sha256 and count); None = unconditional")

    @model_validator(mode="after")
    def _consistent(self) -> "TauArtifact":
        n = self.trajectory.nfe
        for name in ("taus", "eval_times"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} values; trajectory.nfe is {n}")
        for name in ("loss_before", "loss_after"):
            if len(getattr(self.fit, name)) != n:
                raise ValueError(f"fit.{name} has {len(getattr(self.fit, name))} values; trajectory.nfe is {n}")
        expected = artifact_key(self.model.sha256, self.sampler.name, self.sampler.eta, self.trajectory.label, n,
                                self.conditioning)
        if self.key != expected:
            raise ValueError(f"key {self.key!r} does not match its contents (expected {expected!r})")
        return self


def trajectory_label(kind: str, rho: float | None = None) -> str:
    """The trajectory as it appears in keys: the kind, plus rho for edm (``edm-rho7``). A fitted
    grid is keyed by its kind: it is what was asked for."""
    return f"{kind}-rho{rho:g}" if rho is not None else kind


def artifact_key(model_sha256: str, sampler: str, eta: float, trajectory: str, nfe: int,
                 conditioning: AnyConditioning | None = None) -> str:
    """model sha256 (first 16 hex digits) + sampler + eta + trajectory label + NFE (+ the
    conditioning label of a conditional model, e.g. ``class-cfg3-null10``, ``text-cfg7.5``), filename-safe."""
    key = f"{model_sha256[:16]}-{sampler}-eta{eta:g}-{trajectory}-nfe{nfe}"
    return key if conditioning is None else f"{key}-{conditioning.label}"


def upgrade(data: dict) -> dict:
    """An older schema's document as schema v4. v1 -> v2 (one evaluation per step): add
    trajectory.steps/rho and eval_times; v2 -> v3 only added the optional ``conditioning``; v3 ->
    v4: a fitted grid is keyed by its kind (``-fitgrid`` leaves the key), and the validation block
    becomes a verdict (v3's point estimates kept, without intervals). Every version: ``fit.seconds``
    (the fit's duration, stored until 0.2.0 made artifacts deterministic) is dropped."""
    if isinstance(data.get("fit"), dict) and "seconds" in data["fit"]:
        data = dict(data, fit={k: v for k, v in data["fit"].items() if k != "seconds"})
    if data.get("schema_version") == 1:
        data = _upgrade_v1(data)
    if data.get("schema_version") == 2:
        data = dict(data, schema_version=3)
    if data.get("schema_version") == 3:
        data = dict(data, schema_version=4)
        if isinstance(data.get("key"), str):
            data["key"] = data["key"].replace("-fitgrid-nfe", "-nfe")
        if isinstance(data.get("validation"), dict):
            try:
                data["validation"] = upgrade_v3(data["validation"])
            except (KeyError, TypeError, ZeroDivisionError):
                pass  # left as it is: schema validation names the problem
    return data


def _upgrade_v1(data: dict) -> dict:
    data = dict(data, schema_version=2)
    trajectory = dict(data.get("trajectory") or {})
    if "nfe" in trajectory:
        trajectory.setdefault("steps", trajectory["nfe"])
    if "timesteps" in trajectory:
        data.setdefault("eval_times", list(trajectory["timesteps"][:-1]))
    data["trajectory"] = trajectory
    return data


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def cache_dir() -> Path:
    """``$DPM_ALIGN_CACHE_DIR`` or the platform user cache directory."""
    env = os.environ.get("DPM_ALIGN_CACHE_DIR")
    return Path(env) if env else Path(platformdirs.user_cache_dir("dpm-align")) / "taus"


def cache_path(key: str) -> Path:
    return cache_dir() / f"{key}.json"


OUT_FIX = "choose a writable --out path"
CACHE_FIX = "set DPM_ALIGN_CACHE_DIR to a writable directory, or pass --no-cache --out FILE"
LOCK_TIMEOUT_S = 60.0  # a cache entry's lock is held only while the entry is written


def write_cache_entry(artifact: TauArtifact) -> Path:
    """Write ``artifact`` as the cache entry of its key, holding the key's file lock
    (``.<key>.json.lock``) so that one process at a time writes it: two processes aligning the same
    key both fit, and the one that finishes last writes last and wins; the entry is always one whole
    artifact. Under the lock, temporary files that killed writers of this key left are removed."""
    path = cache_path(artifact.key)
    lock = path.with_name(f".{path.name}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(lock, timeout=LOCK_TIMEOUT_S):
            for stale in path.parent.glob(glob.escape(f".{path.name}.") + "*.tmp"):
                stale.unlink(missing_ok=True)
            return write_json_atomic(artifact, path, CACHE_FIX)
    except Timeout:
        raise DpmAlignError(f"another process has held the cache lock {lock} for {LOCK_TIMEOUT_S:g} s; wait for it "
                            "to finish (or end it), or pass --no-cache --out FILE") from None
    except OSError as exc:
        raise cannot_write(path, exc, CACHE_FIX) from None


def ensure_writable(path: Path, fix: str = OUT_FIX) -> None:
    """Fail before any work if ``path`` cannot be written (checked by creating a probe file)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a directory; pass a file path such as {path / 'taus.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise cannot_write(path, exc, fix) from None


def write_artifact(artifact: TauArtifact, path: Path) -> Path:
    """Atomic write: a reader sees either the old file or the whole new one, never half."""
    return write_json_atomic(artifact, path)


def write_json_atomic(document: BaseModel, path: Path, fix: str = OUT_FIX) -> Path:
    """Write a pydantic document as JSON atomically (temporary file in the same directory, fsync,
    rename); ``fix``: what the one-line error suggests when it cannot be written."""
    text = document.model_dump_json(indent=2) + "\n"
    with atomic_file(path, ".tmp", fix) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def read_artifact(path: Path) -> TauArtifact:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"artifact {path} does not exist; run `dpm-align align` to create it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read artifact {path}: {exc}; check the path and permissions") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"artifact {path} is not valid JSON ({exc.msg} at line {exc.lineno}; truncated?); "
            "re-create it with `dpm-align align`"
        ) from None
    if isinstance(data, dict) and data.get("schema_version") not in (None, *READABLE_VERSIONS):
        raise UsageError(
            f"artifact {path} has schema_version {data.get('schema_version')!r}; this dpm-align reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}: upgrade dpm-align or re-create the artifact"
        )
    if isinstance(data, dict):
        data = upgrade(data)
    try:
        return TauArtifact.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = json.dumps(".".join(str(p) for p in err["loc"]), ensure_ascii=False)[1:-1] or "<root>"  # one line
        raise UsageError(
            f"artifact {path} does not match the tau artifact schema v{SCHEMA_VERSION} "
            f"({where}: {err['msg']}); re-create it with `dpm-align align`"
        ) from None


def check_artifact_matches(
    artifact: TauArtifact,
    *,
    model: ModelInfo,
    sampler: str | None = None,
    eta: float | None = None,
    trajectory: str | None = None,
    nfe: int | None = None,
    conditioning: AnyConditioning | None | EllipsisType = ...,
    path: Path | str = "artifact",
) -> None:
    """Refuse an artifact fitted for another model, schedule, sampler, trajectory or conditioning
    (``trajectory`` is compared with the artifact's label: the kind, plus rho for edm;
    ``conditioning`` is checked unless left out, None meaning unconditional; for text conditioning
    the kind and guidance, not the prompts)."""
    problems = []
    if artifact.model.sha256 != model.sha256:
        problems.append(f"model sha256 {artifact.model.sha256[:16]}… != {model.sha256[:16]}…")
    else:
        if artifact.model.schedule != model.schedule:
            problems.append("noise schedule differs")
        if artifact.model.prediction_type != model.prediction_type:
            problems.append(f"prediction type {artifact.model.prediction_type} != {model.prediction_type}")
    if sampler is not None and artifact.sampler.name != sampler:
        problems.append(f"sampler {artifact.sampler.name} != {sampler}")
    if eta is not None and artifact.sampler.eta != eta:
        problems.append(f"eta {artifact.sampler.eta:g} != {eta:g}")
    if trajectory is not None and artifact.trajectory.label != trajectory:
        problems.append(f"trajectory {artifact.trajectory.label} != {trajectory}")
    if nfe is not None and artifact.trajectory.nfe != nfe:
        problems.append(f"nfe {artifact.trajectory.nfe} != {nfe}")
    if conditioning is not ... and not same_key(artifact.conditioning, conditioning):
        label = lambda c: "unconditional" if c is None else c.label  # noqa: E731
        problems.append(f"conditioning {label(artifact.conditioning)} != {label(conditioning)}")
    if problems:
        raise DpmAlignError(
            f"{path} was fitted for something else ({'; '.join(problems)}); "
            "run `dpm-align align` for this model and settings, or pass the matching --taus file"
        )
