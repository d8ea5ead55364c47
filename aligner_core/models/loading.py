"""Loading networks from disk (offline) into an ``EpsModel`` plus the ``ModelInfo`` that keys artifacts.

Accepted ``--model`` forms:
- nothing: the embedded demo model shipped in ``dpm_align/aligner_core/models/demo``;
- a diffusers pipeline directory (``model_index.json``, ``unet/`` or ``transformer/``, ``scheduler/``):
  pixel-space ``UNet2DModel``; latent pipelines with a ``vae/`` (sampled in latent space, decoded by
  ``sample``); Stable Diffusion (``UNet2DConditionModel`` + ``tokenizer/`` + ``text_encoder/``,
  conditioned on ``prompts``); DiT (class-conditional transformer, learned sigma) (``pipelines.py``);
- a bare diffusers ``unet/`` directory (``config.json`` + weights) plus ``--schedule``;
- the project's checkpoint: ``NAME.safetensors`` or ``NAME.pt`` beside ``NAME.json``
  (a ``CheckpointConfig``), or a directory holding ``model.safetensors`` + ``config.json``;
- ``gmm[:dim=64,components=8,seed=0]``: the exact eps of a Gaussian mixture (``gmm.py``);
- a TorchScript file (``torch.jit.save``, any suffix), detected by its archive members;
- ``package.module:function``: a Python factory returning the ``nn.Module``;
- a state dict (``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin``) plus ``arch="package.module:Class"``
  and ``arch_config`` (a JSON file of constructor keyword arguments);
- a pickled whole ``nn.Module`` (``torch.save(model)``), only with ``trust_pickle``.
TorchScript and pickled modules take schedule / prediction type / sample shape from a sidecar
``NAME.json`` (a ``SidecarConfig``) or the keyword arguments (which win); factories and ``arch``
take them from the keyword arguments only (schedule ``linear`` and ``epsilon`` by default).
All networks are called as ``net(x, t)`` and return the prediction tensor, and are keyed by
``weights_sha256`` of their state dict, whatever form they came in.
``.pt`` files load with ``torch.load(weights_only=True)`` unless ``trust_pickle`` is set.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import numbers
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError, field_validator
from torch import nn

from ..artifacts.artifact import ModelInfo
from ..errors import DpmAlignError, UsageError, first_line
from .model import PREDICTION_TYPES, Conditioning, EpsModel, check_precision
from .nets import ARCHITECTURES
from .pipelines import (TEXT_UNETS, TRANSFORMERS, LatentDecoder, TextUNet, check_text_pipeline, denoiser_folder,
                        encode_prompts, encode_prompts_xl, is_sdxl, load_dit, load_text_unet, load_vae, quiet_loading,
                        text_conditioning)
from ..sampling.schedule import BETA_SCHEDULES, NoiseSchedule, ScheduleSpec

DEMO_DIR = Path(__file__).parent / "demo"
CHECKPOINT_FORMAT = "dpm-align-checkpoint"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
SCHEDULE_HINT = f"--schedule {' | '.join(BETA_SCHEDULES)} | path/to/scheduler_config.json"
_IMPORT_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


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


class SidecarConfig(BaseModel):
    """``NAME.json`` beside a TorchScript file or a pickled module: what the network itself does
    not say. Every field may be missing when the keyword arguments (CLI options) give it."""

    model_config = ConfigDict(extra="forbid")

    schedule: ScheduleSpec | None = None
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    sample_shape: tuple[PositiveInt, PositiveInt, PositiveInt] | None = None
    description: str = ""

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_name(cls, value: Any) -> Any:
        """Also accept a schedule name (``"linear"``), as ``--schedule`` does."""
        return parse_schedule_option(value) if isinstance(value, str) and value in BETA_SCHEDULES else value


@dataclass
class LoadedModel:
    eps: EpsModel
    info: ModelInfo
    sample_shape: tuple[int, int, int]  # what the sampler runs on: the latents' shape for a latent pipeline
    decoder: LatentDecoder | None = None  # a latent pipeline's VAE: latents -> images in [-1, 1]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images ``sample`` writes (the decoded shape for a latent pipeline)."""
        return self.sample_shape if self.decoder is None else self.decoder.image_shape(self.sample_shape)


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


