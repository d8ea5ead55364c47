"""The model wrapper: any network -> eps(x, t) in the internal time units.

Parameterization (epsilon / sample / v_prediction) is converted here and nowhere else, so every
sampler step only ever sees a noise prediction. Conversion uses the schedule at the time the
network is *conditioned on*: with a tau override, eps(x, tau) is the noise the network predicts
when it believes x sits at time tau (Eq. 4 replaces t_i by tau_i inside eps_theta).

Class conditioning and classifier-free guidance live here too: a class-conditional network is
called ``net(x, t, labels)``, and with guidance scale w != 1 the wrapper returns
eps_null + w (eps_label - eps_null) (Ho & Salimans, 2022), the null label being one of the
network's class embeddings. Samplers and the fit never see labels: they receive ``bind(labels)``,
an eps(x, t) for one batch.

Text conditioning (``TextConditioning``) uses the same path: the network wrapper holds a table of
prompt embeddings, the "labels" are indices into it (sample i gets prompt i mod P), and the null
condition of the guidance is the row after the prompts (the empty or the negative prompt).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from ..errors import UsageError
from ..sampling.schedule import NoiseSchedule

PredictionType = Literal["epsilon", "sample", "v_prediction"]
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str | None, device: torch.device) -> str | None:
    """``precision`` if it is known and runs on ``device``, else a UsageError naming the fix."""
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise UsageError(f"--precision fp16 needs a CUDA device (here: {device.type}); use bf16 or fp32 on the CPU")
    return precision


@contextmanager
def network_precision(precision: str | None, device: torch.device) -> Iterator[None]:
    """The network's arithmetic: fp32 (TF32 off: exact float32 matmuls and convolutions on CUDA),
    tf32 (TF32 tensor cores on CUDA; the same as fp32 on the CPU), bf16/fp16 (autocast: matmuls
    and convolutions in half precision, reductions in float32), None (torch's global settings as
    they are). Float64 networks (the exact mixture) are never cast."""
    if precision in _AUTOCAST:
        with torch.autocast(device.type, dtype=_AUTOCAST[precision]):
            yield
        return
    if precision is None or device.type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


class Conditioning(BaseModel):
    """How a class-conditional network is conditioned (stored in the artifact; part of its key)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["class"] = "class"
    num_class_embeds: int = Field(ge=1, description="class embeddings of the network, labels 0..num_class_embeds-1")
    null_class: int | None = Field(None, description="the unconditional label (classifier-free guidance); never drawn")
    guidance_scale: float = Field(1.0, ge=0, description="w: eps_null + w (eps_label - eps_null); 1 = no guidance")

    @model_validator(mode="after")
    def _consistent(self) -> "Conditioning":
        if self.null_class is not None and not 0 <= self.null_class < self.num_class_embeds:
            raise ValueError(f"null class {self.null_class} is not a label of the network (0..{self.num_class_embeds - 1})")
        if self.guidance_scale != 1.0 and self.null_class is None:
            raise ValueError("classifier-free guidance needs a null class")
        if not self.classes:
            raise ValueError("no class label is left besides the null class")
        return self

    @property
    def classes(self) -> list[int]:
        """The labels samples are drawn from (all embeddings but the null class)."""
        return [c for c in range(self.num_class_embeds) if c != self.null_class]

    @property
    def label(self) -> str:
        """The conditioning as it appears in artifact keys: ``class``, ``class-cfg3-null10``."""
        guidance = f"-cfg{self.guidance_scale:g}" if self.guidance_scale != 1.0 else ""
        null = f"-null{self.null_class}" if self.null_class is not None else ""
        return f"class{guidance}{null}"

    def check_labels(self, labels: Sequence[int]) -> list[int]:
        bad = [int(c) for c in labels if int(c) not in self.classes]
        if bad:
            null = f" (label {self.null_class} is the null class)" if self.null_class is not None else ""
            raise UsageError(f"--class-label {bad[0]} is not a class of this model; use 0..{self.num_class_embeds - 1}{null}")
        return [int(c) for c in labels]

    def random_labels(self, n: int, generator: torch.Generator) -> torch.Tensor:
        classes = torch.tensor(self.classes)
        return classes[torch.randint(0, len(classes), (n,), generator=generator)]

    def per_sample_labels(self, seed: int, indices: Sequence[int], given: Sequence[int] | None = None) -> torch.Tensor:
        """Sample k's label: ``given[k % len(given)]``, else drawn from (seed, k) alone, so that it
        does not depend on the batch size (like ``samplers.PerSampleNoise``)."""
        if given:
            return torch.tensor([int(given[k % len(given)]) for k in indices])
        gens = [torch.Generator().manual_seed(int(seed) * 1_000_003 + int(k) + 2**40) for k in indices]
        return torch.cat([self.random_labels(1, g) for g in gens]) if gens else torch.zeros(0, dtype=torch.long)


