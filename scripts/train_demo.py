"""Train a small diffusion U-Net (eps-prediction, linear DDPM schedule, T=1000) on real images.

The embedded demo model was made with (see README):
    python scripts/train_demo.py --data mnist --out aligner_core/demo/model.safetensors \
        --minutes 4 --device cuda --seed 0
Any --data value of `dpm-align align --data` works (mnist, cifar10, digits, a folder, an .npz).
On CPU it runs too, just slower: lower --minutes and the result is blurrier.
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

from dpm_align.aligner_core.data import load_data, read_images
from dpm_align.aligner_core.loading import CheckpointConfig, save_checkpoint
from dpm_align.aligner_core.nets import TinyUNet
from dpm_align.aligner_core.schedule import NoiseSchedule, ScheduleSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--out", type=Path, required=True, help="weights file (.safetensors); config is written beside it")
    ap.add_argument("--channels", default="32,64,64")
    ap.add_argument("--minutes", type=float, default=4.0, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    raw = read_images(args.data)
    shape = (raw.shape[-1] if raw.ndim == 4 else 1, raw.shape[1], raw.shape[2])
    data = load_data(args.data, shape).to(args.device)
    spec = ScheduleSpec(beta_schedule="linear", num_train_timesteps=1000)
    abar = NoiseSchedule(spec).alphas_cumprod.float().to(args.device)
    channels = tuple(int(c) for c in args.channels.split(","))
    net = TinyUNet(in_channels=shape[0], channels=channels).to(args.device)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    flip = shape[0] == 3  # horizontal flips for natural images, not for digits
    start, step, deadline = time.time(), 0, time.time() + 60 * args.minutes
    print(f"data {tuple(data.shape)} params {sum(p.numel() for p in net.parameters())} device {args.device}", flush=True)
    while step < args.max_steps and time.time() < deadline:
        idx = torch.randint(0, data.shape[0], (args.batch_size,), device=args.device)
        x0 = data[idx]
        if flip:
            x0 = torch.where(torch.rand(x0.shape[0], 1, 1, 1, device=x0.device) < 0.5, x0.flip(-1), x0)
        t = torch.randint(0, 1000, (x0.shape[0],), device=args.device)
        noise = torch.randn_like(x0)
        a = abar[t].sqrt()[:, None, None, None]
        s = (1 - abar[t]).sqrt()[:, None, None, None]
        frac = (time.time() - start) / (60 * args.minutes)
        for group in opt.param_groups:  # warm-up then cosine decay over the time budget
            group["lr"] = args.lr * min(1.0, (step + 1) / 500) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        loss = F.mse_loss(net(a * x0 + s * noise, t.float()), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - args.ema)
        step += 1
        if step % 1000 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
    config = CheckpointConfig(
        architecture="tiny-unet",
        arch_config={"in_channels": shape[0], "channels": list(channels)},
        prediction_type="epsilon",
        schedule=spec,
        sample_shape=shape,
        description=f"TinyUNet trained by scripts/train_demo.py on {args.data}: {step} steps, batch {args.batch_size}, "
        f"lr {args.lr}, EMA {args.ema}, seed {args.seed}, {time.time() - start:.0f}s on {args.device}",
    )
    save_checkpoint(ema.cpu(), config, args.out)
    print(json.dumps({"steps": step, "seconds": round(time.time() - start, 1), "out": str(args.out)}))


if __name__ == "__main__":
    main()
