"""Tiny random-weight diffusers pipelines, built and saved by the tests (nothing is downloaded):
Stable Diffusion (a CLIP text model with a hand-made 56-token vocabulary, UNet2DConditionModel, VAE),
SDXL (two such text models) and DiT (DiTTransformer2DModel with learned sigma, VAE). Latents are 4 x 8 x 8, images 3 x 16 x 16."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

LATENT_SHAPE = (4, 8, 8)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def tiny_tokenizer():
    """A CLIPTokenizer over single letters (no merges): "a cat" -> a</w>, c, a, t</w>."""
    from transformers import CLIPTokenizer

    vocab = ["<|startoftext|>", "<|endoftext|>", *_LETTERS, *(c + "</w>" for c in _LETTERS), ".</w>", ",</w>"]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
        (directory / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=8)


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                         norm_num_groups=4, layers_per_block=1, sample_size=16)


def tiny_sd_pipeline(directory: Path, prediction_type: str = "epsilon", seed: int = 0):
    """A StableDiffusionPipeline saved into ``directory`` (no safety checker); returns it."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(directory))
    return pipe


def tiny_sdxl_pipeline(directory: Path, seed: int = 0):
    """A StableDiffusionXLPipeline saved into ``directory``: two tiny CLIP text encoders (hidden 16 each,
    the second with a projection of 8: the pooled embedding), a UNet with SDXL's text_time addition
    (4 features per size id: 6 x 4 + 8 = 32 inputs) and cross-attention over the 32 concatenated features."""
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    text_encoder = CLIPTextModel(CLIPTextConfig(**config))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config, projection_dim=8))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=4, addition_embed_type="text_time",
        addition_time_embed_dim=4, projection_class_embeddings_input_dim=32)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tiny_tokenizer(), unet=unet, scheduler=scheduler)
    pipe.save_pretrained(str(directory))
    return pipe


def tiny_dit_pipeline(directory: Path, seed: int = 0):
    """A DiTPipeline (1000 classes + the null label 1000, learned sigma: 8 output channels)."""
    from diffusers import DDPMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=1000)
    pipe = DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=DDPMScheduler())
    pipe.save_pretrained(str(directory))
    return pipe


def tiny_latent_pipeline(directory: Path, seed: int = 0) -> Path:
    """An unconditional latent pipeline (LDM-style: a UNet2DModel over the VAE's latents), saved as a
    diffusers pipeline directory: model_index.json, unet/, vae/, scheduler/."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    unet.save_pretrained(str(directory / "unet"))
    tiny_vae().save_pretrained(str(directory / "vae"))
    DDPMScheduler().save_pretrained(str(directory / "scheduler"))
    (directory / "model_index.json").write_text(json.dumps({
        "_class_name": "DiffusionPipeline", "unet": ["diffusers", "UNet2DModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDPMScheduler"]}))
    return directory