class TextConditioning(BaseModel):
    """How a text-conditioned network is conditioned: the guidance scale (part of the artifact's key)
    and which prompts (a sha256 and a count, recorded but not in the key: taus fitted on some prompts
    are used for any). Labels are prompt indices; sample i gets prompt i mod ``num_prompts``, and the
    null condition (index ``num_prompts``) is the empty prompt, the negative prompt, or zeros (SDXL)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["text"] = "text"
    num_prompts: int = Field(ge=1, description="prompts the taus were fitted on (or sampled with)")
    prompts_sha256: str = Field(description="sha256 of the prompts as a JSON list of strings, in order")
    negative_prompt_sha256: str | None = Field(None, description="sha256 of the negative prompt (the null "
                                               "condition); None = the empty prompt")
    zero_null: bool = Field(False, description="the null condition is the zero embedding instead of the empty prompt's "
                            "(SDXL pipelines with force_zeros_for_empty_prompt and no negative prompt)")
    guidance_scale: float = Field(1.0, ge=0, description="w: eps_null + w (eps_prompt - eps_null); 1 = no guidance")

    @property
    def null_class(self) -> int:
        """The index of the null condition in the wrapper's embedding table (after the prompts)."""
        return self.num_prompts

    @property
    def label(self) -> str:
        """The conditioning as it appears in artifact keys: ``text``, ``text-cfg7.5``."""
        return "text" + (f"-cfg{self.guidance_scale:g}" if self.guidance_scale != 1.0 else "")

    def random_labels(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise i of a fit gets prompt i mod P (the generator is not used: nothing is drawn)."""
        return torch.arange(n) % self.num_prompts

    def per_sample_labels(self, seed: int, indices: Sequence[int], given: Sequence[int] | None = None) -> torch.Tensor:
        """Sample k gets prompt k mod P, whatever the seed or batch size."""
        if given:
            raise UsageError("--class-label is for class-conditional models; a text-conditioned model takes --prompt")
        return torch.tensor([int(k) % self.num_prompts for k in indices], dtype=torch.long)


AnyConditioning = Union[Conditioning, TextConditioning]


def same_key(a: AnyConditioning | None, b: AnyConditioning | None) -> bool:
    """Whether two conditionings key the same taus: the same kind and label (the prompts of a text
    conditioning are not compared)."""
    return (None if a is None else (a.kind, a.label)) == (None if b is None else (b.kind, b.label))


class EpsModel:
    """Callable eps(x, t): x of any float dtype, t a float or a tensor broadcastable to [B]."""

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule,
        prediction_type: str = "epsilon",
        dtype: torch.dtype = torch.float32,
        conditioning: AnyConditioning | None = None,
        precision: str | None = None,
        data_range: tuple[float, float] | None = None,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise UsageError(
                f"unknown prediction type {prediction_type!r}; choose one of: {', '.join(PREDICTION_TYPES)}"
            )
        self.net = net
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.dtype = dtype
        self.conditioning = conditioning
        self.precision = precision  # network arithmetic (PRECISIONS, None: torch's settings); samplers stay float64
        # the range of what a user receives (pixel models: [-1, 1], clamped like every saved image and every
        # diffusers pipeline's output); None: end points are delivered as they are (mixtures, latents)
        self.data_range = data_range

    def delivered(self, x: torch.Tensor) -> torch.Tensor:
        """End points as the user receives them: clamped to ``data_range`` when there is one."""
        return x if self.data_range is None else x.clamp(*self.data_range)

    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """The one place where internal time becomes the network's input time (identity for
        discrete DDPM networks, whose input is the step index 0..T-1, fractional allowed)."""
        return t.to(self.dtype)

    def bind(self, labels: torch.Tensor | None) -> "EpsModel | _Labelled":
        """eps(x, t) for one batch with these class labels (self when unconditional)."""
        if self.conditioning is None:
            return self
        if labels is None:
            raise ValueError("a class-conditional model needs class labels for every batch")
        return _Labelled(self, labels)

    def _network(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The raw network output; with guidance w != 1, null + w (label - null) from one
        doubled batch."""
        x, t = x.to(self.dtype), self.net_time(t)
        cond = self.conditioning
        if cond is None:
            return self.net(x, t)
        labels = labels.to(x.device)
        if cond.guidance_scale == 1.0:
            return self.net(x, t, labels)
        null = torch.full_like(labels, cond.null_class)
        out_label, out_null = self.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
        return out_null + cond.guidance_scale * (out_label - out_null)

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        batch = x.shape[0]
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t.reshape(batch)
        if self.conditioning is not None and (labels is None or labels.shape[0] != batch):
            raise ValueError(f"a class-conditional model needs one class label per sample ({batch})")
        # Guidance mixes raw outputs; the conversion to eps below is linear in them, so this equals
        # mixing the two eps predictions.
        with network_precision(self.precision, x.device):
            out = self._network(x, t, labels).to(x.dtype)
        if self.prediction_type == "epsilon":
            return out
        shape = (batch,) + (1,) * (x.dim() - 1)
        alpha = self.schedule.alpha(t).reshape(shape).to(x.dtype)
        sigma = self.schedule.sigma(t).reshape(shape).to(x.dtype)
        if self.prediction_type == "sample":  # out = x0
            return (x - alpha * out) / sigma
        return alpha * out + sigma * x  # v = alpha eps - sigma x0  =>  eps = alpha v + sigma x


@dataclass(frozen=True)
class _Labelled:
    """``EpsModel.bind``: eps(x, t) with the labels of one batch."""

    model: EpsModel
    labels: torch.Tensor

    @property
    def schedule(self) -> NoiseSchedule:
        return self.model.schedule

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        return self.model(x, t, self.labels)


def conditioning_of(eps) -> AnyConditioning | None:
    """The conditioning of an eps callable (None for unconditional models and plain callables)."""
    return getattr(eps, "conditioning", None)


def bind_labels(eps, labels: torch.Tensor | None):
    """``eps.bind(labels)`` for a class-conditional EpsModel, else eps itself."""
    return eps.bind(labels) if conditioning_of(eps) is not None else eps
