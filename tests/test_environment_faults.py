"""Issue 11: faults of the machine, not of the input: a read-only or full cache directory, a busy
cache lock, data that is not there, the device out of memory. Each is one `error:` line with its
exit code, and nothing is written or corrupted (an existing cache entry or --out stays as it was)."""

from __future__ import annotations

import errno
import json
import os
import tempfile

import pytest
import torch
from filelock import FileLock

from dpm_align.aligner_core.artifacts import artifact as artifact_module
from dpm_align.aligner_core.artifacts.artifact import TauArtifact, read_artifact, write_cache_entry
from tests.conftest import GMM_TINY
from tests.test_cli import one_line_error

# the settings of the gmm_artifact fixture: the same key
ALIGN = ("align", "--model", GMM_TINY, "--nfe", "4", "--candidates", "taus", "--iterations", "3", "--num-samples", "8",
         "--validation-samples", "8", "--validation-max-samples", "8", "--validation-reference-nfe", "10", "--keep-worse",
         "--device", "cpu", "--quiet")
CACHE_FIX = "set DPM_ALIGN_CACHE_DIR to a writable directory, or pass --no-cache --out FILE"


@pytest.fixture
def cached(gmm_artifact, isolated_cache):
    """An entry already in the cache under the key that ALIGN writes: (its path, its bytes)."""
    path = write_cache_entry(TauArtifact.model_validate(gmm_artifact))
    return path, path.read_bytes()


def assert_unchanged(directory, before: dict) -> None:
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before


def snapshot(directory) -> dict:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_read_only_cache_directory(cli, cached, isolated_cache, tmp_path, monkeypatch):
    """Simulated (the tests may run as root, whom permissions do not stop): no file can be created
    in the cache directory. The error names the entry and the way out, which works."""
    path, _ = cached
    before = snapshot(isolated_cache)
    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and os.path.samefile(dir, isolated_cache):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    out = tmp_path / "taus.json"
    one_line_error(cli(*ALIGN, "--out", out), 2, f"cannot write {path} (Read-only file system); {CACHE_FIX}")
    assert not out.exists()
    assert_unchanged(isolated_cache, before)
    assert cli(*ALIGN, "--no-cache", "--out", out).exit_code == 0 and read_artifact(out).key == path.stem


def test_cache_directory_without_write_permission(cli, isolated_cache):
    """The real thing, where permissions stop this user (not root with CAP_DAC_OVERRIDE)."""
    isolated_cache.chmod(0o555)
    try:
        try:
            (isolated_cache / "probe").touch()
        except PermissionError:
            pass
        else:
            pytest.skip("permissions do not stop this user from writing into a read-only directory")
        one_line_error(cli(*ALIGN), 2, f"(Permission denied); {CACHE_FIX}")
        assert list(isolated_cache.iterdir()) == []
    finally:
        isolated_cache.chmod(0o755)


def _disk_full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_writing_the_cache_entry_keeps_the_old_one(cli, cached, isolated_cache, tmp_path, monkeypatch):
    """The disk fills up as the entry is written (its fsync fails): the old entry stays, no temporary
    file is left, and --out (written after the cache) is not created."""
    path, _ = cached
    before = snapshot(isolated_cache)
    monkeypatch.setattr(os, "fsync", _disk_full)
    out = tmp_path / "taus.json"
    one_line_error(cli(*ALIGN, "--seed", "3", "--out", out), 2,
                   f"cannot write {path} (No space left on device); {CACHE_FIX}")
    assert_unchanged(isolated_cache, before)
    assert not out.exists()


def test_full_disk_while_writing_out_keeps_the_old_file(cli, gmm_artifact, tmp_path, monkeypatch):
    out = tmp_path / "taus.json"
    out.write_text(json.dumps(gmm_artifact))
    before = snapshot(tmp_path)
    monkeypatch.setattr(os, "fsync", _disk_full)
    one_line_error(cli(*ALIGN, "--no-cache", "--seed", "3", "--out", out), 2,
                   f"cannot write {out} (No space left on device); choose a writable --out path")
    assert_unchanged(tmp_path, before)


