"""GPU throughput on a CIFAR-size U-Net (google/ddpm-cifar10-32's layout, random weights), one run, one card.

    python benchmarks/bench_gpu.py --out bench.json [--device cuda] [--batch-size 512] [--compile]
        [--channels-last] [--budget-s 600] [--samples 4096] [--nfe 10]
    python benchmarks/bench_gpu.py --tiny --device cpu --out bench-tiny.json   # a few seconds: checks the script

Measures, in this order (each row is written to --out as soon as it is measured, so a run stopped
by --budget-s or a crash keeps what it had):
1. plain forward img/s of the network at fp32 (TF32 off), tf32 and bf16 (autocast), batch --batch-size;
2. sampling img/s, DDIM at --nfe: a bare loop over the same network (float32 state, diffusers-style)
   vs dpm-align's sampler with taus (``api.generate``: float64 state, per-sample noise, the model
   wrapper), at fp32 and bf16; for bf16 also the end-point L2 to the fp32 result from the same noise
   (the quality change); and ``api.sample_to_dir`` (the ``sample`` command: PNG files, manifest);
3. ``align --nfe 10`` wall time (fit + verdict, the default settings; --tiny: a small fit and verdict).
Peak memory (CUDA: max allocated; CPU: the process's max RSS) with every row. The taus are
placeholders (the grid's own times shifted by 0.3) so that sampling runs the aligned code path
without a fit; the network's weights are random: timing only, no quality.

The weights are random because nothing may be downloaded; the layout is that of
google/ddpm-cifar10-32 (35.7M parameters, 4 levels of 128/256/256/256 channels, 2 res blocks per
level, self-attention at 16x16).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from dpm_align.aligner_core.api import SamplingPlan, align, generate, sample_to_dir
from dpm_align.aligner_core.atomic import atomic_file
from dpm_align.aligner_core.evaluation.validation import ValidationSettings
from dpm_align.aligner_core.fitting.fit import resolve_config
from dpm_align.aligner_core.models.loading import DiffusersUNet, load_model
from dpm_align.aligner_core.models.model import network_precision

CIFAR = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
             down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
             up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_eps=1e-6,
             downsample_padding=0, flip_sin_to_cos=False, freq_shift=1)
TINY = dict(CIFAR, sample_size=8, block_out_channels=(16, 32, 32, 32), norm_num_groups=8, layers_per_block=1)


def cifar_unet() -> torch.nn.Module:
    """The factory ``load_model`` imports (``bench_gpu:cifar_unet``): random weights, seed 0."""
    return _unet(CIFAR)


def tiny_unet() -> torch.nn.Module:
    return _unet(TINY)


def _unet(config: dict) -> torch.nn.Module:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return DiffusersUNet(UNet2DModel(**config))


class Report:
    """The rows measured so far, rewritten to ``path`` (atomically) after each one."""

    def __init__(self, path: Path, setup: dict):
        self.path, self.document = path, {"setup": setup, "rows": [], "complete": False}
        self.started = time.monotonic()

    def add(self, row: dict) -> None:
        row["peak_memory_mb"] = peak_memory_mb(row.pop("device"))
        self.document["rows"].append(row)
        print(json.dumps(row), flush=True)
        self.save()

    def save(self) -> None:
        with atomic_file(self.path, ".tmp", "--out") as tmp:
            tmp.write_text(json.dumps(self.document, indent=2) + "\n")

    def left(self, budget: float) -> float:
        return budget - (time.monotonic() - self.started)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        value = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        return round(value, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Seconds per call of ``fn`` (after one warm-up call), the median of ``repeats``."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bare_ddim(net, x: torch.Tensor, grid, schedule, precision: str, device: torch.device) -> torch.Tensor:
    """The loop a diffusers user writes: float32 state, the network at the grid times, no wrapper."""
    for t, s in zip(grid[:-1], grid[1:]):
        a_t, s_t = schedule.coeffs(t)
        a_s, s_s = schedule.coeffs(s)
        with torch.no_grad(), network_precision(precision, device):
            e = net(x, torch.full((x.shape[0],), float(t), device=device)).float()
        x = a_s * (x - s_t * e) / a_t + s_s * e
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file of the results (rewritten after every row)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a small U-Net on 8x8 and small settings: checks the script")
    ap.add_argument("--batch-size", type=int, default=None, help="[default: 512, --tiny 16]")
    ap.add_argument("--samples", type=int, default=None, help="images per sampling measurement [default: 4 batches, --tiny 2]")
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5, help="forward timings (median)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network")
    ap.add_argument("--channels-last", action="store_true", help="network weights and inputs in channels-last layout")
    ap.add_argument("--budget-s", type=float, default=600.0, help="start no measurement after this many seconds")
    ap.add_argument("--skip-align", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    batch = args.batch_size or (16 if args.tiny else 512)
    count = args.samples or (2 if args.tiny else 4) * batch
    sys.path.insert(0, str(Path(__file__).parent))  # load_model imports the factory by name
    shape = (3, 8, 8) if args.tiny else (3, 32, 32)
    model = load_model("bench_gpu:tiny_unet" if args.tiny else "bench_gpu:cifar_unet", device=device,
                       schedule="linear", sample_shape=",".join(map(str, shape)), precision="fp32")
    net = model.eps.net
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if args.compile:
        net = torch.compile(net)
    model.eps.net = net
    params = sum(p.numel() for p in net.parameters())
    report = Report(args.out, {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "network": "tiny U-Net 8x8" if args.tiny else "ddpm-cifar10-32 layout (random)",
        "parameters": params, "batch_size": batch, "samples": count, "nfe": args.nfe, "compile": args.compile,
        "channels_last": args.channels_last, "threads": torch.get_num_threads(), "command": " ".join(sys.argv)})
    report.save()
    print(f"{report.document['setup']}", flush=True)
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(batch, *shape, device=device).contiguous(memory_format=memory)
    t = torch.full((batch,), 500.0, device=device)

    for precision in ("fp32", "tf32", "bf16"):  # 1. the network alone
        if report.left(args.budget_s) <= 0:
            break

        def forward():
            with torch.no_grad(), network_precision(precision, device):
                net(x, t)

        seconds = timed(forward, device, args.repeats)
        report.add({"what": "forward", "precision": precision, "img_per_s": round(batch / seconds, 1), "device": device})

    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", args.nfe)
    taus = [min(999.0, v + 0.3) for v in plan.eval_times]  # placeholders: the aligned code path, no fit
    noise = torch.randn(count, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    ends = {}
    for precision in ("fp32", "bf16"):  # 2. sampling: bare loop vs dpm-align, same network
        if report.left(args.budget_s) <= 0:
            break
        model.eps.precision = precision

        def bare():
            for lo in range(0, count, batch):
                bare_ddim(net, noise[lo:lo + batch].contiguous(memory_format=memory), plan.grid, model.eps.schedule,
                          precision, device)

        def ours():
            ends[precision] = torch.cat([b.samples for b in generate(model, plan, taus, num_samples=count,
                                                                     batch_size=batch, device=device)])

        bare_s, ours_s = timed(bare, device, 1), timed(ours, device, 1)
        row = {"what": "sampling", "precision": precision, "nfe": args.nfe, "bare_ddim_img_per_s": round(count / bare_s, 1),
               "dpm_align_img_per_s": round(count / ours_s, 1), "ratio": round(bare_s / ours_s, 3), "device": device}
        if precision != "fp32" and "fp32" in ends:
            row["end_l2_to_fp32"] = float((ends[precision] - ends["fp32"]).flatten(1).norm(dim=1).mean())
            row["end_l2_fp32_scale"] = float(ends["fp32"].flatten(1).norm(dim=1).mean())
        report.add(row)
    model.eps.precision = "fp32"
    if report.left(args.budget_s) > 0:  # the sample command's path: files on disk
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            sample_to_dir(model, plan, taus, Path(tmp) / "s", num_samples=count, batch_size=batch, device=device)
            sync(device)
            seconds = time.perf_counter() - start
        report.add({"what": "sample_to_dir", "precision": "fp32", "img_per_s": round(count / seconds, 1),
                    "device": device})
    if not args.skip_align and report.left(args.budget_s) > 0:  # 3. align, fit + verdict
        model.eps.precision = None  # as the align command runs it: torch's own settings
        small = dict(iterations=2, num_samples=8, candidates=("taus",)) if args.tiny else {}
        validation = ValidationSettings(8, 8, 10) if args.tiny else ValidationSettings()
        start = time.perf_counter()
        artifact = align(model, SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", 10),
                         resolve_config("default", **small), device=device, validation=validation)
        sync(device)
        report.add({"what": "align", "nfe": 10, "seconds": round(time.perf_counter() - start, 2),
                    "fit_seconds": artifact.fit.seconds, "settings": "tiny" if args.tiny else "default",
                    "verdict": artifact.validation.verdict if artifact.validation else None, "device": device})
    report.document["complete"] = len(report.document["rows"]) == 3 + 2 + 1 + (not args.skip_align)
    report.save()


if __name__ == "__main__":
    main()
