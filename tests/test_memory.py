"""Memory for big networks: gradient checkpointing of the joint fit, the peak memory that ``align``
and ``sample`` report, and the host allocator setting of the command line."""

import json
import platform
import sys

import pytest
import torch

from dpm_align.aligner_core import resources
from dpm_align.aligner_core.resources import reuse_freed_host_memory
from dpm_align.cli import main as cli_main
from dpm_align.aligner_core.fitting.fit import fit_taus, resolve_config
from dpm_align.aligner_core.models.loading import load_model
from dpm_align.aligner_core.sampling.trajectory import make_grid
from tests.conftest import parse_json
from tests.test_cli import one_line_error


def _fit(model, checkpointing: bool):
    grid = make_grid("uniform", 4, model.eps.schedule)
    config = resolve_config("default", iterations=10, num_samples=16, checkpointing=checkpointing or None)
    saved = []

    def pack(t: torch.Tensor):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fit_taus(model.eps, model.eps.schedule, grid, "ddim", 0.0, config, model.sample_shape)
    return result, sum(saved)


def test_gradient_checkpointing_gives_the_same_taus_and_keeps_less(tiny_ckpt):
    model = load_model(str(tiny_ckpt), device="cpu")
    plain, kept_plain = _fit(model, False)
    checkpointed, kept_checkpointed = _fit(model, True)
    assert checkpointed.taus == plain.taus and checkpointed.grid == plain.grid
    assert checkpointed.candidates == plain.candidates
    # the network's activations are no longer saved for the backward pass, only its inputs
    assert kept_checkpointed < 0.5 * kept_plain, (kept_checkpointed, kept_plain)


def test_gradient_checkpointing_is_for_joint_fits(cli):
    one_line_error(cli("align", "--model", "gmm", "--nfe", "4", "--preset", "golden", "--gradient-checkpointing",
                       "--quiet", "--no-validate"), 2, "--gradient-checkpointing saves the joint fit's memory")


@pytest.mark.parametrize("command", ["align", "sample"])
def test_peak_memory_is_reported(cli, tmp_path, command):
    extra = ("--no-validate", "--no-cache", "--iterations", "5", "--out", tmp_path / "t.json") if command == "align" \
        else ("--no-taus", "-n", "2", "--out", tmp_path / "s")
    result = cli(command, "--model", "gmm", "--nfe", "4", *extra, "--json", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    peak = parse_json(result)["peak_memory"]
    assert peak["kind"] == "host-rss" and peak["mib"] > 10
    text = cli(command, "--model", "gmm", "--nfe", "4", *extra, "--quiet", "--device", "cpu")
    assert "peak memory" in text.stdout and "MiB (host RSS)" in text.stdout


def test_align_in_bf16_records_its_precision(cli, tiny_ckpt, tmp_path):
    """--precision on align: the fit and the verdict run the network in bf16 (autocast); recorded in
    the artifact and shown by inspect. fp16 needs CUDA."""
    out = tmp_path / "bf16.json"
    result = cli("align", "--model", tiny_ckpt, "--nfe", "3", "--iterations", "5", "--precision", "bf16",
                 "--no-validate", "--no-cache", "--out", out, "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "on cpu (bf16)" in result.stdout
    assert json.loads(out.read_text())["fit"]["precision"] == "bf16"
    one_line_error(cli("align", "--model", tiny_ckpt, "--nfe", "3", "--precision", "fp16", "--no-cache", "--out",
                       tmp_path / "x.json", "--quiet", "--device", "cpu"), 2, "--precision fp16 needs a CUDA device")
    assert not (tmp_path / "x.json").exists()


def test_the_command_line_lets_glibc_reuse_freed_host_memory(monkeypatch):
    """On glibc the setting takes (and may be repeated); where the C library is not glibc (macOS,
    musl) nothing is set and nothing fails. The console script sets it before any command."""
    if platform.libc_ver()[0] == "glibc":
        assert reuse_freed_host_memory() and reuse_freed_host_memory()
    calls = []
    monkeypatch.setattr(cli_main, "reuse_freed_host_memory", lambda: calls.append(True))
    monkeypatch.setattr(sys, "argv", ["dpm-align", "--help"])
    with pytest.raises(SystemExit) as exited:
        cli_main.run()
    assert exited.value.code == 0 and calls == [True]

    def no_glibc(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(resources.ctypes, "CDLL", no_glibc)
    assert reuse_freed_host_memory() is False
