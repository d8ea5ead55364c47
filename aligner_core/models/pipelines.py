"""Diffusers pipelines beyond pixel-space ``UNet2DModel``: latent pipelines (a ``vae/``), text
conditioning (Stable Diffusion: ``tokenizer/`` + ``text_encoder/`` CLIP + ``UNet2DConditionModel``;
SDXL: a second tokenizer and text encoder, pooled text embeddings and size ids) and DiT
(``Transformer2DModel`` / ``DiTTransformer2DModel``: class labels, learned sigma).

Every wrapper keeps the diffusers denoiser at ``.unet`` (a UNet or a transformer), so that the
model's sha256 is that of the denoiser's tensors (``unet.<name>``) in every form, as
``AlignedScheduler.from_artifact(unet=pipe.unet or pipe.transformer)`` computes it. The prompt
embeddings are a non-persistent buffer: they are not part of the sha256. Sampling, fitting and
validation of a latent pipeline run in latent space at the denoiser's shape; only ``sample``
decodes, with the VAE (``vae.decode(latents / scaling_factor)``).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
import json
import logging
import sys
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from ..errors import UsageError, first_line
from .model import TextConditioning

TEXT_UNETS = ("UNet2DConditionModel",)
TRANSFORMERS = ("Transformer2DModel", "DiTTransformer2DModel")


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence the advice and progress bars diffusers and transformers print while loading (e.g.
    "Cannot initialize model with low cpu memory usage because `accelerate` was not found"). Only
    libraries already imported are touched: importing transformers costs seconds."""
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    bars = [module for module in map(sys.modules.get, ("diffusers.utils.logging", "transformers.utils.logging"))
            if module is not None and module.is_progress_bar_enabled()]
    for module in bars:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        for module in bars:
            module.enable_progress_bar()


class TextUNet(nn.Module):
    """``UNet2DConditionModel(x, t, encoder_hidden_states=embeddings[labels]).sample``: labels are
    indices into the table of prompt embeddings (the last row is the null condition). SDXL's UNet
    also gets ``added_cond_kwargs``: the pooled embedding of the same row and the size ids."""

    def __init__(self, unet: nn.Module, prompts: "PromptEmbeddings"):
        super().__init__()
        self.unet = unet
        self.register_buffer("embeddings", prompts.hidden, persistent=False)
        self.register_buffer("pooled", prompts.pooled, persistent=False)
        self.register_buffer("time_ids", prompts.time_ids, persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        extra = {} if self.pooled is None else {"added_cond_kwargs": {
            "text_embeds": self.pooled[labels].to(x.dtype), "time_ids": self.time_ids.to(x.dtype).expand(x.shape[0], -1)}}
        return self.unet(x, t, encoder_hidden_states=self.embeddings[labels].to(x.dtype), **extra).sample


class DiTNet(nn.Module):
    """A DiT transformer ``(x, t, class_labels) -> eps``: with learned sigma (2C output channels)
    the first C are eps, the rest (the variance) is dropped."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.unet = transformer  # named like the UNets' so that the sha256 has one form

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        out = self.unet(x, timestep=t, class_labels=class_labels).sample
        return out[:, : x.shape[1]] if out.shape[1] == 2 * x.shape[1] else out

    @property
    def num_class_embeds(self) -> int:
        """DiT's label table: the classes plus one null embedding (``num_embeds_ada_norm``, 1000 for
        ImageNet, the label DiTPipeline uses as null)."""
        return int(self.unet.config.num_embeds_ada_norm) + 1


class LatentDecoder:
    """The VAE of a latent pipeline: latents -> images in [-1, 1], and images -> latents (``encode``)."""

    def __init__(self, vae: nn.Module):
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def to(self, device: torch.device) -> "LatentDecoder":
        self.vae.to(device)
        return self

    def image_shape(self, latent_shape: Sequence[int]) -> tuple[int, int, int]:
        """(C, H, W) of the decoded images: the VAE upsamples by 2 per block after the first."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.vae.config.out_channels), int(latent_shape[1]) * factor, int(latent_shape[2]) * factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Latents (float32, on the images' device) of images in [-1, 1]: the mean of the VAE's
        posterior times the scaling factor, the space the denoiser was trained in (its mean, not a
        draw from it, so that the same images give the same latents)."""
        param = next(self.vae.parameters())
        chunks = [self.vae.encode(images[i : i + batch_size].to(param.device, param.dtype)).latent_dist.mean
                  for i in range(0, images.shape[0], batch_size)]
        return (torch.cat(chunks) * self.scaling_factor).float().to(images.device)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], on the latents' device, in the VAE's dtype."""
        param = next(self.vae.parameters())
        images = self.vae.decode(latents.to(param.device, param.dtype) / self.scaling_factor).sample
        return images.clamp(-1, 1).to(latents.device)