def test_a_held_cache_lock_times_out_with_one_line(cli, cached, isolated_cache, monkeypatch):
    path, _ = cached
    monkeypatch.setattr(artifact_module, "LOCK_TIMEOUT_S", 0.2)
    before = snapshot(isolated_cache)
    with FileLock(path.with_name(f".{path.name}.lock")):  # another process writing this entry, or hung
        one_line_error(cli(*ALIGN, "--seed", "3"), 1, "another process has held the cache lock")
        assert_unchanged(isolated_cache, before)


def test_a_reader_during_a_write_sees_the_old_entry(cached, monkeypatch):
    """While the new entry's bytes are in its temporary file (synced, not renamed), the entry is the
    old one, whole; after the rename it is the new one."""
    path, old = cached
    new = read_artifact(path).model_copy(deep=True)
    new.fit.seed = 5
    seen, fsync = [], os.fsync

    def reading(fd):
        seen.append(path.read_bytes())
        fsync(fd)

    monkeypatch.setattr(os, "fsync", reading)
    write_cache_entry(new)
    assert seen == [old] and read_artifact(path).fit.seed == 5


@pytest.mark.parametrize("name,fragment", [
    ("mnist", "MNIST not found at {nowhere}/mnist-test/t10k-images-idx3-ubyte.gz; set DPM_ALIGN_DATA_DIR to the "
              "folder holding mnist-test/"),
    ("cifar10", "CIFAR-10 not found at {nowhere}/cifar10-test/cifar10_test_jpeg.npz; set DPM_ALIGN_DATA_DIR"),
])
def test_missing_shared_data(cli, tiny_ckpt, isolated_cache, tmp_path, monkeypatch, name, fragment):
    nowhere = tmp_path / "no-shared-data"
    monkeypatch.setenv("DPM_ALIGN_DATA_DIR", str(nowhere))
    out = tmp_path / "taus.json"
    one_line_error(cli("align", "--model", tiny_ckpt, "--strategy", "parallel", "--data", name, "--nfe", "2",
                       "--out", out, "--device", "cpu", "--quiet"), 2, fragment.format(nowhere=nowhere))
    assert not out.exists() and list(isolated_cache.iterdir()) == []


OOM_FIX = "lower --batch-size (align: its teacher and verdict run batches of at least 64; --gradient-checkpointing shrinks its fit)"


@pytest.mark.parametrize("error,fragment", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                 "79.15 GiB of which 1.06 GiB is free."),
     "out of memory (CUDA, tried to allocate 2.00 GiB)"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"),
     "out of memory (CPU, tried to allocate 68719476736 bytes)"),
], ids=["cuda", "cpu"])
@pytest.mark.parametrize("command", ["align", "sample", "eval"])
def test_out_of_memory_is_one_line_suggesting_batch_size(cli, gmm_artifact, isolated_cache, tmp_path, monkeypatch,
                                                         command, error, fragment):
    taus = tmp_path / "taus.json"
    taus.write_text(json.dumps(gmm_artifact))
    out = tmp_path / "out"

    def out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr("dpm_align.aligner_core.models.model.EpsModel._network", out_of_memory)
    small = ("--model", GMM_TINY, "--taus", taus, "-n", "2", "--device", "cpu", "--quiet")
    args = {"align": (*ALIGN, "--out", out), "sample": ("sample", *small, "--out", out),
            "eval": ("eval", *small, "--plot", out)}[command]
    result = cli(*args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = result.stderr.strip().splitlines()[-1]  # sample warns first that the taus are not "better"
    assert line.startswith("error: ") and fragment in line and OOM_FIX in line, line
    assert list(isolated_cache.iterdir()) == []
    if command == "sample":  # its directory is made (with the manifest) before the first batch, so a re-run resumes
        assert not list(out.rglob("*.png"))
    else:
        assert not out.exists()