def _load_error(path: Path, exc: Exception, trust_pickle: bool) -> UsageError:
    """One line for a file that does not load: refused by weights_only, or corrupt/truncated."""
    if not trust_pickle and "weights_only" in str(exc):
        return UsageError(
            f"{path} holds pickled Python objects that weights_only loading refuses; "
            "pass --trust-pickle only if you trust its source"
        )
    return UsageError(f"cannot load weights from {path} ({first_line(exc)}); the file is corrupt or truncated: re-export it")


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    """``torch.load`` on CPU: ``weights_only`` unless ``trust_pickle``; errors as one line."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:  # corrupt, truncated or unsafe files: one line, no traceback
        raise _load_error(path, exc, trust_pickle) from None


def _load_state_dict(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise _load_error(path, exc, trust_pickle) from None
    obj = _torch_load(path, trust_pickle)
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
    if config.architecture not in (*ARCHITECTURES, "diffusers-unet2d"):
        raise UsageError(
            f"unknown architecture {config.architecture!r} in {config_path}; "
            f"known: {', '.join([*ARCHITECTURES, 'diffusers-unet2d'])}"
        )
    try:
        if config.architecture == "diffusers-unet2d":
            from diffusers import UNet2DModel

            net: nn.Module = DiffusersUNet(UNet2DModel.from_config(config.arch_config))
            target = net.unet
        else:
            net = target = ARCHITECTURES[config.architecture](**config.arch_config)
    except Exception as exc:  # the constructor's own complaint about a bad arch_config value
        raise UsageError(
            f"checkpoint config {config_path}: cannot build {config.architecture} from its arch_config "
            f"({type(exc).__name__}: {first_line(exc)}); fix arch_config or re-save the checkpoint"
        ) from None
    state = _load_state_dict(weights, trust_pickle)
    try:
        target.load_state_dict(state)
    except RuntimeError as exc:
        raise UsageError(f"weights in {weights} do not fit the architecture in {config_path} ({str(exc).splitlines()[0]})") from None
    return net, config


class DiffusersUNet(nn.Module):
    """Adapter: diffusers UNet2DModel(x, t, class_labels).sample -> tensor (accepts fractional t)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(x, t, class_labels=class_labels).sample

    @property
    def num_class_embeds(self) -> int | None:
        return self.unet.config.num_class_embeds


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
            "UNet2DModel checkpoints, and pipeline directories of UNet2DModel, UNet2DConditionModel (Stable "
            "Diffusion) or DiT: pass the pipeline directory"
        )
    if config.get("class_embed_type") is not None:
        raise UsageError(f"{where} uses class_embed_type {config['class_embed_type']!r}; dpm-align supports class "
                         "conditioning through num_class_embeds (integer labels) only")
    try:
        with quiet_loading():
            unet = UNet2DModel.from_pretrained(str(path), subfolder=subfolder, local_files_only=True)
    except Exception as exc:
        raise UsageError(f"cannot load the UNet from {where} ({first_line(exc)}); the weights are missing or corrupt") from None
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
    num_class_embeds: int | None = None  # class-conditional: the network is called net(x, t, labels)
    text_pipeline: Path | None = None  # text-conditioned: the pipeline whose tokenizer/text encoder embed prompts
    decoder: LatentDecoder | None = None


def _from_checkpoint(weights: Path, config_path: Path, trust_pickle: bool, fmt: str, source: str) -> _Found:
    net, config = _build_checkpoint(weights, config_path, trust_pickle)
    return _Found(net, config.schedule, config.prediction_type, fmt, config.sample_shape, source)


