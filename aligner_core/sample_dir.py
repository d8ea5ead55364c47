"""The output directory of ``sample``: one PNG per sample, written as it is made, and a manifest.

Sample k is ``{k:06d}.png``, or ``{k // 1000 * 1000:06d}/{k:06d}.png`` (folders of 1000, like EDM's
generate.py) when there are more than 1000 samples. Every file is written atomically, so a file
that exists is complete. ``dpm-align-sample.json`` (the manifest) records everything that decides
the samples' bytes; re-running the same command on the directory makes only the samples that are
missing, and a directory written by another command (other model, taus, seed, NFE, ...) is refused.
``finish`` writes what is made from all samples: ``grid.png``, ``labels.json`` or ``samples.npz``.
``--format latents`` (a latent pipeline's undecoded latents) writes ``{k:06d}.npy`` files instead of
PNGs, the same way (as made, resumable), and ``finish`` streams them into ``latents.npz``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from .atomic import atomic_file
from .errors import UsageError
from .images import OUT_DIR_FIX, prepare_out_dir, read_npy, read_png, write_grid, write_npy, write_npz, write_png

MANIFEST = "dpm-align-sample.json"
FOLDER_SIZE = 1000  # samples per folder once there are more than this many
GRID_SAMPLES = 256
FORMATS = ("png", "npz", "latents")


class SampleManifest(BaseModel):
    """What the samples in a directory are: every field but the version decides their bytes."""

    model_config = ConfigDict(extra="forbid")

    dpm_align_version: str
    model_sha256: str
    key: str
    sampler: str
    eta: float
    trajectory: str
    nfe: int
    grid: list[float]
    taus: list[float] | None  # None: the plain sampler
    seed: int
    num_samples: int
    class_labels: list[int] | None  # --class-label (None: drawn per sample, or unconditional)
    precision: str
    device: str  # cpu | cuda: other kernels give other last bits
    batch_size: int  # the network's batches: float32 kernels are not batch-invariant in the last bits
    sample_shape: tuple[int, int, int]  # of the files: decoded images, or latents (sample_files npy)
    sample_files: Literal["png", "npy"] = "png"  # npy: --format latents
    conditioning: dict | None = None  # the model's conditioning (a text one: the prompts' sha256)

    def differences(self, other: "SampleManifest") -> list[str]:
        """The fields (but the version) in which ``other`` differs, as ``name X (asked: Y)``."""
        mine, theirs = self.model_dump(), other.model_dump()
        return [f"{name} {_short(theirs[name])} (asked: {_short(mine[name])})"
                for name in mine if name != "dpm_align_version" and mine[name] != theirs[name]]


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def sample_name(k: int, count: int, suffix: str = "png") -> str:
    """Sample k's file, relative to the directory, for a run of ``count`` samples."""
    return f"{k // FOLDER_SIZE * FOLDER_SIZE:06d}/{k:06d}.{suffix}" if count > FOLDER_SIZE else f"{k:06d}.{suffix}"


class SampleDir:
    """The samples of one manifest in ``out``; ``open`` (one process) checks and prepares it."""

    def __init__(self, out: Path, manifest: SampleManifest):
        self.out = Path(out)
        self.manifest = manifest
        self.count = manifest.num_samples

    @classmethod
    def open(cls, out: Path, manifest: SampleManifest) -> "SampleDir":
        """Refuse a directory written by another command (or holding sample files without a
        manifest), remove temporaries that a killed run left, and write the manifest."""
        if manifest.sample_files == "png" and manifest.sample_shape[0] not in (1, 3, 4):
            raise UsageError(f"samples of {manifest.sample_shape[0]} channels cannot be PNG files; "
                             "sample writes 1-, 3- or 4-channel images only")
        directory = cls(prepare_out_dir(out), manifest)
        path = directory.out / MANIFEST
        if path.is_file():
            try:
                found = SampleManifest.model_validate_json(path.read_text(encoding="utf-8"))
            except (ValueError, OSError) as exc:
                raise UsageError(f"{path} is not a readable sample manifest ({type(exc).__name__}); "
                                 "choose another --out directory") from None
            changed = manifest.differences(found)
            if changed:
                raise UsageError(f"{directory.out} holds samples of another command ({'; '.join(changed)}); "
                                 "repeat that command to complete it, or choose another --out directory")
        elif any(directory.done(k) for k in range(directory.count)):
            raise UsageError(f"{directory.out} holds sample files but no {MANIFEST}: they were not written by this "
                             "version of dpm-align sample; choose another --out directory")
        for stale in (*directory.out.glob(".*.tmp"), *directory.out.glob("*/.*.tmp")):
            stale.unlink(missing_ok=True)  # a killed run's half-written temporaries, never a sample
        with atomic_file(path, ".tmp", OUT_DIR_FIX) as tmp:
            tmp.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return directory

    def path(self, k: int) -> Path:
        return self.out / sample_name(k, self.count, self.manifest.sample_files)

    def done(self, k: int) -> bool:
        return self.path(k).is_file()

    def write(self, k: int, image: np.ndarray) -> None:
        (write_npy if self.manifest.sample_files == "npy" else write_png)(image, self.path(k))

    def read(self, k: int) -> np.ndarray:
        return (read_npy if self.manifest.sample_files == "npy" else read_png)(self.path(k))

    def finish(self, fmt: str, labels: Sequence[int] | None) -> dict[str, Path]:
        """Write ``grid.png`` (the first 256 samples), and ``labels.json`` ({file: label}) for
        png or ``samples.npz`` (``arr_0``, ``arr_1`` = labels) for npz, from the sample files; for
        latents only ``latents.npz`` (float32 ``latents`` [N, C, H, W], ``labels``), no grid."""
        written = {}
        if fmt == "latents":
            written["npz"] = write_npz(self.out / "latents.npz", self.count, self.read, labels,
                                       keys=("latents", "labels"), dtype=np.float32)
            return written
        if fmt == "npz":
            written["npz"] = write_npz(self.out / "samples.npz", self.count, self.read, labels)
        elif labels is not None:
            names = {sample_name(k, self.count): int(label) for k, label in enumerate(labels)}
            with atomic_file(self.out / "labels.json", ".tmp", OUT_DIR_FIX) as tmp:
                tmp.write_text(json.dumps(names, indent=0) + "\n", encoding="utf-8")
            written["labels"] = self.out / "labels.json"
        write_grid(np.stack([self.read(k) for k in range(min(self.count, GRID_SAMPLES))]), self.out / "grid.png")
        written["grid"] = self.out / "grid.png"
        return written
