"""Stable Diffusion 1.5- and SDXL-shaped pipelines with random weights, to run dpm-align at the real size offline.

    python benchmarks/real_size_pipelines.py sd15 DIR      # about 4.3 GB (fp32)
    python benchmarks/real_size_pipelines.py sdxl DIR      # about 14 GB (fp32)
    python benchmarks/real_size_pipelines.py dit DIR       # about 3 GB (fp32)
    python benchmarks/real_size_pipelines.py check DIR     # AlignedScheduler in the unmodified pipeline vs sample

No SD weights can be fetched here, so this builds the same architectures from their published
configs, with random weights:
- SD 1.5: UNet2DConditionModel (320/640/1280/1280 channels, cross-attention 768, 64x64 latents,
  860M parameters), CLIP ViT-L/14's text model (12 layers, 768 wide, 77 tokens), the SD VAE
  (128/256/512/512, scaling factor 0.18215) and SD 1.5's PNDMScheduler config (scaled_linear
  0.00085..0.012, steps_offset 1).
- SDXL base 1.0: its UNet (320/640/1280, 1/2/10 transformer layers, cross-attention 2048, text_time
  addition with 256 features per size id and 2816 inputs, 128x128 latents, 2.6B parameters), CLIP
  ViT-L/14's and OpenCLIP ViT-bigG/14's text models (the second with its 1280 projection), the
  SDXL VAE (scaling factor 0.13025) and its EulerDiscreteScheduler config.
- DiT-XL/2 at 256: its transformer (28 layers, 16 heads x 72, patch 2, 32x32 latents, 1000 classes,
  learned sigma; saved under the legacy class name Transformer2DModel as facebook/DiT-XL-2-256 is;
  750M parameters in diffusers' layout, which repeats the timestep and label embedders in each of
  the 28 blocks, 672M without the repeats), the SD VAE and its DDIMScheduler config.
The tokenizers have a hand-made single-letter vocabulary instead of the 49408-token BPE one, whose
files are not here. model_index.json lists what the real one lists (SD 1.5: a safety checker and
a feature extractor, whose folders hold only a config): dpm-align must not load them. The images
are noise; what this measures is that the real layout loads, and the cost at the real size
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

CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=1,
              pad_token_id=1)  # openai/clip-vit-large-patch14's text model
CLIP_BIG_G = dict(CLIP_L, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                  projection_dim=1280, hidden_act="gelu")  # laion/CLIP-ViT-bigG-14's text model


def tokenizer():
    made = tiny_tokenizer()
    made.model_max_length = 77
    return made


def vae(scaling_factor: float, sample_size: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                         latent_channels=4, layers_per_block=2, sample_size=sample_size, scaling_factor=scaling_factor)


def sd15() -> tuple[dict, dict]:
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    parts = {"tokenizer": tokenizer(), "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L)),
             "unet": UNet2DConditionModel(sample_size=64, cross_attention_dim=768),  # the other defaults are SD 1.5's
             "vae": vae(0.18215, 512), "scheduler": PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)}
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
             "feature_extractor": ["transformers", "CLIPImageProcessor"],
             "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
             "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    return parts, index


def sdxl() -> tuple[dict, dict]:
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        addition_embed_type_num_heads=64, projection_class_embeddings_input_dim=2816)
    parts = {"unet": unet, "vae": vae(0.13025, 1024), "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L)),
             "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIG_G)), "tokenizer": tokenizer(),
             "tokenizer_2": tokenizer(),
             "scheduler": EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                 steps_offset=1, timestep_spacing="leading")}
    index = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.19.0.dev0",
             "force_zeros_for_empty_prompt": True, "scheduler": ["diffusers", "EulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    return parts, index


def dit() -> tuple[dict, dict]:
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    parts = {"transformer": DiTTransformer2DModel(out_channels=8),  # the other defaults are DiT-XL/2's
             "vae": vae(0.18215, 256), "scheduler": DDIMScheduler(clip_sample=False)}
    index = {"_class_name": "DiTPipeline", "_diffusers_version": "0.12.0.dev0",
             "scheduler": ["diffusers", "DDIMScheduler"], "transformer": ["diffusers", "Transformer2DModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    return parts, index


KINDS = {"sd15": sd15, "sdxl": sdxl, "dit": dit}


def check(directory: Path, nfe: int = 2, samples: int = 2, guidance: float = 7.5) -> None:
    """Taus for ``directory`` (a 2-iteration golden fit on 2 noises, moved 5 t-units per evaluation
    so that they matter: a check of the plumbing, not of quality) written as an artifact; then
    ``dpm-align sample``'s latents against the unmodified diffusers pipeline (its class from
    model_index.json) with ``AlignedScheduler.from_artifact`` from the same x_T, prompts and guidance;
    for DiT (which draws its own latents) the decoded images from the pipeline's generator's x_T."""
    import tempfile
    import time

    import diffusers

    from dpm_align.aligner_core.api import SamplingPlan, align, decode, generate
    from dpm_align.aligner_core.artifacts.artifact import write_artifact
    from dpm_align.aligner_core.fitting.fit import resolve_config
    from dpm_align.aligner_core.models.loading import load_model
    from dpm_align.aligner_core.sampling.diffusers_scheduler import AlignedScheduler
    from dpm_align.aligner_core.sampling.samplers import PerSampleNoise, StepContext, run_sampler

    index = json.loads((directory / "model_index.json").read_text())
    text = "text_encoder" in index
    prompts, labels = (["a cat", "a dog."], None) if text else (None, [207, 360][:samples])
    guidance = guidance if text else 4.0  # DiT's usual scale
    start = time.perf_counter()
    model = load_model(directory, prompts=prompts, guidance_scale=guidance)
    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", nfe)
    fitted = align(model, plan, resolve_config("golden", iterations=2, num_samples=2, batch_size=2))
    artifact = fitted.model_copy(update={"taus": [t - 5.0 * (i + 1) for i, t in enumerate(fitted.taus)]})
    fit_s = time.perf_counter() - start
    pipeline_class = getattr(diffusers, index["_class_name"])
    unloaded = {"safety_checker": None} if "safety_checker" in index else {}  # SD 1.5 lists one; it is not built here
    pipe = pipeline_class.from_pretrained(str(directory), local_files_only=True, **unloaded)
    pipe.set_progress_bar_config(disable=True)
    with tempfile.TemporaryDirectory() as tmp:
        write_artifact(artifact, Path(tmp) / "taus.json")
        pipe.scheduler = AlignedScheduler.from_artifact(Path(tmp) / "taus.json", unet=pipe.unet if text else pipe.transformer)
    steps = pipe.scheduler.num_inference_steps
    if text:
        x_T = PerSampleNoise(0, range(samples), model.sample_shape, "cpu")().float()
        theirs = pipe(prompt=[prompts[i % 2] for i in range(samples)], latents=x_T, guidance_scale=guidance,
                      output_type="latent", num_inference_steps=steps).images
        (ours,) = generate(model, plan, artifact.taus, num_samples=samples, batch_size=samples, seed=0)
        mine = ours.samples
    else:  # DiTPipeline draws its latents from its generator and returns images in [0, 1]: compare decoded images
        theirs = pipe(class_labels=labels, guidance_scale=guidance, generator=torch.Generator().manual_seed(5),
                      num_inference_steps=steps, output_type="pt").images
        x_T = torch.randn((samples, *model.sample_shape), generator=torch.Generator().manual_seed(5))
        latents = run_sampler("ddim", model.eps.bind(torch.tensor(labels)), x_T.double(), plan.grid, artifact.taus,
                              StepContext(model.eps.schedule, 0.0))
        mine = decode(model, latents) / 2 + 0.5
    scale = max(1.0, float(theirs.abs().max()))
    error = float((mine.double() - theirs.double()).abs().max())
    print(json.dumps({"directory": str(directory), "pipeline": pipeline_class.__name__, "key": artifact.key,
                      "taus": artifact.taus, "max_abs_diff": error, "scale": scale, "relative": error / scale,
                      "load_and_fit_s": round(fit_s, 1), "total_s": round(time.perf_counter() - start, 1)}))


def build(kind: str, directory: Path, seed: int = 0) -> None:
    torch.manual_seed(seed)
    parts, index = KINDS[kind]()
    for name, part in parts.items():
        part.save_pretrained(str(directory / name))
    listed = {name: entry[1] for name, entry in index.items() if isinstance(entry, list)}
    for name in listed.keys() - parts.keys():  # listed but not built (SD 1.5's safety checker): a config only
        (directory / name).mkdir(exist_ok=True)
        (directory / name / "config.json").write_text(json.dumps({"architectures": [listed[name]]}))
    (directory / "model_index.json").write_text(json.dumps(index, indent=2))
    if kind == "dit":  # the legacy class name, as facebook/DiT-XL-2-256 saves it
        config_path = directory / "transformer" / "config.json"
        config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), _class_name="Transformer2DModel")))
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items() if hasattr(part, "parameters")}
    print(json.dumps({"directory": str(directory), "parameters": counts}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=[*sorted(KINDS), "check"], help="build a pipeline of this kind, or check one")
    ap.add_argument("directory", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.action == "check":
        check(args.directory)
    else:
        build(args.action, args.directory, args.seed)


if __name__ == "__main__":
    main()
