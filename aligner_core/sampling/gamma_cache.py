"""The per-model cache of Gamma_t (analytic samplers): estimated once per model, conditioning,
source, seed and set of times, then read back, so that sampling an analytic sampler without an
artifact (``--no-taus``) or aligning it again does not repeat the Monte Carlo estimate.

Files: ``<cache>/gammas/<sha256[:16]>-<conditioning>-<source>-seed<seed>-<times digest>.json``;
the source is ``generated`` or ``data-<digest of the data tensor>``; a text conditioning adds the
prompts' (and negative prompt's) sha256.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch
from pydantic import ValidationError

from .analytic import GammaTable, estimate_gammas
from ..artifacts.artifact import cache_dir, write_json_atomic
from ..errors import UsageError


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def gamma_cache_path(model_sha256: str, conditioning: str, times: Sequence[float], seed: int,
                     data: torch.Tensor | None) -> Path:
    source = "generated" if data is None else "data-" + _digest(data.detach().cpu().contiguous().numpy().tobytes())
    times_id = _digest(",".join(f"{float(t)!r}" for t in times).encode())
    return cache_dir() / "gammas" / f"{model_sha256[:16]}-{conditioning}-{source}-seed{int(seed)}-{times_id}.json"


def cached_gammas(eps, model_sha256: str, times: Sequence[float], sample_shape: Sequence[int], *,
                  data: torch.Tensor | None = None, seed: int = 0, device: torch.device | str = "cpu") -> GammaTable:
    """Gamma_t from the cache, else estimated (``analytic.estimate_gammas``) and cached. An
    unreadable cache file is re-estimated and replaced."""
    conditioning = getattr(eps, "conditioning", None)
    label = "uncond" if conditioning is None else conditioning.label
    if getattr(conditioning, "kind", None) == "text":  # Gamma_t depends on the prompts; the artifact key does not
        label += f"-prompts{conditioning.prompts_sha256[:12]}{(conditioning.negative_prompt_sha256 or '')[:8]}"
    path = gamma_cache_path(model_sha256, label, times, seed, data)
    if path.is_file():
        try:
            table = GammaTable.model_validate_json(path.read_text(encoding="utf-8"))
            if table.times == [float(t) for t in times]:
                return table
        except (OSError, ValidationError):
            pass
    table = estimate_gammas(eps, times, sample_shape, data=data, seed=seed, device=device)
    try:
        write_json_atomic(table, path)
    except (UsageError, OSError):  # a read-only cache only costs the re-estimate next time
        pass
    return table