def denoiser_folder(path: Path) -> str:
    """``unet`` or ``transformer``: the pipeline's denoiser sub-folder."""
    for folder in ("unet", "transformer"):
        if (path / folder / "config.json").is_file():
            return folder
    raise UsageError(f"{path} has model_index.json but no unet/config.json or transformer/config.json; "
                     "it is not a diffusion pipeline dpm-align reads")


def _load(cls, path: Path, subfolder: str, what: str) -> nn.Module:
    try:
        with quiet_loading():
            return cls.from_pretrained(str(path), subfolder=subfolder, local_files_only=True)
    except Exception as exc:
        raise UsageError(f"cannot load the {what} from {path / subfolder} ({first_line(exc)}); "
                         "the files are missing or corrupt") from None


SDXL_ADDITION = "text_time"  # SDXL's addition_embed_type: pooled text embedding + size ids


def is_sdxl(config: dict) -> bool:
    return config.get("addition_embed_type") == SDXL_ADDITION


def load_text_unet(path: Path, config: dict) -> nn.Module:
    """The UNet2DConditionModel of a Stable Diffusion or SDXL pipeline (without its prompt embeddings)."""
    from diffusers import UNet2DConditionModel

    extra = {"class_embed_type": config.get("class_embed_type"),
             "addition_embed_type": None if is_sdxl(config) else config.get("addition_embed_type")}
    unsupported = {key: value for key, value in extra.items() if value}
    if unsupported:
        key, value = next(iter(unsupported.items()))
        raise UsageError(f"{path / 'unet'} uses {key} {value!r} (extra conditioning); dpm-align supports Stable "
                         "Diffusion 1.x/2.x UNets conditioned on text and SDXL's (addition_embed_type 'text_time')")
    return _load(UNet2DConditionModel, path, "unet", "UNet")


def load_dit(path: Path, config: dict) -> DiTNet:
    from diffusers import DiTTransformer2DModel

    if config.get("norm_type") != "ada_norm_zero" or not config.get("num_embeds_ada_norm"):
        raise UsageError(f"{path / 'transformer'} is not a class-conditional DiT transformer (norm_type ada_norm_zero "
                         "with num_embeds_ada_norm); dpm-align supports DiT pipelines only")
    return DiTNet(_load(DiTTransformer2DModel, path, "transformer", "transformer"))


def load_vae(path: Path) -> LatentDecoder:
    from diffusers import AutoencoderKL

    return LatentDecoder(_load(AutoencoderKL, path, "vae", "VAE").eval().requires_grad_(False))


def check_text_pipeline(path: Path, sdxl: bool = False) -> None:
    """A text-conditioned pipeline needs its tokenizer and text encoder, SDXL's both pairs (and transformers)."""
    folders = ("tokenizer", "text_encoder", *(("tokenizer_2", "text_encoder_2") if sdxl else ()))
    missing = [folder for folder in folders if not (path / folder).is_dir()]
    if missing:
        kind = "an SDXL UNet" if sdxl else "a text-conditioned UNet"
        raise UsageError(f"{path} has {kind} but no {' or '.join(f'{m}/' for m in missing)}; copy the whole "
                         f"pipeline directory ({', '.join(folders)}, unet, scheduler, vae)")
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UsageError("text-conditioned pipelines need the transformers package; "
                         "pip install 'dpm-align[text]'") from None


def prompts_sha256(prompts: Sequence[str]) -> str:
    """sha256 of the prompts as a JSON list of strings, in order."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode("utf-8")).hexdigest()


def read_prompts(path: Path) -> list[str]:
    """``--prompts FILE``: one prompt per line (blank lines skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"--prompts {path} does not exist; pass a text file with one prompt per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --prompts {path} ({exc}); pass a UTF-8 text file, one prompt per line") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UsageError(f"--prompts {path} holds no prompt (it is empty or blank); write one prompt per line")
    return prompts


