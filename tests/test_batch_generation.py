"""`sample` for scripts: files written as they are made, resume, kill -9, torchrun, --precision."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dpm_align.aligner_core.models.loading import load_model
from dpm_align.aligner_core.sample_dir import MANIFEST

from conftest import GMM_TINY, parse_json

GMM_CLASSES = "gmm:dim=16,components=3,classes=1"  # class-conditional: labels drawn per sample
CPU = ("--device", "cpu", "--quiet")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: a second thread only adds overhead (35 s instead of 2 s for 150 samples when
    the 2 cores are busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sample_files(out: Path) -> dict[str, bytes]:
    """Every sample PNG (not grid.png) of a directory, by relative path, with its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png")) if p.name != "grid.png"}


def sample(cli, out: Path, *args: str):
    result = cli("sample", "--no-taus", "--out", out, *CPU, "--json", *args)
    assert result.exit_code == 0, result.output
    return parse_json(result)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node nproc -m dpm_align.cli args`` on CPU (gloo)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), "-m", "dpm_align.cli", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


# ------------------------------------------------------------------ sample i depends on (seed, i) only
def test_files_do_not_depend_on_the_batch_size(cli, tmp_path):
    runs = []
    for batch in (1, 3, 8):
        out = tmp_path / f"b{batch}"
        summary = sample(cli, out, "--model", GMM_CLASSES, "-n", "11", "--nfe", "4", "--sampler", "ddpm",
                         "--batch-size", str(batch), "--seed", "5")
        assert summary["generated"] == 11 and summary["already_present"] == 0 and summary["world_size"] == 1
        runs.append((sample_files(out), (out / "labels.json").read_text(), summary["labels"]))
    assert len(runs[0][0]) == 11 and all(run == runs[0] for run in runs[1:])  # bytes, labels.json, --json labels


def test_npz_and_folders_of_1000(cli, tmp_path):
    out = tmp_path / "s"
    summary = sample(cli, out, "--model", GMM_TINY, "-n", "1001", "--nfe", "2", "--batch-size", "500", "--format", "npz")
    assert (out / "000000" / "000999.png").is_file() and (out / "001000" / "001000.png").is_file()
    assert not (out / "000000.png").exists() and summary["npz"] == str(out / "samples.npz")
    with np.load(out / "samples.npz") as npz:
        assert sorted(npz.files) == ["arr_0"]  # no labels for an unconditional model
        images = npz["arr_0"]
    assert images.shape == (1001, 4, 4, 1) and images.dtype == np.uint8
    from PIL import Image

    assert np.array_equal(images[1000, ..., 0], np.asarray(Image.open(out / "001000" / "001000.png")))


def test_npz_of_a_class_conditional_model_has_the_labels(cli, tmp_path):
    summary = sample(cli, tmp_path / "s", "--model", GMM_CLASSES, "-n", "5", "--nfe", "2", "--format", "npz")
    with np.load(tmp_path / "s" / "samples.npz") as npz:
        assert npz["arr_0"].shape == (5, 4, 4, 1) and npz["arr_1"].tolist() == summary["labels"]


# ------------------------------------------------------------------ resume, refusal, kill -9
def test_rerun_completes_a_partial_directory(cli, tmp_path):
    args = ("--model", GMM_TINY, "-n", "10", "--nfe", "3", "--batch-size", "4")
    sample(cli, tmp_path / "full", *args)
    out = tmp_path / "part"
    sample(cli, out, *args)
    for name in ("000001.png", "000006.png", "000007.png", "grid.png"):
        (out / name).unlink()
    (out / ".000002.png.abc.tmp").write_bytes(b"half")  # what a kill during a write leaves
    summary = sample(cli, out, *args)
    assert summary["generated"] == 3 and summary["already_present"] == 7
    assert sample_files(out) == sample_files(tmp_path / "full") and not list(out.glob(".*.tmp"))
    assert (out / "grid.png").read_bytes() == (tmp_path / "full" / "grid.png").read_bytes()


@pytest.mark.parametrize("changed, needle", [(("--seed", "1"), "seed 0 (asked: 1)"),
                                             (("--nfe", "4"), "nfe 3 (asked: 4)"),
                                             (("--model", "gmm:dim=16,components=3,seed=1"), "model_sha256")])
