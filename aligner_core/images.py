"""Files of samples: uint8 conversion, one PNG per sample (written atomically), the grid PNG, the
``.npz`` that FID tools read (``arr_0``: uint8 [N, H, W, C]), streamed from the PNGs, and a latent
pipeline's undecoded latents (one ``.npy`` per sample, streamed into ``latents.npz``)."""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .atomic import atomic_file
from .errors import UsageError

OUT_DIR_FIX = "choose a writable --out directory"  # what a failed write of a sample suggests


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


def write_png(image: np.ndarray, path: Path) -> None:
    """One uint8 [H, W, C] image as a PNG, atomically: a reader (or a re-run after kill -9) sees
    the whole file or none."""
    with atomic_file(path, ".tmp", OUT_DIR_FIX) as tmp:
        _pil(image).save(tmp, format="PNG")


def read_png(path: Path) -> np.ndarray:
    """A PNG written by ``write_png`` as uint8 [H, W, C]."""
    from PIL import Image

    with Image.open(path) as img:
        array = np.asarray(img)
    return array[..., None] if array.ndim == 2 else array


def write_npy(array: np.ndarray, path: Path) -> None:
    """One undecoded latent (float32 [C, H, W]) as a ``.npy`` file, atomically."""
    with atomic_file(path, ".tmp", OUT_DIR_FIX) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array, dtype=np.float32))


def read_npy(path: Path) -> np.ndarray:
    return np.load(path)


def write_grid(images: np.ndarray, path: Path) -> None:
    """uint8 [N, H, W, C] as one grid PNG (``make_grid``), atomically."""
    with atomic_file(path, ".tmp", OUT_DIR_FIX) as tmp:
        _pil(make_grid(images)).save(tmp, format="PNG")


def write_npz(path: Path, count: int, read: Callable[[int], np.ndarray], labels: Sequence[int] | None = None,
              keys: tuple[str, str] = ("arr_0", "arr_1"), dtype: type = np.uint8) -> Path:
    """An uncompressed ``.npz`` like ``np.savez``: ``arr_0`` = uint8 [count, H, W, C] made of
    ``read(0) .. read(count - 1)`` (streamed: one image in memory at a time), and ``arr_1`` =
    the class labels (int64) when given, as ADM's sampling script writes them. Atomic. ``keys`` and
    ``dtype``: other names and element type (a latent pipeline's ``latents``/``labels``, float32)."""
    first = read(0)
    kind = np.dtype(dtype)
    with atomic_file(path, ".tmp", OUT_DIR_FIX) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open(f"{keys[0]}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(kind),
                                                     "fortran_order": False, "shape": (count, *first.shape)})
            for k in range(count):
                image = first if k == 0 else read(k)
                if image.shape != first.shape or image.dtype != kind:
                    raise UsageError(f"sample {k} is {image.dtype} {image.shape}, not {kind} {first.shape}; "
                                     "write the samples into a new --out directory")
                f.write(np.ascontiguousarray(image).tobytes())
        if labels is not None:
            with zf.open(f"{keys[1]}.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(labels, dtype=np.int64))
    return Path(path)
