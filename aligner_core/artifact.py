"""The tau artifact: a versioned JSON document (pydantic, extra="forbid"), its key, the cache.

Artifacts are written atomically (temp file in the same directory + os.replace) and looked up by
key; a reader refuses an artifact whose model, sampler or trajectory differ from the request.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import DpmAlignError, UsageError
from .schedule import ScheduleSpec
from .validation import Validation

SCHEMA_VERSION = 1


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
    nfe: int
    timesteps: list[float] = Field(description="K+1 grid points, sampling order, first = start")
    alphas: list[float]
    sigmas: list[float]

    @model_validator(mode="after")
    def _lengths(self) -> "TrajectoryInfo":
        n = self.nfe + 1
        if not (len(self.timesteps) == len(self.alphas) == len(self.sigmas) == n):
            raise ValueError(f"timesteps, alphas and sigmas must each have nfe+1 = {n} values")
        return self


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
    seconds: float
    loss_before: list[float | None]
    loss_after: list[float | None]


class TauArtifact(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    dpm_align_version: str
    created: datetime
    key: str
    model: ModelInfo
    sampler: SamplerInfo
    trajectory: TrajectoryInfo
    taus: list[float] = Field(description="one per network evaluation, sampling order, network time units")
    fit: FitInfo
    validation: Validation | None = Field(None, description="baseline vs aligned on held-out seeds (align --validate)")

    @model_validator(mode="after")
    def _consistent(self) -> "TauArtifact":
        if len(self.taus) != self.trajectory.nfe:
            raise ValueError(f"taus has {len(self.taus)} values; trajectory.nfe is {self.trajectory.nfe}")
        expected = artifact_key(self.model.sha256, self.sampler.name, self.sampler.eta, self.trajectory.kind, self.trajectory.nfe)
        if self.key != expected:
            raise ValueError(f"key {self.key!r} does not match its contents (expected {expected!r})")
        return self


def artifact_key(model_sha256: str, sampler: str, eta: float, trajectory: str, nfe: int) -> str:
    """model sha256 (first 16 hex digits) + sampler + eta + trajectory + NFE, filename-safe."""
    return f"{model_sha256[:16]}-{sampler}-eta{eta:g}-{trajectory}-nfe{nfe}"


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def cache_dir() -> Path:
    """``$DPM_ALIGN_CACHE_DIR`` or the platform user cache directory."""
    env = os.environ.get("DPM_ALIGN_CACHE_DIR")
    return Path(env) if env else Path(platformdirs.user_cache_dir("dpm-align")) / "taus"


def cache_path(key: str) -> Path:
    return cache_dir() / f"{key}.json"


def ensure_writable(path: Path) -> None:
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
        raise UsageError(f"cannot write {path} ({exc.strerror or exc}); choose a writable --out path") from None


def write_artifact(artifact: TauArtifact, path: Path) -> Path:
    """Atomic write: a reader sees either the old file or the whole new one, never half."""
    path = Path(path)
    text = artifact.model_dump_json(indent=2) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}; choose a writable --out path") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    if isinstance(data, dict) and data.get("schema_version") not in (None, SCHEMA_VERSION):
        raise UsageError(
            f"artifact {path} has schema_version {data.get('schema_version')!r}; this dpm-align reads "
            f"version {SCHEMA_VERSION}: upgrade dpm-align or re-create the artifact"
        )
    try:
        return TauArtifact.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
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
    path: Path | str = "artifact",
) -> None:
    """Refuse an artifact fitted for another model, schedule, sampler or trajectory."""
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
    if trajectory is not None and artifact.trajectory.kind != trajectory:
        problems.append(f"trajectory {artifact.trajectory.kind} != {trajectory}")
    if nfe is not None and artifact.trajectory.nfe != nfe:
        problems.append(f"nfe {artifact.trajectory.nfe} != {nfe}")
    if problems:
        raise DpmAlignError(
            f"{path} was fitted for something else ({'; '.join(problems)}); "
            "run `dpm-align align` for this model and settings, or pass the matching --taus file"
        )
