"""Writing samples: one PNG per sample plus a grid PNG, or one .npz; class labels beside them."""

from __future__ import annotations

import json
import math
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


def prepare_out_dir(out: Path) -> Path:
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".dpm-align-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to {out} ({exc.strerror or exc}); choose a writable --out directory") from None
    return out


def save_samples(x: torch.Tensor, out: Path, fmt: str = "png", start_index: int = 0,
                 labels: Sequence[int] | None = None) -> list[Path]:
    """Write samples (sample k -> ``{k:05d}.png``) or ``samples.npz`` (uint8 [N, H, W, C]) + ``grid.png``.
    Class labels go into the .npz (``labels``) or ``labels.json`` ({"00000.png": label, ...})."""
    if fmt not in ("png", "npz"):
        raise UsageError(f"unknown --format {fmt!r}; choose png or npz")
    out = prepare_out_dir(out)
    images = to_uint8(x)
    written = []
    if fmt == "png":
        for k, img in enumerate(images):
            path = out / f"{start_index + k:05d}.png"
            _pil(img).save(path)
            written.append(path)
        if labels is not None:
            path = out / "labels.json"
            path.write_text(json.dumps({p.name: int(c) for p, c in zip(written, labels)}, indent=0) + "\n")
            written.append(path)
    else:
        path = out / "samples.npz"
        tmp = out / ".samples.npz.tmp.npz"
        extra = {} if labels is None else {"labels": np.asarray(labels, dtype=np.int64)}
        np.savez_compressed(tmp, images=images, **extra)
        tmp.replace(path)
        written.append(path)
    grid = out / "grid.png"
    _pil(make_grid(images[:256])).save(grid)
    written.append(grid)
    return written
