"""Fréchet distances in the feature space of a network: FID with a local Inception-v3, or the
features of any TorchScript network the user supplies; reference statistics as ``.npz``.

- ``inception``: the TorchScript Inception-v3 used for FID by StyleGAN2-ADA, EDM and clean-fid
  (``inception-2015-12-05.pt``, a local file: nothing is downloaded). It is called as
  ``net(images, return_features=True)`` on 3-channel images with values 0..255 (any size; the
  network resizes to 299 itself) and returns the 2048 pool features.
- ``torchscript``: any ``torch.jit.save``-d network ``f(x) -> [N, F]`` (or [N, ...], flattened),
  called on samples in [-1, 1] as the model makes them.

Statistics files hold ``mu`` [F] and ``sigma`` [F, F] (the pytorch-fid / clean-fid layout, which
are read too), plus ``num_samples`` and ``feature_net`` (kind and sha256 of the network file),
which are checked when present so that statistics of another network are not compared.

The Fréchet distance is ``metrics.frechet_from_stats`` (tested equal to torchmetrics' FID on the
same features). With real images (not only statistics) the kernel distance (KID, Binkowski et al.
2018; unbiased, so usable with a few hundred samples where FID is not) comes from torchmetrics'
``KernelInceptionDistance`` on the same features; with Inception, the Inception Score from
torchmetrics' ``InceptionScore`` on the network's class probabilities.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..atomic import atomic_file
from ..data import load_data
from ..errors import UsageError
from .metrics import frechet_from_stats

FeatureKind = Literal["inception", "torchscript"]


@dataclass(frozen=True)
class FeatureStats:
    mu: torch.Tensor  # [F] float64
    sigma: torch.Tensor  # [F, F] float64
    num_samples: int
    feature_net: str | None  # "<kind>:<sha256[:16]>" of the network that made them; None if unknown

    @classmethod
    def of(cls, features: torch.Tensor, feature_net: str | None) -> "FeatureStats":
        f = features.flatten(1).to(torch.float64).cpu()
        if f.shape[0] < 2:
            raise UsageError("feature statistics need at least 2 samples; raise --num-samples")
        return cls(f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1]), f.shape[0], feature_net)

    def distance(self, other: "FeatureStats") -> float:
        if self.mu.shape != other.mu.shape:
            raise UsageError(f"feature statistics have {other.mu.shape[0]} features, the feature network gives "
                             f"{self.mu.shape[0]}; use statistics made with the same network")
        return frechet_from_stats(self.mu, self.sigma, other.mu, other.sigma)


class FeatureNet:
    """A feature network for Fréchet distances (see the module docstring for the two kinds)."""

    def __init__(self, path: Path, kind: FeatureKind, device: torch.device | str = "cpu"):
        self.path, self.kind, self.device = Path(path), kind, device
        option = "--inception-weights" if kind == "inception" else "--feature-net"
        if not self.path.is_file():
            raise UsageError(f"{option} {path} does not exist; pass a local TorchScript file (nothing is downloaded)")
        try:
            self.net = torch.jit.load(str(self.path), map_location="cpu").eval().to(device)
        except Exception as exc:  # corrupt, not TorchScript, or from a newer torch
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UsageError(f"{option} {path} is not a loadable TorchScript network ({first}); "
                             "pass a file written by torch.jit.save") from None
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
        self.id = f"{kind}:{digest}"
        self.metric = "fid" if kind == "inception" else "fd_features"

    @torch.no_grad()
    def _outputs(self, x: torch.Tensor, batch_size: int, **kwargs) -> torch.Tensor:
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(self.device, torch.float32)
            if self.kind == "inception":
                xb = ((xb.clamp(-1, 1) + 1) * 127.5).round()  # the 8-bit image a saved PNG would hold
                xb = xb.expand(-1, 3, -1, -1) if xb.shape[1] == 1 else xb
            out.append(self.net(xb, **kwargs).flatten(1).to(torch.float64).cpu())
        return torch.cat(out)

    def features(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """[N, F] float64 features of samples x [N, C, H, W] in [-1, 1]."""
        return self._outputs(x, batch_size, **({"return_features": True} if self.kind == "inception" else {}))

    def class_probabilities(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Inception only: [N, 1008] class probabilities, the softmax without the output bias that
        the Inception Score of the original TF code (and StyleGAN2-ADA's) uses."""
        return self._outputs(x, batch_size, no_output_bias=True)


def load_stats(path: Path, expected_net: str | None = None) -> FeatureStats:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data.files or "sigma" not in data.files:
                raise UsageError(f"statistics file {path} has no 'mu' and 'sigma' arrays; write it with `eval --save-stats`")
            mu, sigma = data["mu"], data["sigma"]
            count = int(data["num_samples"]) if "num_samples" in data.files else 0
            net = (str(data["feature_net"]) or None) if "feature_net" in data.files else None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read statistics file {path} ({exc}); pass an .npz with 'mu' and 'sigma'") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UsageError(f"statistics file {path}: mu must be [F] and sigma [F, F] (got {mu.shape} and {sigma.shape})")
    if expected_net is not None and net is not None and net != expected_net:
        raise UsageError(f"statistics file {path} was made with the feature network {net}, not {expected_net}; "
                         "recompute it with `eval --data ... --save-stats`")
    return FeatureStats(torch.from_numpy(mu).to(torch.float64), torch.from_numpy(sigma).to(torch.float64), count, net)