def _from_diffusers(path: Path, schedule: str | None) -> _Found:
    source = str(path.resolve())
    if not (path / "model_index.json").is_file():
        if schedule is None:
            raise UsageError(
                f"{path} is a bare UNet without a scheduler; pass --schedule "
                f"({' | '.join(BETA_SCHEDULES)} | path/to/scheduler_config.json)"
            )
        net = _load_diffusers_unet(path, None)
        return _Found(net, parse_schedule_option(schedule), "epsilon", "diffusers-unet", _shape(net.unet.config), source,
                      num_class_embeds=net.num_class_embeds)
    folder = denoiser_folder(path)
    config = _read_json(path / folder / "config.json", f"{folder} config")
    kind = config.get("_class_name")
    text = None
    if kind in TEXT_UNETS:
        check_text_pipeline(path, is_sdxl(config))
        net, classes, text = load_text_unet(path, config), None, path
    elif kind in TRANSFORMERS:
        net = load_dit(path, config)
        classes = net.num_class_embeds
    else:
        net = _load_diffusers_unet(path, folder)
        classes = net.num_class_embeds
    sched_file = path / "scheduler" / "scheduler_config.json"
    sched_config = _read_json(sched_file, "scheduler config") if sched_file.is_file() else None
    if schedule is not None:
        spec = parse_schedule_option(schedule)
    elif sched_config is not None:
        spec = ScheduleSpec.from_diffusers_config(sched_config)
    else:
        raise UsageError(f"{path} has no scheduler/scheduler_config.json; pass --schedule")
    prediction = (sched_config or {}).get("prediction_type", "epsilon")
    decoder = load_vae(path) if (path / "vae" / "config.json").is_file() else None
    return _Found(net, spec, prediction, "diffusers-pipeline", _shape(config), source, num_class_embeds=classes,
                  text_pipeline=text, decoder=decoder)


def _shape(config: dict) -> tuple[int, int, int]:
    """(C, H, W) the denoiser runs on: its in_channels and sample_size (latents for a latent pipeline)."""
    return (int(config["in_channels"]), *_hw(config["sample_size"]))


def _from_gmm(text: str) -> _Found:
    """``gmm`` or ``gmm:dim=64,components=8,seed=0[,classes=1]``: the exact eps of a Gaussian
    mixture; ``classes=1`` makes it class-conditional (label k = component k, label K = the whole
    mixture, the null class)."""
    from .gmm import GaussianMixture, GMMEpsNet

    options = {"dim": 64, "components": 8, "seed": 0}
    for item in filter(None, text.partition(":")[2].split(",")):
        name, _, value = item.partition("=")
        if name not in (*options, "classes") or not value.isdigit() or int(value) < (0 if name in ("seed", "classes") else 1):
            raise UsageError(f"bad gmm option {item!r} in --model {text}; use gmm:dim=64,components=8,seed=0[,classes=1]")
        options[name] = int(value)
    classes = options.pop("classes", 0) > 0
    spec = ScheduleSpec()
    mixture = GaussianMixture.random(options["components"], options["dim"], seed=options["seed"])
    side = int(round(options["dim"] ** 0.5))
    shape = (1, side, side) if side * side == options["dim"] else (1, 1, options["dim"])
    canonical = "gmm:" + ",".join(f"{k}={v}" for k, v in options.items()) + (",classes=1" if classes else "")
    return _Found(GMMEpsNet(mixture, NoiseSchedule(spec)), spec, "epsilon", "gmm", shape, canonical, torch.float64,
                  options["components"] + 1 if classes else None)


