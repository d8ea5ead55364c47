"""Train a small diffusion U-Net (T=1000) on real or synthetic images.

The embedded demo model was made with (see README):
    python scripts/train_demo.py --data mnist --out aligner_core/models/demo/model.safetensors \
        --minutes 4 --device cuda --seed 0
Any --data value of `dpm-align align --data` works (mnist, cifar10, digits, a folder, an .npz), and
``textures`` (synthetic gratings and checkerboards, made here). The model zoo (scripts/train_zoo.sh)
varies --schedule (linear | squaredcos_cap_v2 | scaled_linear), --prediction-type (epsilon |
v_prediction), --size (resize) or --crop (random crops), and --arch diffusers (a diffusers
UNet2DModel saved as a DDPMPipeline directory at --out). On CPU it runs too, just slower.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import numpy as np

from dpm_align.aligner_core.data import read_images, to_model_tensor
from dpm_align.aligner_core.models.loading import CheckpointConfig, save_checkpoint
from dpm_align.aligner_core.models.nets import TinyUNet
from dpm_align.aligner_core.sampling.schedule import NoiseSchedule, ScheduleSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--out", type=Path, required=True, help="weights file (.safetensors); config is written beside it")
    ap.add_argument("--channels", default="32,64,64")
    ap.add_argument("--minutes", type=float, default=4.0, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=int, default=200_000, help="stop after this many steps (the learning rate "
                    "decays over whichever of the budgets, time or steps, runs out first)")
    ap.add_argument("--warmup", type=int, default=500, help="learning-rate warm-up steps")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--schedule", default="linear", help="linear | scaled_linear | squaredcos_cap_v2")
    ap.add_argument("--prediction-type", default="epsilon", help="epsilon | v_prediction")
    ap.add_argument("--size", type=int, default=None, help="resize the images to SIZE x SIZE")
    ap.add_argument("--crop", type=int, default=None, help="train on random CROP x CROP patches")
    ap.add_argument("--arch", default="tiny-unet", help="tiny-unet | diffusers (UNet2DModel, a DDPMPipeline directory)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    raw = textures(args.seed) if args.data == "textures" else read_images(args.data)
    size = (args.size, args.size) if args.size else (raw.shape[1], raw.shape[2])
    data = to_model_tensor(raw, (raw.shape[-1] if raw.ndim == 4 else 1, *size)).to(args.device)
    shape = (data.shape[1], args.crop or size[0], args.crop or size[1])
    spec = ScheduleSpec(beta_schedule=args.schedule, num_train_timesteps=1000)
    abar = NoiseSchedule(spec).alphas_cumprod.float().to(args.device)
    channels = tuple(int(c) for c in args.channels.split(","))
    net = (TinyUNet(in_channels=shape[0], channels=channels) if args.arch == "tiny-unet"
           else diffusers_unet(shape, channels)).to(args.device)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    flip = shape[0] == 3 and args.data != "textures"  # horizontal flips for natural images, not for digits
    start, step, deadline = time.time(), 0, time.time() + 60 * args.minutes
    print(f"data {tuple(data.shape)} params {sum(p.numel() for p in net.parameters())} device {args.device}", flush=True)
    while step < args.max_steps and time.time() < deadline:
        idx = torch.randint(0, data.shape[0], (args.batch_size,), device=args.device)
        x0 = data[idx]
        if args.crop:
            i, j = (int(torch.randint(0, n - args.crop + 1, ())) for n in data.shape[-2:])
            x0 = x0[..., i : i + args.crop, j : j + args.crop]
        if flip:
            x0 = torch.where(torch.rand(x0.shape[0], 1, 1, 1, device=x0.device) < 0.5, x0.flip(-1), x0)
        t = torch.randint(0, 1000, (x0.shape[0],), device=args.device)
        noise = torch.randn_like(x0)
        a = abar[t].sqrt()[:, None, None, None]
        s = (1 - abar[t]).sqrt()[:, None, None, None]
        frac = max((time.time() - start) / (60 * args.minutes), step / args.max_steps)
        for group in opt.param_groups:  # warm-up then cosine decay over the budget
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        target = noise if args.prediction_type == "epsilon" else a * noise - s * x0  # v = alpha eps - sigma x0
        out = net(a * x0 + s * noise, t.float())
        loss = F.mse_loss(out if args.arch == "tiny-unet" else out.sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        # EMA with diffusers' warm-up (EMAModel: decay_t = min(decay, (1 + t) / (10 + t))): a fixed
        # 0.999 over a short run keeps half of the random initialisation (0.999^700 = 0.50).
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - decay)
        step += 1
        if step % 1000 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
    description = (f"trained by scripts/train_demo.py on {args.data} ({'crops' if args.crop else 'images'} "
                   f"{shape}): {step} steps, batch {args.batch_size}, lr {args.lr}, EMA {args.ema}, seed {args.seed}, "
                   f"{time.time() - start:.0f}s on {args.device}")
    if args.arch == "diffusers":
        save_pipeline(ema.cpu(), spec, args.prediction_type, args.out, description)
    else:
        config = CheckpointConfig(architecture="tiny-unet", arch_config={"in_channels": shape[0], "channels": list(channels)},
                                  prediction_type=args.prediction_type, schedule=spec, sample_shape=shape,
                                  description=f"TinyUNet {description}")
        save_checkpoint(ema.cpu(), config, args.out)
    print(json.dumps({"steps": step, "seconds": round(time.time() - start, 1), "out": str(args.out)}))


def textures(seed: int, count: int = 4000, size: int = 16) -> np.ndarray:
    """Synthetic RGB textures in [0, 1]: oriented sinusoidal gratings and checkerboards of random
    period, phase and two random colours, [count, size, size, 3]."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    angle, period, phase = (torch.rand(count, 1, 1, generator=g) * k for k in (math.pi, 6.0, 2 * math.pi))
    wave = (torch.cos(angle) * x + torch.sin(angle) * y) * 2 * math.pi / (period + 2) + phase
    grating = 0.5 + 0.5 * torch.sin(wave)
    cells = (period + 2).floor()
    checker = ((x // cells + y // cells) % 2).float()
    pattern = torch.where(torch.rand(count, 1, 1, generator=g) < 0.5, grating, checker)[..., None]
    a, b = torch.rand(count, 1, 1, 3, generator=g), torch.rand(count, 1, 1, 3, generator=g)
    return (a * pattern + b * (1 - pattern)).numpy()


def diffusers_unet(shape: tuple[int, int, int], channels: tuple[int, ...]):
    from diffusers import UNet2DModel

    return _Unwrap(UNet2DModel(sample_size=shape[1], in_channels=shape[0], out_channels=shape[0], layers_per_block=1,
                               block_out_channels=channels[:2], down_block_types=("DownBlock2D", "DownBlock2D"),
                               up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8))


class _Unwrap(torch.nn.Module):
    """A UNet2DModel called as net(x, t) (its output object has ``.sample``)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t):
        return self.unet(x, t)


def save_pipeline(net: "_Unwrap", spec: ScheduleSpec, prediction_type: str, out: Path, description: str) -> None:
    from diffusers import DDPMPipeline, DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=spec.num_train_timesteps, beta_schedule=spec.beta_schedule,
                              beta_start=spec.beta_start, beta_end=spec.beta_end, prediction_type=prediction_type)
    DDPMPipeline(unet=net.unet, scheduler=scheduler).save_pretrained(str(out))
    (Path(out) / "README.md").write_text(f"UNet2DModel {description}\n", encoding="utf-8")


if __name__ == "__main__":
    main()
