"""Image data for the parallel strategy (Eq. 8 needs x_0 ~ q_0) and for training demo models.

``--data`` accepts an image folder (png/jpg/...), an ``.npz`` holding an image array, or a
built-in name: ``mnist`` / ``cifar10`` (read from ``$DPM_ALIGN_DATA_DIR``, default the project's
``../shared/data``) or ``digits`` (scikit-learn's 8x8 digits, if scikit-learn is installed).
Images come back as float32 [N, C, H, W] in [-1, 1], resized to the model's sample shape.
"""

from __future__ import annotations

import gzip
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .errors import UsageError

BUILTIN_DATASETS = ("mnist", "cifar10", "digits")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def shared_data_dir() -> Path:
    env = os.environ.get("DPM_ALIGN_DATA_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *Path.cwd().parents, *here.parents):
        candidate = base / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path.cwd() / "shared" / "data"


def read_mnist(root: Path | None = None) -> np.ndarray:
    """MNIST test images, uint8 [N, 28, 28, 1] (IDX format, gzip)."""
    path = (root or shared_data_dir()) / "mnist-test" / "t10k-images-idx3-ubyte.gz"
    if not path.is_file():
        raise UsageError(f"MNIST not found at {path}; set DPM_ALIGN_DATA_DIR to the folder holding mnist-test/")
    raw = gzip.open(path).read()
    count, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows, cols, 1)


def read_cifar10(root: Path | None = None) -> np.ndarray:
    """CIFAR-10 test images, uint8 [N, 32, 32, 3]."""
    path = (root or shared_data_dir()) / "cifar10-test" / "cifar10_test_jpeg.npz"
    if not path.is_file():
        raise UsageError(f"CIFAR-10 not found at {path}; set DPM_ALIGN_DATA_DIR to the folder holding cifar10-test/")
    with np.load(path, allow_pickle=False) as data:
        return data["images"]


def _read_digits() -> np.ndarray:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UsageError("--data digits needs scikit-learn; pip install scikit-learn or use another --data") from None
    images = load_digits().images  # float 0..16, [N, 8, 8]
    return (images / 16.0 * 255.0).round().astype(np.uint8)[..., None]


def _read_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in ("images", "x", "samples", "arr_0", *data.files):
                if key in data.files and data[key].ndim in (3, 4):
                    return data[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # empty, truncated, not a zip
        raise UsageError(f"cannot read {path} as .npz ({exc}); pass an .npz with an 'images' array") from None
    raise UsageError(f"{path} holds no image array (N,H,W[,C]); save one under the key 'images'")


def _read_folder(path: Path) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {path}")
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    if len({a.shape for a in arrays}) > 1:
        size = arrays[0].shape[:2]
        arrays = [np.asarray(Image.open(f).convert("RGB").resize(size[::-1])) for f in files]
    return np.stack(arrays)


def read_images(spec: str) -> np.ndarray:
    """Raw images [N, H, W, C] (uint8 or float) from a --data value."""
    if spec == "mnist":
        return read_mnist()
    if spec == "cifar10":
        return read_cifar10()
    if spec == "digits":
        return _read_digits()
    path = Path(spec).expanduser()
    if not path.exists():
        raise UsageError(
            f"--data {spec!r} is neither a built-in dataset ({', '.join(BUILTIN_DATASETS)}) nor an existing "
            "image folder or .npz file"
        )
    return _read_folder(path) if path.is_dir() else _read_npz(path)


def to_model_tensor(images: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """[N, H, W(, C)] uint8 (0..255) or float (0..1) -> float32 [N, C, H, W] in [-1, 1] of ``shape``."""
    if images.ndim == 3:
        images = images[..., None]
    x = torch.from_numpy(np.array(images, dtype=np.float32))
    if images.dtype == np.uint8 or float(x.max()) > 1.5:
        x = x / 255.0
    x = x.permute(0, 3, 1, 2)
    channels, height, width = shape
    if x.shape[1] != channels:
        if channels == 1:
            x = x.mean(dim=1, keepdim=True)
        elif x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        else:
            raise UsageError(f"data has {x.shape[1]} channels, the model expects {channels}")
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return (x * 2.0 - 1.0).clamp(-1.0, 1.0).contiguous()


def load_data(spec: str, shape: tuple[int, int, int]) -> torch.Tensor:
    return to_model_tensor(read_images(spec), shape)