def _from_path(p: Path, schedule: str | None, sample_shape: tuple[int, int, int] | None, trust_pickle: bool) -> _Found:
    if not p.exists():
        raise UsageError(
            f"model path {p} does not exist; pass a diffusers pipeline directory, a unet/ directory, a "
            ".safetensors/.pt checkpoint, a TorchScript file or package.module:function "
            "(omit --model to use the embedded demo model)"
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
    elif _is_torchscript(p):
        return _from_torchscript(p, schedule, sample_shape)
    elif p.suffix in WEIGHT_SUFFIXES:
        if not _names_architecture(sidecar_config(p)):  # no project config beside it
            return _from_pickled_module(p, schedule, sample_shape, trust_pickle)
        found = _from_checkpoint(p, sidecar_config(p), trust_pickle, CHECKPOINT_FORMAT, source)
    else:
        raise UsageError(
            f"{p} is not a model this tool reads; use a diffusers directory, a .safetensors/.pt checkpoint "
            "or a TorchScript file (torch.jit.save)"
        )
    if schedule is not None:
        found.schedule = parse_schedule_option(schedule)
    return found


def _is_torchscript(p: Path) -> bool:
    """A ``torch.jit.save`` archive: a zip with ``<archive>/code/`` or ``<archive>/constants.pkl``
    members (a ``torch.save`` zip holds ``data.pkl`` and ``data/`` but neither)."""
    try:
        if not zipfile.is_zipfile(p):
            return False
        with zipfile.ZipFile(p) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(name.split("/")[1:2] in (["code"], ["constants.pkl"]) for name in names)


def _from_torchscript(p: Path, schedule: str | None, sample_shape: tuple[int, int, int] | None) -> _Found:
    """A TorchScript network ``net(x, t) -> prediction``; the rest from ``NAME.json`` or the options."""
    spec, prediction, shape = _sidecar_settings(p, f"TorchScript model {p}", schedule, sample_shape)
    try:
        net = torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:
        raise UsageError(
            f"cannot load TorchScript model {p} ({first_line(exc)}); the file is corrupt, truncated or from a "
            "newer torch: re-export it with torch.jit.save"
        ) from None
    return _Found(net, spec, prediction, "torchscript", shape, str(p.resolve()))


def _from_pickled_module(p: Path, schedule: str | None, sample_shape: tuple[int, int, int] | None,
                         trust_pickle: bool) -> _Found:
    """``torch.save(model)`` of a whole ``nn.Module``: unpickled only with ``trust_pickle`` (else the
    weights_only refusal). A state dict here has no architecture: that error names the fixes."""
    sidecar = sidecar_config(p)
    if sidecar.is_file():
        missing = f"checkpoint {p} holds weights only and its config {sidecar} names no architecture"
    else:
        missing = f"checkpoint {p} needs its config {sidecar} (architecture, schedule, sample_shape) beside it"
    no_architecture = UsageError(f"{missing}; or pass --arch package.module:Class (with --arch-config FILE.json) "
                                 "to build the network for these weights")
    if p.suffix == ".safetensors":
        raise no_architecture
    obj = _torch_load(p, trust_pickle)
    if not isinstance(obj, nn.Module):
        raise no_architecture
    spec, prediction, shape = _sidecar_settings(p, f"pickled model {p}", schedule, sample_shape)
    return _Found(obj, spec, prediction, "pickled-module", shape, str(p.resolve()))


def _from_factory(spec: str, schedule: str | None, sample_shape: tuple[int, int, int] | None) -> _Found:
    """``--model package.module:function``: ``function()`` returns the ``nn.Module``."""
    sched, prediction, shape = _settings(f"--model {spec}", None, None, schedule, sample_shape, "linear")
    factory = _import_callable(spec, "--model")
    try:
        net = factory()
    except Exception as exc:
        raise UsageError(
            f"--model {spec}: calling {spec.partition(':')[2]}() failed ({type(exc).__name__}: {first_line(exc)}); "
            "it must build the network with no arguments"
        ) from None
    if not isinstance(net, nn.Module):
        raise UsageError(
            f"--model {spec} returned a {type(net).__name__}, not a torch.nn.Module; "
            "make it return the network, called as net(x, t)"
        )
    return _Found(net, sched, prediction, "python-factory", shape, spec)


def _from_arch(path: str | Path | None, arch: str, arch_config: str | Path | None, schedule: str | None,
               sample_shape: tuple[int, int, int] | None, trust_pickle: bool) -> _Found:
    """A bare state dict at ``path`` loaded into ``arch(**arch_config)``."""
    p = Path(path).expanduser() if path is not None else None
    if p is None or not p.is_file() or p.suffix not in WEIGHT_SUFFIXES:
        problem = "no --model was given" if p is None else (
            f"{p} does not exist" if not p.exists() else f"{p} is not a .safetensors/.pt/.pth/.bin file")
        raise UsageError(f"--arch {arch} loads a state dict but {problem}; point --model at the weights file")
    sched, prediction, shape = _settings(f"--arch {arch}", None, None, schedule, sample_shape, "linear")
    kwargs: dict = {}
    if arch_config is not None:
        config_path = Path(arch_config).expanduser()
        if not config_path.is_file():
            raise UsageError(f"--arch-config {config_path} does not exist; pass a JSON file of keyword arguments for {arch}")
        kwargs = _read_json(config_path, "--arch-config")
    build = _import_callable(arch, "--arch")
    try:
        net = build(**kwargs)
    except Exception as exc:
        raise UsageError(
            f"--arch {arch}: cannot build it from --arch-config {arch_config or '(none)'} "
            f"({type(exc).__name__}: {first_line(exc)}); make the JSON keys its constructor arguments"
        ) from None
    if not isinstance(net, nn.Module):
        raise UsageError(f"--arch {arch} built a {type(net).__name__}, not a torch.nn.Module; point it at the network class")
    state = _load_state_dict(p, trust_pickle)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise UsageError(
            f"weights in {p} do not fit --arch {arch} ({_mismatch(exc)}); check --arch and --arch-config "
            "against the model that saved them"
        ) from None
    return _Found(net, sched, prediction, "state-dict+arch", shape, str(p.resolve()))


def _import_callable(spec: str, option: str) -> Any:
    """``package.module:name[.attr]`` -> the object, which must be callable; errors as one line."""
    if not _IMPORT_SPEC.match(spec):
        raise UsageError(f"{option} {spec!r} is not package.module:name; write it as e.g. mypkg.models:build")
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UsageError(
            f"{option} {spec}: cannot import {module_name} ({exc}); install it or add its folder to PYTHONPATH"
        ) from None
    except Exception as exc:
        raise UsageError(
            f"{option} {spec}: importing {module_name} failed ({type(exc).__name__}: {first_line(exc)}); fix that module"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{option} {spec}: {module_name} has no attribute {attr!r}; check the name after ':'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(
            f"{option} {spec}: {attr} is a {type(obj).__name__}, not callable; point it at a function or class "
            "that builds the network"
        )
    return obj


def _names_architecture(sidecar: Path) -> bool:
    """Whether ``sidecar`` is meant as a project ``CheckpointConfig`` (not a plain ``SidecarConfig``)."""
    return sidecar.is_file() and _is_project_config(_read_json(sidecar, "checkpoint config"))


def _is_project_config(data: dict) -> bool:
    return bool({"format", "architecture", "arch_config"} & set(data))


def _read_sidecar(p: Path) -> tuple[Path, SidecarConfig | None]:
    """``NAME.json`` beside ``p`` (or ``config.json`` for ``model.*``) and its content, ``None`` if
    absent. A project ``CheckpointConfig`` there serves too (its schedule, prediction, shape)."""
    candidates = [p.with_suffix(".json"), *([p.parent / "config.json"] if p.stem == "model" else [])]
    path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        return path, None
    data = _read_json(path, "sidecar config")
    model = CheckpointConfig if _is_project_config(data) else SidecarConfig
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UsageError(
            f"sidecar config {path} is invalid ({'.'.join(map(str, err['loc']))}: {_one_line(err['msg'])}); "
            "it takes schedule, prediction_type and sample_shape [C, H, W]"
        ) from None
    if isinstance(config, CheckpointConfig):
        config = SidecarConfig(schedule=config.schedule, prediction_type=config.prediction_type,
                               sample_shape=config.sample_shape)
    return path, config


def _sidecar_settings(p: Path, what: str, schedule: str | None,
                      sample_shape: tuple[int, int, int] | None) -> tuple[ScheduleSpec, str, tuple[int, int, int]]:
    sidecar_path, sidecar = _read_sidecar(p)
    return _settings(what, sidecar_path, sidecar, schedule, sample_shape, None)


def _settings(what: str, sidecar_path: Path | None, sidecar: SidecarConfig | None, schedule: str | None,
              sample_shape: tuple[int, int, int] | None,
              default_schedule: str | None) -> tuple[ScheduleSpec, str, tuple[int, int, int]]:
    """Schedule, prediction type and sample shape: options first, then the sidecar, then defaults."""
    spec = (parse_schedule_option(schedule) if schedule is not None
            else sidecar.schedule if sidecar is not None and sidecar.schedule is not None
            else parse_schedule_option(default_schedule) if default_schedule is not None else None)
    shape = sample_shape or (sidecar.sample_shape if sidecar is not None else None)
    missing = [(name, fix, key) for name, fix, key, value in (
        ("sample shape", "--sample-shape C,H,W", '"sample_shape"', shape),
        ("noise schedule", SCHEDULE_HINT, '"schedule"', spec)) if value is None]
    if missing:
        names, fixes, keys = (" and ".join(column) for column in zip(*missing))
        sidecar_fix = f", or write {keys} into a sidecar {sidecar_path}" if sidecar_path is not None else ""
        raise UsageError(f"{what} does not say its {names}; pass {fixes}{sidecar_fix}")
    return spec, sidecar.prediction_type if sidecar is not None else "epsilon", tuple(int(v) for v in shape)


def parse_sample_shape(value: str | tuple | list | None) -> tuple[int, int, int] | None:
    """``--sample-shape C,H,W`` (a "C,H,W" string or three ints) -> ``(C, H, W)``; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [v.strip() for v in value.split(",")]
        shape = tuple(int(v) for v in parts) if all(v.isdigit() for v in parts) else ()
    else:
        parts = list(value) if isinstance(value, (tuple, list)) else []
        ok = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in parts)
        shape = tuple(int(v) for v in parts) if ok else ()
    if len(shape) != 3 or min(shape) < 1:
        raise UsageError(f"--sample-shape {value!r} is not C,H,W; pass three positive integers, e.g. --sample-shape 3,32,32")
    return shape


def _is_import_spec(path: str | Path) -> bool:
    """``package.module:function`` that is not an existing path."""
    return bool(_IMPORT_SPEC.match(str(path))) and not Path(str(path)).expanduser().exists()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _mismatch(exc: RuntimeError) -> str:
    """``load_state_dict``'s multi-line report as one short line (missing / unexpected / size)."""
    lines = [line.strip().rstrip(".") for line in str(exc).strip().splitlines()[1:] if line.strip()]
    text = _one_line("; ".join(lines)) or first_line(exc)
    return text if len(text) <= 300 else text[:297] + "..."


def load_model(
    path: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    schedule: str | None = None,
    prediction_type: str | None = None,
    trust_pickle: bool = False,
    sample_shape: tuple[int, int, int] | str | None = None,
    arch: str | None = None,
    arch_config: str | Path | None = None,
    guidance_scale: float | None = None,
    null_class: int | None = None,
    prompts: Sequence[str] | None = None,
    negative_prompt: str | None = None,
    identity_only: bool = False,
    precision: str | None = None,
) -> LoadedModel:
    """Load ``path`` offline and wrap it as eps(x, t). ``None`` is the embedded demo model;
    ``gmm[:options]`` the exact Gaussian-mixture model; ``package.module:function`` a factory.

    ``schedule`` (a name or a scheduler_config.json path), ``prediction_type`` and ``sample_shape``
    ((C, H, W) or "C,H,W") override what the model's own files say (``sample_shape`` must match a
    gmm's). ``arch`` ("package.module:Class") with ``arch_config`` (a JSON file of constructor
    keyword arguments) builds the network for the bare state dict at ``path``. For a
    class-conditional network, ``guidance_scale`` (default 1: none) and ``null_class`` (default with
    guidance: the last class embedding) set the classifier-free guidance. A text-conditioned
    pipeline needs ``prompts`` (sample i gets prompt i mod P); its null condition is the empty
    prompt, or ``negative_prompt``. ``identity_only``: only ``info`` will be used (``inspect
    --check``), so a text-conditioned model without prompts is loaded with the empty prompt.
    ``precision`` (fp32 | tf32 | bf16 | fp16, ``model.PRECISIONS``) is the network's arithmetic at
    every call (None: torch's global settings)."""
    dev = resolve_device(device) if isinstance(device, str) else device
    check_precision(precision, dev)
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise UsageError(f"unknown --prediction-type {prediction_type!r}; choose one of: {', '.join(PREDICTION_TYPES)}")
    shape = parse_sample_shape(sample_shape)
    if arch_config is not None and arch is None:
        raise UsageError("--arch-config was given without --arch; pass --arch package.module:Class for the weights")
    if arch is not None:
        found = _from_arch(path, arch, arch_config, schedule, shape, trust_pickle)
    elif path is None:
        found = _from_checkpoint(DEMO_DIR / "model.safetensors", DEMO_DIR / "config.json", False, "dpm-align-demo",
                                 "embedded:demo-mnist")
    elif str(path) == "gmm" or str(path).startswith("gmm:"):
        found = _from_gmm(str(path))
    elif _is_import_spec(path):
        found = _from_factory(str(path), schedule, shape)
    else:
        found = _from_path(Path(path).expanduser(), schedule, shape, trust_pickle)
    if shape is not None:
        if found.format == "gmm" and shape != tuple(found.sample_shape):
            raise UsageError(f"{found.source} has sample shape {','.join(map(str, found.sample_shape))}; "
                             "drop --sample-shape or change its dim=")
        found.sample_shape = shape
    pred = prediction_type or found.prediction_type
    if pred not in PREDICTION_TYPES:
        raise UsageError(f"model prediction type {pred!r} is not supported; use --prediction-type epsilon|sample|v_prediction")
    if found.text_pipeline is not None:
        prompts = prompts or ([""] if identity_only else None)
        conditioning = text_conditioning(prompts, negative_prompt, guidance_scale, null_class, found.source)
        if is_sdxl(found.net.config):
            shape = found.sample_shape if found.decoder is None else found.decoder.image_shape(found.sample_shape)
            size = (int(shape[1]), int(shape[2]))  # the pipeline's default height and width
            embeddings = encode_prompts_xl(found.text_pipeline, prompts, negative_prompt, size, found.net, dev)
        else:
            embeddings = encode_prompts(found.text_pipeline, prompts, negative_prompt or "", dev)
        conditioning.zero_null = embeddings.zero_null
        found.net = TextUNet(found.net, embeddings)
    elif prompts or negative_prompt is not None:
        raise UsageError(f"{found.source} is not text-conditioned; drop --prompt, --prompts and --negative-prompt")
    else:
        conditioning = make_conditioning(found.num_class_embeds, guidance_scale, null_class, found.source)
    net = found.net.to(dev).eval()
    for param in net.parameters():  # not net.requires_grad_(): ScriptModules lack it
        param.requires_grad_(False)
    spec = found.schedule
    info = ModelInfo(
        sha256=weights_sha256(net),
        source=found.source,
        format=found.format,
        prediction_type=pred,
        num_train_timesteps=spec.num_train_timesteps,
        schedule=spec,
    )
    pixels = found.format != "gmm" and found.decoder is None  # images in [-1, 1]; a mixture's or latents' values are not
    eps = EpsModel(net, NoiseSchedule(spec), pred, found.dtype, conditioning, precision, (-1.0, 1.0) if pixels else None)
    return LoadedModel(eps, info,
                       tuple(int(v) for v in found.sample_shape), None if found.decoder is None else found.decoder.to(dev))


def make_conditioning(num_class_embeds: int | None, guidance_scale: float | None, null_class: int | None,
                      source: str) -> Conditioning | None:
    """The conditioning of a network with ``num_class_embeds`` class embeddings (None: unconditional).
    With guidance the null class defaults to the last embedding (the DiT convention)."""
    if num_class_embeds is None:
        if guidance_scale not in (None, 1.0) or null_class is not None:
            raise UsageError(f"{source} is not class-conditional; drop --guidance-scale and --null-class")
        return None
    scale = 1.0 if guidance_scale is None else float(guidance_scale)
    if scale < 0:
        raise UsageError(f"--guidance-scale {scale:g} is negative; use w >= 0 (1 = no guidance)")
    if null_class is None and scale != 1.0:
        null_class = num_class_embeds - 1
    if null_class is not None and not 0 <= null_class < num_class_embeds:
        raise UsageError(f"--null-class {null_class} is not a label of {source}; use 0..{num_class_embeds - 1}")
    if null_class is not None and num_class_embeds < 2:
        raise UsageError(f"{source} has a single class embedding; it cannot be both a class and the null class: "
                         "drop --guidance-scale and --null-class")
    return Conditioning(num_class_embeds=num_class_embeds, null_class=null_class, guidance_scale=scale)


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