@dataclass
class PromptEmbeddings:
    """One row per prompt and a last one for the null condition: the text encoder's hidden states
    [P + 1, L, D]; for SDXL also the pooled embeddings [P + 1, D'], the size ids [6], and whether
    the null row is zeros (``force_zeros_for_empty_prompt``)."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None
    zero_null: bool = False


def _tokens(path: Path, folder: str, texts: Sequence[str]):
    from transformers import CLIPTokenizer

    tokenizer = _load(CLIPTokenizer, path, folder, "tokenizer")
    return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt")


@torch.no_grad()
def encode_prompts(path: Path, prompts: Sequence[str], null_prompt: str, device: torch.device) -> PromptEmbeddings:
    """CLIP embeddings of the prompts and of the null prompt (last row), as
    StableDiffusionPipeline.encode_prompt makes them (padded to the tokenizer's max length, the
    last hidden state; the attention mask only if the encoder's config asks for it)."""
    from transformers import CLIPTextModel

    tokens = _tokens(path, "tokenizer", [*prompts, null_prompt])
    encoder = _load(CLIPTextModel, path, "text_encoder", "text encoder").to(device).eval()
    mask = tokens.attention_mask.to(device) if getattr(encoder.config, "use_attention_mask", False) else None
    return PromptEmbeddings(encoder(tokens.input_ids.to(device), attention_mask=mask)[0].float())


@torch.no_grad()
def encode_prompts_xl(path: Path, prompts: Sequence[str], negative_prompt: str | None, image_size: tuple[int, int],
                      unet: nn.Module, device: torch.device) -> PromptEmbeddings:
    """SDXL's conditioning as StableDiffusionXLPipeline.encode_prompt and _get_add_time_ids make it:
    the penultimate hidden states of both text encoders side by side, the second encoder's
    projected (pooled) embedding, and the size ids (original size, crop (0, 0), target size: the
    pipeline's default image size). The null row is the negative prompt's, or the empty prompt's;
    it is zero when no negative prompt is given and ``force_zeros_for_empty_prompt`` (SDXL's
    default, read from model_index.json) is set."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    texts = [*prompts, negative_prompt or ""]
    hidden, pooled = [], None
    for suffix, cls in (("", CLIPTextModel), ("_2", CLIPTextModelWithProjection)):
        encoder = _load(cls, path, f"text_encoder{suffix}", "text encoder").to(device).eval()
        out = encoder(_tokens(path, f"tokenizer{suffix}", texts).input_ids.to(device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2].float())
        if suffix:
            pooled = out.text_embeds.float()
    embeddings = PromptEmbeddings(torch.cat(hidden, dim=-1), pooled,
                                  torch.tensor([*image_size, 0, 0, *image_size], dtype=torch.float32, device=device))
    index = json.loads((path / "model_index.json").read_text())
    if negative_prompt is None and index.get("force_zeros_for_empty_prompt", True):
        embeddings.hidden[-1] = 0
        embeddings.pooled[-1] = 0
        embeddings.zero_null = True
    expected = unet.add_embedding.linear_1.in_features
    given = unet.config.addition_time_embed_dim * embeddings.time_ids.numel() + pooled.shape[-1]
    if given != expected:
        raise UsageError(f"{path / 'unet'} expects {expected} added conditioning features, not the {given} of SDXL's "
                         "pooled text embedding and 6 size ids (an SDXL refiner?); dpm-align supports SDXL base pipelines")
    return embeddings


def text_conditioning(prompts: Sequence[str] | None, negative_prompt: str | None, guidance_scale: float | None,
                      null_class: int | None, source: str) -> TextConditioning:
    if not prompts:
        raise UsageError(f"{source} is text-conditioned; pass --prompt TEXT (repeatable) or --prompts FILE")
    if null_class is not None:
        raise UsageError("--null-class is for class-conditional models; the null condition of a text-conditioned "
                         "model is the empty prompt (or --negative-prompt)")
    scale = 1.0 if guidance_scale is None else float(guidance_scale)
    if scale < 0:
        raise UsageError(f"--guidance-scale {scale:g} is negative; use w >= 0 (1 = no guidance)")
    if negative_prompt is not None and scale == 1.0:
        raise UsageError("--negative-prompt replaces the empty prompt of classifier-free guidance; "
                         "also pass --guidance-scale w (w != 1), e.g. 7.5")
    return TextConditioning(num_prompts=len(prompts), prompts_sha256=prompts_sha256(prompts), guidance_scale=scale,
                            negative_prompt_sha256=None if negative_prompt is None else prompts_sha256([negative_prompt]))
