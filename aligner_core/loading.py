"""Loading networks from disk (offline) into an ``EpsModel`` plus the ``ModelInfo`` that keys artifacts.

Accepted ``--model`` forms:
- nothing: the embedded demo model shipped in ``dpm_align/aligner_core/demo``;
- a diffusers pipeline directory (``model_index.json``, ``unet/``, ``scheduler/``);
- a bare diffusers ``unet/`` directory (``config.json`` + weights) plus ``--schedule``;
- the project's checkpoint: ``NAME.safetensors`` or ``NAME.pt`` beside ``NAME.json``
  (a ``CheckpointConfig``), or a directory holding ``model.safetensors`` + ``config.json``;
- ``gmm[:dim=64,components=8,seed=0]``: the exact eps of a Gaussian mixture (``gmm.py``).
``.pt`` files load with ``torch.load(weights_only=True)`` unless ``trust_pickle`` is set.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from .artifact import ModelInfo
from .errors import DpmAlignError, UsageError
from .model import PREDICTION_TYPES, EpsModel
from .nets import ARCHITECTURES
from .schedule import BETA_SCHEDULES, NoiseSchedule, ScheduleSpec

DEMO_DIR = Path(__file__).parent / "demo"
CHECKPOINT_FORMAT = "dpm-align-checkpoint"


class CheckpointConfig(BaseModel):
    """Sidecar JSON of the project's own checkpoint format."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["dpm-align-checkpoint"] = CHECKPOINT_FORMAT
    architecture: str
    arch_config: dict[str, Any]
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    schedule: ScheduleSpec
    sample_shape: tuple[int, int, int]
    description: str = ""


@dataclass
class LoadedModel:
    eps: EpsModel
    info: ModelInfo
    sample_shape: tuple[int, int, int]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {device} was requested but CUDA is not available here; use --device cpu or --device auto"
            )
        return torch.device(device)
    raise UsageError(f"unknown device {device!r}; use auto, cpu or cuda")


