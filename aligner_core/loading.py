"""Loading networks from disk (offline) into an ``EpsModel`` plus the ``ModelInfo`` that keys artifacts.

Accepted ``--model`` forms:
- nothing: the embedded demo model shipped in ``dpm_align/aligner_core/demo``;
- a diffusers pipeline directory (``model_index.json``, ``unet/``, ``scheduler/``);
- a bare diffusers ``unet/`` directory (``config.json`` + weights) plus ``--schedule``;
- the project's checkpoint: ``NAME.safetensors`` or ``NAME.pt`` beside ``NAME.json``
  (a ``CheckpointConfig``), or a directory holding ``model.safetensors`` + ``config.json``.
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


def _diffusers_net_and_config(path: Path, schedule: str | None) -> tuple[nn.Module, ScheduleSpec, str, str]:
    if (path / "model_index.json").is_file():
        if not (path / "unet" / "config.json").is_file():
            raise UsageError(f"{path} has model_index.json but no unet/config.json; it is not a UNet diffusion pipeline")
        net = _load_diffusers_unet(path, "unet")
        sched_file = path / "scheduler" / "scheduler_config.json"
        if schedule is not None:
            spec = parse_schedule_option(schedule)
        elif sched_file.is_file():
            spec = ScheduleSpec.from_diffusers_config(_read_json(sched_file, "scheduler config"))
        else:
            raise UsageError(f"{path} has no scheduler/scheduler_config.json; pass --schedule")
        prediction = _read_json(sched_file, "scheduler config").get("prediction_type", "epsilon") if sched_file.is_file() else "epsilon"
        return net, spec, prediction, "diffusers-pipeline"
    if schedule is None:
        raise UsageError(
            f"{path} is a bare UNet without a scheduler; pass --schedule "
            f"({' | '.join(BETA_SCHEDULES)} | path/to/scheduler_config.json)"
        )
    net = _load_diffusers_unet(path, None)
    return net, parse_schedule_option(schedule), "epsilon", "diffusers-unet"


def load_model(
    path: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    schedule: str | None = None,
    prediction_type: str | None = None,
    trust_pickle: bool = False,
) -> LoadedModel:
    """Load ``path`` (None = embedded demo model) offline and wrap it as eps(x, t)."""
    dev = resolve_device(device) if isinstance(device, str) else device
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise UsageError(f"unknown --prediction-type {prediction_type!r}; choose one of: {', '.join(PREDICTION_TYPES)}")
    if path is None:
        weights, config_path, source = DEMO_DIR / "model.safetensors", DEMO_DIR / "config.json", "embedded:demo-mnist"
        net, config = _build_checkpoint(weights, config_path, trust_pickle=False)
        spec, pred, fmt, shape = config.schedule, config.prediction_type, "dpm-align-demo", config.sample_shape
    else:
        p = Path(path).expanduser()
        source = str(p.resolve()) if p.exists() else str(p)
        if not p.exists():
            raise UsageError(
                f"model path {p} does not exist; pass a diffusers pipeline directory, a unet/ directory or a "
                ".safetensors/.pt checkpoint (omit --model to use the embedded demo model)"
            )
        if p.is_dir() and (p / "model.safetensors").is_file() and _is_checkpoint_config(p / "config.json"):
            net, config = _build_checkpoint(p / "model.safetensors", p / "config.json", trust_pickle)
            spec, pred, fmt, shape = config.schedule, config.prediction_type, CHECKPOINT_FORMAT, config.sample_shape
        elif p.is_dir():
            if not (p / "model_index.json").is_file() and not (p / "config.json").is_file():
                raise UsageError(
                    f"{p} is not a diffusers model directory (no model_index.json or config.json); "
                    "point --model at a pipeline directory, its unet/ folder, or a checkpoint file"
                )
            net, spec, pred, fmt = _diffusers_net_and_config(p, schedule)
            unet_cfg = net.unet.config
            shape = (int(unet_cfg.in_channels), *_hw(unet_cfg.sample_size))
        elif p.suffix in (".safetensors", ".pt", ".pth", ".bin"):
            sidecar = sidecar_config(p)
            if not sidecar.is_file():
                raise UsageError(f"checkpoint {p} needs its config {sidecar} (architecture, schedule, sample_shape) beside it")
            net, config = _build_checkpoint(p, sidecar, trust_pickle)
            spec, pred, fmt, shape = config.schedule, config.prediction_type, CHECKPOINT_FORMAT, config.sample_shape
        else:
            raise UsageError(
                f"{p} is not a model this tool reads; use a diffusers directory or a .safetensors/.pt checkpoint"
            )
        if schedule is not None and fmt == CHECKPOINT_FORMAT:
            spec = parse_schedule_option(schedule)
    pred = prediction_type or pred
    if pred not in PREDICTION_TYPES:
        raise UsageError(f"model prediction type {pred!r} is not supported; use --prediction-type epsilon|sample|v_prediction")
    net = net.to(dev).eval().requires_grad_(False)
    sched = NoiseSchedule(spec)
    info = ModelInfo(
        sha256=weights_sha256(net),
        source=source,
        format=fmt,
        prediction_type=pred,
        num_train_timesteps=spec.num_train_timesteps,
        schedule=spec,
    )
    return LoadedModel(EpsModel(net, sched, pred), info, tuple(int(v) for v in shape))


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