def test_a_directory_of_another_command_is_refused(cli, tmp_path, changed, needle):
    args = {"--model": GMM_TINY, "-n": "3", "--nfe": "3", "--seed": "0"}
    sample(cli, tmp_path / "s", *[v for kv in args.items() for v in kv])
    args.update(dict(zip(changed[::2], changed[1::2])))
    before = sample_files(tmp_path / "s")
    result = cli("sample", "--no-taus", "--out", tmp_path / "s", *CPU, *[v for kv in args.items() for v in kv])
    assert result.exit_code == 2 and result.stdout == ""
    line = result.stderr.strip()
    assert "\n" not in line and "holds samples of another command" in line and needle in line
    assert "choose another --out directory" in line and sample_files(tmp_path / "s") == before


def test_sample_files_without_a_manifest_are_refused(cli, tmp_path):
    sample(cli, tmp_path / "s", "--model", GMM_TINY, "-n", "2", "--nfe", "2")
    (tmp_path / "s" / MANIFEST).unlink()
    result = cli("sample", "--no-taus", "--out", tmp_path / "s", "--model", GMM_TINY, "-n", "2", "--nfe", "2", *CPU)
    assert result.exit_code == 2 and f"holds sample files but no {MANIFEST}" in result.stderr


def test_kill_9_leaves_complete_files_and_a_rerun_completes_them(cli, tiny_ckpt, tmp_path):
    args = ("--model", tiny_ckpt, "-n", "150", "--nfe", "10", "--batch-size", "3", "--seed", "2")
    sample(cli, tmp_path / "full", *args)
    full = sample_files(tmp_path / "full")
    for point in (1, 40):  # files present when the process is killed
        out = tmp_path / f"killed-{point}"
        process = subprocess.Popen([sys.executable, "-m", "dpm_align.cli", "sample", "--no-taus", "--out", str(out),
                                    *map(str, args), *CPU], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(list(out.glob("0*.png"))) < point and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        partial = sample_files(out)
        assert point <= len(partial) < len(full)  # killed mid-run
        assert all(full[name] == data for name, data in partial.items())  # every file there is complete
        summary = sample(cli, out, *args)
        assert summary["already_present"] == len(partial)  # kept; a batch with a missing sample is remade whole
        assert sample_files(out) == full


# ------------------------------------------------------------------ torchrun (2 gloo processes on CPU)
def test_torchrun_two_processes_write_the_files_of_one(cli, tiny_ckpt, tmp_path):
    args = ("sample", "--model", tiny_ckpt, "--no-taus", "-n", "13", "--nfe", "3", "--batch-size", "3", "--seed", "4",
            "--device", "cpu", "--quiet", "--json")
    one = cli(*args, "--out", tmp_path / "one")
    assert one.exit_code == 0, one.output
    two = torchrun(*args, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads(two.stdout)  # exactly one JSON document: only rank 0 prints
    assert summary["world_size"] == 2 and summary["generated"] == 13
    assert {k: v for k, v in summary.items() if k not in ("out", "grid", "world_size", "seconds", "peak_memory")} == \
        {k: v for k, v in parse_json(one).items() if k not in ("out", "grid", "world_size", "seconds", "peak_memory")}
    assert sample_files(tmp_path / "two") == sample_files(tmp_path / "one")
    assert (tmp_path / "two" / "grid.png").read_bytes() == (tmp_path / "one" / "grid.png").read_bytes()


def test_torchrun_eval_equals_one_process(cli, gmm_artifact, tmp_path):
    taus = tmp_path / "taus.json"
    taus.write_text(json.dumps(gmm_artifact))
    args = ("eval", "--model", GMM_TINY, "--taus", taus, "-n", "10", "--batch-size", "3", "--reference-nfe", "20",
            "--device", "cpu", "--quiet", "--json")
    one = cli(*args)
    assert one.exit_code == 0, one.output
    two = torchrun(*args)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads(two.stdout) == parse_json(one)  # bit for bit: rank 0 sums the batches in order


# ------------------------------------------------------------------ --precision
def test_precision_fp32_is_the_default_and_bf16_is_close(cli, tiny_ckpt, tmp_path):
    model = load_model(tiny_ckpt, precision="fp32")
    plain = load_model(tiny_ckpt)
    x, t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor(500.0)
    assert torch.equal(model.eps(x, t), plain.eps(x, t))  # CPU: fp32 is torch's default arithmetic
    half = load_model(tiny_ckpt, precision="bf16").eps(x, t)
    assert half.dtype == torch.float32 and not torch.equal(half, plain.eps(x, t))
    assert torch.allclose(half, plain.eps(x, t), atol=0.05, rtol=0.05)
    summary = sample(cli, tmp_path / "bf16", "--model", tiny_ckpt, "-n", "2", "--nfe", "2", "--precision", "bf16")
    assert summary["precision"] == "bf16"
    result = cli("sample", "--no-taus", "--out", tmp_path / "bf16", "--model", tiny_ckpt, "-n", "2", "--nfe", "2", *CPU)
    assert result.exit_code == 2 and "precision \"bf16\" (asked: \"fp32\")" in result.stderr


@pytest.mark.parametrize("value, needle", [("fp16", "--precision fp16 needs a CUDA device (here: cpu); use bf16 or fp32"),
                                           ("fp8", "unknown --precision 'fp8'; choose one of: fp32, tf32, bf16, fp16")])
def test_bad_precision(cli, tmp_path, value, needle):
    for command in (("sample", "--out", tmp_path / "s"), ("eval",)):
        result = cli(*command, "--model", GMM_TINY, "--precision", value, *CPU)
        assert result.exit_code == 2 and needle in result.stderr and "\n" not in result.stderr.strip()
    assert not (tmp_path / "s").exists()


def test_progress_shows_samples_per_second_and_eta(cli, tmp_path):
    result = cli("sample", "--no-taus", "--model", GMM_TINY, "-n", "4", "--nfe", "2", "--out", tmp_path / "s",
                 "--device", "cpu")
    assert result.exit_code == 0 and "samples/s, ETA 0:00:00" in result.stderr


ALIGN_ARGS = ("align", "--model", GMM_TINY, "--nfe", "4", "--iterations", "6", "--num-samples", "96",
              "--validation-samples", "128", "--validation-max-samples", "128", "--validation-reference-nfe", "20",
              "--no-cache", "--keep-worse", "--device", "cpu", "--quiet", "--json")


def test_torchrun_align_writes_the_artifact_of_one_process(cli, tmp_path):
    """2 gloo ranks: teacher and verdict batches split (128 + 128 noises: 2 batches each), every Adam
    minibatch split 4 + 4 with the gradients summed; one artifact, one JSON document."""
    one = cli(*ALIGN_ARGS, "--out", tmp_path / "one.json")
    assert one.exit_code == 0, one.output
    two = torchrun(*ALIGN_ARGS, "--out", tmp_path / "two.json")
    assert two.returncode == 0, two.stderr[-3000:]
    report = json.loads(two.stdout)  # exactly one JSON document: only rank 0 prints
    assert report["world_size"] == 2 and parse_json(one)["world_size"] == 1
    assert report["written"] == [str(tmp_path / "two.json")]
    a, b = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two"))
    # the same taus up to the order of floating-point sums (measured: bit-identical here and on the demo model)
    assert max(abs(x - y) for x, y in zip(a["taus"], b["taus"])) <= 1e-6 * a["trajectory"]["timesteps"][0]
    assert a["fit"]["candidate"] == b["fit"]["candidate"]
    assert a["validation"]["verdict"] == b["validation"]["verdict"]
    assert a["validation"]["num_samples"] == b["validation"]["num_samples"] == 128
    assert a["validation"]["baseline"] == pytest.approx(b["validation"]["baseline"], rel=1e-9)  # same noises, same batches
    assert a["validation"]["aligned"] == pytest.approx(b["validation"]["aligned"], rel=1e-6)
    assert not list(tmp_path.glob("*.tmp"))


def test_torchrun_align_refuses_a_per_step_fit(tmp_path):
    result = torchrun("align", "--model", GMM_TINY, "--nfe", "3", "--preset", "golden", "--no-cache",
                      "--out", tmp_path / "t.json", "--device", "cpu", "--quiet")
    assert result.returncode != 0 and result.stdout == ""
    assert "on torchrun, align fits with the joint objective only" in result.stderr
    assert "run this fit as one process" in result.stderr
    assert not (tmp_path / "t.json").exists()