def weights_sha256(net: nn.Module) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, sorted by name: independent of
    the file format, path or copy the weights came from."""
    digest = hashlib.sha256()
    state = net.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def parse_schedule_option(schedule: str) -> ScheduleSpec:
    """``--schedule``: a beta schedule name (1000 steps, DDPM betas) or a scheduler_config.json path."""
    if schedule in BETA_SCHEDULES:
        if schedule == "scaled_linear":
            return ScheduleSpec(beta_schedule=schedule, beta_start=0.00085, beta_end=0.012)
        return ScheduleSpec(beta_schedule=schedule)
    path = Path(schedule)
    if path.is_file():
        return ScheduleSpec.from_diffusers_config(_read_json(path, "scheduler config"))
    raise UsageError(
        f"--schedule {schedule!r} is neither a schedule name ({', '.join(BETA_SCHEDULES)}) "
        "nor an existing scheduler_config.json file"
    )


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} {path} is not valid JSON ({exc.msg}); fix or re-export it") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path} must hold a JSON object")
    return data


def _load_state_dict(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:  # corrupt, truncated or unsafe files: one line, no traceback
        if not trust_pickle and "weights_only" in str(exc):
            raise UsageError(
                f"{path} holds pickled Python objects that weights_only loading refuses; "
                "pass --trust-pickle only if you trust its source"
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot load weights from {path} ({first}); the file is corrupt or truncated: re-export it") from None
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{path} is not a state dict of tensors; save `model.state_dict()` with torch.save")
    return obj


def _build_checkpoint(weights: Path, config_path: Path, trust_pickle: bool) -> tuple[nn.Module, CheckpointConfig]:
    try:
        config = CheckpointConfig.model_validate(_read_json(config_path, "checkpoint config"))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UsageError(
            f"checkpoint config {config_path} is invalid ({'.'.join(map(str, err['loc']))}: {err['msg']})"
        ) from None
    if config.architecture == "diffusers-unet2d":
        from diffusers import UNet2DModel

        net: nn.Module = DiffusersUNet(UNet2DModel.from_config(config.arch_config))
        target = net.unet
    elif config.architecture in ARCHITECTURES:
        net = ARCHITECTURES[config.architecture](**config.arch_config)
        target = net
    else:
        raise UsageError(
            f"unknown architecture {config.architecture!r} in {config_path}; "
            f"known: {', '.join([*ARCHITECTURES, 'diffusers-unet2d'])}"
        )
    state = _load_state_dict(weights, trust_pickle)
    try:
        target.load_state_dict(state)
    except RuntimeError as exc:
        raise UsageError(f"weights in {weights} do not fit the architecture in {config_path} ({str(exc).splitlines()[0]})") from None
    return net, config


class DiffusersUNet(nn.Module):
    """Adapter: diffusers UNet2DModel(x, t).sample -> tensor (accepts fractional t)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def _load_diffusers_unet(path: Path, subfolder: str | None) -> nn.Module:
    try:
        from diffusers import UNet2DModel
    except ImportError as exc:  # pragma: no cover - diffusers is a dependency
        raise DpmAlignError(f"loading a diffusers model needs the diffusers package ({exc}); pip install diffusers") from None
    where = path / subfolder if subfolder else path
    config = _read_json(where / "config.json", "unet config")
    if config.get("_class_name") != "UNet2DModel":
        raise UsageError(
            f"{where} holds a {config.get('_class_name', 'unknown')} network; dpm-align supports diffusers "
            "UNet2DModel (pixel-space unconditional) checkpoints"
        )
    try:
        unet = UNet2DModel.from_pretrained(str(path), subfolder=subfolder, local_files_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot load the UNet from {where} ({first}); the weights are missing or corrupt") from None
    return DiffusersUNet(unet)


@dataclass
class _Found:
    """A network and what is needed to wrap and key it."""

    net: nn.Module
    schedule: ScheduleSpec
    prediction_type: str
    format: str
    sample_shape: tuple[int, ...]
    source: str
    dtype: torch.dtype = torch.float32


def _from_checkpoint(weights: Path, config_path: Path, trust_pickle: bool, fmt: str, source: str) -> _Found:
    net, config = _build_checkpoint(weights, config_path, trust_pickle)
    return _Found(net, config.schedule, config.prediction_type, fmt, config.sample_shape, source)


def _from_diffusers(path: Path, schedule: str | None) -> _Found:
    source = str(path.resolve())
    if (path / "model_index.json").is_file():
        if not (path / "unet" / "config.json").is_file():
            raise UsageError(f"{path} has model_index.json but no unet/config.json; it is not a UNet diffusion pipeline")
        net = _load_diffusers_unet(path, "unet")
        sched_file = path / "scheduler" / "scheduler_config.json"
        sched_config = _read_json(sched_file, "scheduler config") if sched_file.is_file() else None
        if schedule is not None:
            spec = parse_schedule_option(schedule)
        elif sched_config is not None:
            spec = ScheduleSpec.from_diffusers_config(sched_config)
        else:
            raise UsageError(f"{path} has no scheduler/scheduler_config.json; pass --schedule")
        prediction = (sched_config or {}).get("prediction_type", "epsilon")
        fmt = "diffusers-pipeline"
    elif schedule is None:
        raise UsageError(
            f"{path} is a bare UNet without a scheduler; pass --schedule "
            f"({' | '.join(BETA_SCHEDULES)} | path/to/scheduler_config.json)"
        )
    else:
        net, spec, prediction, fmt = _load_diffusers_unet(path, None), parse_schedule_option(schedule), "epsilon", "diffusers-unet"
    unet_cfg = net.unet.config
    return _Found(net, spec, prediction, fmt, (int(unet_cfg.in_channels), *_hw(unet_cfg.sample_size)), source)


def _from_gmm(text: str) -> _Found:
    """``gmm`` or ``gmm:dim=64,components=8,seed=0``: the exact eps of a Gaussian mixture."""
    from .gmm import GaussianMixture, GMMEpsNet

    options = {"dim": 64, "components": 8, "seed": 0}
    for item in filter(None, text.partition(":")[2].split(",")):
        name, _, value = item.partition("=")
        if name not in options or not value.isdigit() or int(value) < 1:
            raise UsageError(f"bad gmm option {item!r} in --model {text}; use gmm:dim=64,components=8,seed=0")
        options[name] = int(value)
    spec = ScheduleSpec()
    mixture = GaussianMixture.random(options["components"], options["dim"], seed=options["seed"])
    side = int(round(options["dim"] ** 0.5))
    shape = (1, side, side) if side * side == options["dim"] else (1, 1, options["dim"])
    canonical = "gmm:" + ",".join(f"{k}={v}" for k, v in options.items())
    return _Found(GMMEpsNet(mixture, NoiseSchedule(spec)), spec, "epsilon", "gmm", shape, canonical, torch.float64)


def _from_path(p: Path, schedule: str | None, trust_pickle: bool) -> _Found:
    if not p.exists():
        raise UsageError(
            f"model path {p} does not exist; pass a diffusers pipeline directory, a unet/ directory or a "
            ".safetensors/.pt checkpoint (omit --model to use the embedded demo model)"
        )
    source = str(p.resolve())
    if p.is_dir() and (p / "model.safetensors").is_file() and _is_checkpoint_config(p / "config.json"):
        found = _from_checkpoint(p / "model.safetensors", p / "config.json", trust_pickle, CHECKPOINT_FORMAT, source)
    elif p.is_dir():
        if not (p / "model_index.json").is_file() and not (p / "config.json").is_file():
            raise UsageError(
                f"{p} is not a diffusers model directory (no model_index.json or config.json); "
                "point --model at a pipeline directory, its unet/ folder, or a checkpoint file"
            )
        return _from_diffusers(p, schedule)
    elif p.suffix in (".safetensors", ".pt", ".pth", ".bin"):
        sidecar = sidecar_config(p)
        if not sidecar.is_file():
            raise UsageError(f"checkpoint {p} needs its config {sidecar} (architecture, schedule, sample_shape) beside it")
        found = _from_checkpoint(p, sidecar, trust_pickle, CHECKPOINT_FORMAT, source)
    else:
        raise UsageError(f"{p} is not a model this tool reads; use a diffusers directory or a .safetensors/.pt checkpoint")
    if schedule is not None:
        found.schedule = parse_schedule_option(schedule)
    return found


def load_model(
    path: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    schedule: str | None = None,
    prediction_type: str | None = None,
    trust_pickle: bool = False,
) -> LoadedModel:
    """Load ``path`` offline and wrap it as eps(x, t). ``None`` is the embedded demo model;
    ``gmm[:options]`` the exact Gaussian-mixture model."""
    dev = resolve_device(device) if isinstance(device, str) else device
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise UsageError(f"unknown --prediction-type {prediction_type!r}; choose one of: {', '.join(PREDICTION_TYPES)}")
    if path is None:
        found = _from_checkpoint(DEMO_DIR / "model.safetensors", DEMO_DIR / "config.json", False, "dpm-align-demo",
                                 "embedded:demo-mnist")
    elif str(path) == "gmm" or str(path).startswith("gmm:"):
        found = _from_gmm(str(path))
    else:
        found = _from_path(Path(path).expanduser(), schedule, trust_pickle)
    pred = prediction_type or found.prediction_type
    if pred not in PREDICTION_TYPES:
        raise UsageError(f"model prediction type {pred!r} is not supported; use --prediction-type epsilon|sample|v_prediction")
    net = found.net.to(dev).eval().requires_grad_(False)
    spec = found.schedule
    info = ModelInfo(
        sha256=weights_sha256(net),
        source=found.source,
        format=found.format,
        prediction_type=pred,
        num_train_timesteps=spec.num_train_timesteps,
        schedule=spec,
    )
    return LoadedModel(EpsModel(net, NoiseSchedule(spec), pred, found.dtype), info, tuple(int(v) for v in found.sample_shape))


def _hw(sample_size: int | list | tuple) -> tuple[int, int]:
    return (int(sample_size), int(sample_size)) if isinstance(sample_size, int) else tuple(int(v) for v in sample_size)


def _is_checkpoint_config(path: Path) -> bool:
    try:
        return path.is_file() and json.loads(path.read_text()).get("format") == CHECKPOINT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def sidecar_config(weights: Path) -> Path:
    """``NAME.json`` beside ``NAME.safetensors``; ``config.json`` for ``model.safetensors``."""
    return weights.parent / "config.json" if weights.stem == "model" else weights.with_suffix(".json")


def save_checkpoint(net: nn.Module, config: CheckpointConfig, weights_path: Path) -> None:
    """Write the project's checkpoint: ``weights_path`` (.safetensors) + ``config.json`` beside it
    when ``weights_path`` is ``model.safetensors``, else ``<stem>.json``."""
    from safetensors.torch import save_file

    weights_path = Path(weights_path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    target = net.unet if isinstance(net, DiffusersUNet) else net
    save_file({k: v.detach().cpu().contiguous() for k, v in target.state_dict().items()}, str(weights_path))
    sidecar_config(weights_path).write_text(config.model_dump_json(indent=2) + "\n", encoding="utf-8")
