"""A Stable Diffusion 1.5-shaped pipeline with random weights, to run dpm-align at the real size offline.

    python benchmarks/sd15_shaped.py build DIR      # writes the pipeline (about 4.3 GB, fp32)

No SD 1.5 weights can be fetched here, so this builds the same architecture from its published
configs: UNet2DConditionModel (320/640/1280/1280 channels, cross-attention 768, 64x64 latents,
860M parameters), CLIP ViT-L/14's text model (12 layers, 768 wide, 77 tokens; a hand-made
single-letter vocabulary instead of the 49408-token BPE one, whose files are not here), the SD VAE
(128/256/512/512, scaling factor 0.18215) and SD 1.5's PNDMScheduler config (scaled_linear
0.00085..0.012, steps_offset 1). model_index.json lists a safety_checker and a feature_extractor
as SD 1.5's does, with their folders holding only a config: dpm-align must not load them. The
images are noise; what this measures is that the real layout loads and the cost at the real size
(time, peak memory), e.g.

    /usr/bin/time -v dpm-align sample --model DIR --prompt "a cat" --guidance-scale 7.5 --nfe 4 -n 1 --no-taus --out OUT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.tiny_pipelines import tiny_tokenizer  # noqa: E402  (a CLIPTokenizer over single letters)


def build(directory: Path, seed: int = 0) -> None:
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = 77
    text_encoder = CLIPTextModel(CLIPTextConfig(  # openai/clip-vit-large-patch14's text model, as SD 1.5 ships it
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # the other defaults are SD 1.5's UNet
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                        latent_channels=4, layers_per_block=2, sample_size=512, scaling_factor=0.18215)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False,
                              skip_prk_steps=True, steps_offset=1)
    for name, part in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder), ("tokenizer", tokenizer),
                       ("scheduler", scheduler)):
        part.save_pretrained(str(directory / name))
    (directory / "safety_checker").mkdir(exist_ok=True)
    (directory / "safety_checker" / "config.json").write_text(json.dumps({"architectures": ["StableDiffusionSafetyChecker"]}))
    (directory / "feature_extractor").mkdir(exist_ok=True)
    (directory / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps({"crop_size": 224}))
    (directory / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in
              (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))}
    print(json.dumps({"directory": str(directory), "parameters": counts}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=["build"])
    ap.add_argument("directory", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    build(args.directory, args.seed)


if __name__ == "__main__":
    main()
