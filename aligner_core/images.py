"""Writing samples: one PNG per sample plus a grid PNG, or one .npz (images, or a latent pipeline's
latents); class labels (prompt indices) beside them."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import UsageError


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C] image."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = images[k]
    return grid


def _pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def check_out_dir(out: Path) -> None:
    """Fail early, creating nothing, when ``out`` cannot be made or written: it, or its nearest
    existing parent, must be a writable directory."""
    existing = Path(out)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        _unwritable(out, "not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        _unwritable(out, "permission denied")


def prepare_out_dir(out: Path) -> Path:
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".dpm-align-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        _unwritable(out, exc.strerror or str(exc))
    return out


def _unwritable(out: Path, why: str) -> None:
    raise UsageError(f"cannot write to {out} ({why}); choose a writable --out directory") from None


FORMATS = ("png", "npz", "latents")


def save_samples(x: torch.Tensor, out: Path, fmt: str = "png", start_index: int = 0,
                 labels: Sequence[int] | None = None) -> list[Path]:
    """Write samples (sample k -> ``{k:05d}.png``) or ``samples.npz`` (uint8 [N, H, W, C]) + ``grid.png``,
    or (``latents``) ``latents.npz`` (float32 [N, C, H, W], as the sampler left them, no grid).
    Class labels go into the .npz (``labels``) or ``labels.json`` ({"00000.png": label, ...}).

    The files are written into a hidden staging directory inside ``out`` and renamed into place
    only when all are complete: an error or Ctrl-C while writing leaves ``out`` as it was (a
    directory made for this call is removed again), never a partial set or a half-written file."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; choose {', '.join(FORMATS)}")
    made = not Path(out).exists()
    out = prepare_out_dir(out)
    staging = Path(tempfile.mkdtemp(prefix=".dpm-align-samples.", dir=out))
    try:
        names = (_write_latents(x, staging, labels) if fmt == "latents"
                 else _write_samples(to_uint8(x), staging, fmt, start_index, labels))
        for name in names:
            os.replace(staging / name, out / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise
    staging.rmdir()
    return [out / name for name in names]


def _write_samples(images: np.ndarray, directory: Path, fmt: str, start_index: int,
                   labels: Sequence[int] | None) -> list[str]:
    """The files of ``save_samples`` in ``directory``; returns their names, grid.png last."""
    names = []
    if fmt == "png":
        for k, img in enumerate(images):
            names.append(f"{start_index + k:05d}.png")
            _pil(img).save(directory / names[-1])
        if labels is not None:
            (directory / "labels.json").write_text(json.dumps(dict(zip(names, map(int, labels))), indent=0) + "\n")
            names.append("labels.json")
    else:
        extra = {} if labels is None else {"labels": np.asarray(labels, dtype=np.int64)}
        np.savez_compressed(directory / "samples.npz", images=images, **extra)
        names.append("samples.npz")
    _pil(make_grid(images[:256])).save(directory / "grid.png")
    return [*names, "grid.png"]


def _write_latents(x: torch.Tensor, directory: Path, labels: Sequence[int] | None) -> list[str]:
    extra = {} if labels is None else {"labels": np.asarray(labels, dtype=np.int64)}
    np.savez_compressed(directory / "latents.npz", latents=x.detach().float().cpu().numpy(), **extra)
    return ["latents.npz"]