def save_stats(stats: FeatureStats, path: Path) -> Path:
    """Atomic write of mu, sigma, num_samples and feature_net to ``path`` (.npz)."""
    with atomic_file(path, ".npz", "choose a writable --save-stats path") as tmp:
        np.savez(tmp, mu=stats.mu.numpy(), sigma=stats.sigma.numpy(), num_samples=np.int64(stats.num_samples),
                 feature_net=np.str_(stats.feature_net or ""))
    return Path(path)


class _Precomputed(torch.nn.Module):
    """torchmetrics' feature extractor slot for features computed already (by ``FeatureNet``)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _library_metric(metric_class: type, updates: list[tuple[torch.Tensor, dict]], seed: int, **options):
    """``metric_class`` (a torchmetrics image metric) on precomputed features: the updates, then
    ``compute()`` with its random subsets or splits drawn from ``seed``."""
    with warnings.catch_warnings():  # "will save all extracted features in buffer": that is the point here
        warnings.simplefilter("ignore", UserWarning)
        metric = metric_class(feature=_Precomputed(updates[0][0].shape[1]), **options)
    for values, kwargs in updates:
        metric.update(values.to(torch.float64), **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return metric.compute()


def _library() -> str:
    import torchmetrics

    return f"torchmetrics {torchmetrics.__version__}"


@dataclass(frozen=True)
class KernelDistance:
    mean: float
    std: float  # over the random subsets
    subsets: int
    subset_size: int
    library: str  # "torchmetrics <version>"


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, *, seed: int = 0, subsets: int = 100,
                    subset_size: int = 1000) -> KernelDistance:
    """KID between two feature sets [N, F] by torchmetrics (cubic polynomial kernel MMD, averaged
    over ``subsets`` random subsets of min(subset_size, N_real, N_fake)); the subsets are drawn
    from ``seed``, so the value is deterministic."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise UsageError("the kernel distance needs at least 2 real and 2 generated samples; raise --num-samples")
    mean, std = _library_metric(KernelInceptionDistance, [(real, {"real": True}), (fake, {"real": False})], seed,
                                subsets=subsets, subset_size=size)
    return KernelDistance(float(mean), float(std), subsets, size, _library())


@dataclass(frozen=True)
class InceptionScore:
    mean: float
    std: float  # over the splits
    splits: int
    library: str


def inception_score(probabilities: torch.Tensor, *, seed: int = 0, max_splits: int = 10) -> InceptionScore | None:
    """IS = exp E_x KL(p(y|x) || p(y)) by torchmetrics, mean and std over min(max_splits, N // 2)
    random splits of the samples (drawn from ``seed``); None under 4 samples. torchmetrics takes
    logits: log p gives p back."""
    from torchmetrics.image.inception import InceptionScore as Metric

    splits = min(max_splits, probabilities.shape[0] // 2)
    if splits < 2:
        return None
    mean, std = _library_metric(Metric, [(probabilities.clamp(min=1e-30).log(), {})], seed, splits=splits)
    return InceptionScore(float(mean), float(std), splits, _library())


@dataclass(frozen=True)
class SampleScores:
    """What a ``FeatureReference`` measures on a set of samples."""

    frechet: float
    kid: KernelDistance | None  # with real features (--data)
    inception_score: InceptionScore | None  # Inception networks only


@dataclass(frozen=True)
class FeatureReference:
    """A feature network with the statistics of the real data that samples are compared with, and
    the real features themselves when they were computed here (from --data), for the KID."""

    net: FeatureNet
    stats: FeatureStats
    name: str  # the --data value or the statistics file
    features: torch.Tensor | None = None

    def scores(self, samples: torch.Tensor, *, seed: int = 0) -> SampleScores:
        """The Fréchet distance of ``samples`` to the real data; with real features the KID; with
        an Inception network the Inception Score."""
        fake = self.net.features(samples)
        return SampleScores(
            frechet=FeatureStats.of(fake, self.net.id).distance(self.stats),
            kid=None if self.features is None else kernel_distance(self.features, fake, seed=seed),
            inception_score=inception_score(self.net.class_probabilities(samples), seed=seed)
            if self.net.kind == "inception" else None)


def feature_reference(
    net: FeatureNet,
    sample_shape: tuple[int, int, int],
    *,
    data: str | None = None,
    stats: Path | None = None,
    save: Path | None = None,
) -> FeatureReference:
    """The reference statistics: read from ``stats``, or computed on ``data`` (images at the
    model's sample shape) and, with ``save``, written there for later runs."""
    if (data is None) == (stats is None):
        raise UsageError("a feature distance compares with real data: pass --data (images) or --reference-stats FILE.npz, "
                         "one of them")
    if stats is not None:
        if save is not None:
            raise UsageError("--save-stats writes the statistics of --data; with --reference-stats they exist already")
        return FeatureReference(net, load_stats(stats, net.id), str(stats))
    features = net.features(load_data(data, sample_shape))
    computed = FeatureStats.of(features, net.id)
    if save is not None:
        save_stats(computed, save)
    return FeatureReference(net, computed, data, features)
