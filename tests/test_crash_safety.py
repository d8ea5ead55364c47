"""Issue 11: `align` killed with SIGKILL at random points, two `align`s writing one cache entry at once,
and the same seed giving the same bytes. Each runs `python -m dpm_align.cli align` in subprocesses on
the tiny exact mixture with the smallest settings (about 3 s a run, most of it importing).

The subprocesses run ``DRIVER``: the CLI with ``os.fsync`` and ``os.replace`` logged (which
process, when, which file), optionally one fsync made slow, so that a kill can be aimed at the
moment an artifact's temporary file is complete but not yet renamed into place, and optionally a
barrier that holds each process before it writes its cache entry until all have reached it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from dpm_align.aligner_core.artifacts.artifact import read_artifact
from dpm_align.aligner_core.artifacts.artifact_check import check_artifact
from tests.conftest import GMM_TINY

ALIGN = ("align", "--nfe", "4", "--iterations", "3", "--num-samples", "8",
         "--validation-samples", "8", "--validation-max-samples", "8", "--validation-reference-nfe", "10",
         "--keep-worse", "--device", "cpu", "--quiet")

DRIVER = """
import os, sys, time
log, slow = os.environ["DPM_TEST_LOG"], int(os.environ.get("DPM_TEST_SLOW_FSYNC", "0"))
fsync, replace, calls = os.fsync, os.replace, []
def note(line):
    with open(log, "a") as f:
        f.write(f"{line} {os.getpid()} {time.time():.6f}\\n")
def logged_fsync(fd):
    calls.append(fd)
    note(f"fsync {os.path.basename(os.readlink(f'/proc/self/fd/{fd}'))}")
    if len(calls) == slow:
        time.sleep(float(os.environ.get("DPM_TEST_SLEEP", "0.5")))
    fsync(fd)
def logged_replace(src, dst):
    replace(src, dst)
    note(f"replace {os.path.basename(dst)}")
os.fsync, os.replace = logged_fsync, logged_replace
import dpm_align.cli.main as cli
write_cache_entry, barrier = cli.write_cache_entry, int(os.environ.get("DPM_TEST_BARRIER", "0"))
def at_the_barrier(artifact):
    note("ready -")
    deadline = time.time() + 60  # the other process may have failed: then this one goes on alone
    while sum(line.startswith("ready") for line in open(log)) < barrier and time.time() < deadline:
        time.sleep(0.01)
    return write_cache_entry(artifact)
cli.write_cache_entry = at_the_barrier
sys.argv[0] = "dpm-align"
cli.run()
"""


def start_align(cache: Path, log: Path, *args: str, model: str = GMM_TINY, candidates: str = "taus",
                slow_fsync: int = 0, sleep: float = 0.5, barrier: int = 0, hash_seed: str = "0") -> subprocess.Popen:
    """`dpm-align align` (ALIGN and ``args``) through DRIVER, fsync number ``slow_fsync`` (1: the
    first artifact written) taking ``sleep`` seconds more; with ``barrier`` = n, the cache entry is
    written once n processes logging to ``log`` are about to write theirs."""
    env = dict(os.environ, DPM_ALIGN_CACHE_DIR=str(cache), DPM_TEST_LOG=str(log), DPM_TEST_SLOW_FSYNC=str(slow_fsync),
               DPM_TEST_SLEEP=str(sleep), DPM_TEST_BARRIER=str(barrier), PYTHONHASHSEED=hash_seed, OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", DRIVER, *ALIGN, "--model", model, "--candidates", candidates, *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "Traceback" not in err


def events(log: Path) -> list[tuple[str, str, int, float]]:
    """(what, file, pid, time) of every fsync and replace the driver logged."""
    if not log.exists():
        return []
    lines = (line.split() for line in log.read_text().splitlines())
    return [(what, name, int(pid), float(t)) for what, name, pid, t in lines]


def wait_for(log: Path, count: int, process: subprocess.Popen) -> bool:
    """Wait until the driver has logged ``count`` fsyncs (False if the process ended first)."""
    while sum(e[0] == "fsync" for e in events(log)) < count:
        if process.poll() is not None:
            return False
        time.sleep(0.01)
    return True


def assert_only_whole_artifacts(cache: Path, out: Path) -> int:
    """--out is absent or a whole artifact that passes the check; the cache holds only whole, valid
    entries, named by their key, besides hidden temporary files of killed writers. Returns the number
    of those temporary files."""
    if out.exists():
        check_artifact(read_artifact(out))
    temporaries = 0
    for path in cache.iterdir() if cache.exists() else ():  # a kill before the cache was made: none
        if path.name.startswith("."):
            assert path.name.endswith((".tmp", ".probe", ".lock")), path.name
            temporaries += path.name.endswith(".tmp")
            continue
        artifact = read_artifact(path)
        check_artifact(artifact)
        assert path.name == f"{artifact.key}.json"
    return temporaries


def test_sigkill_at_random_points_leaves_only_whole_artifacts(tmp_path):
    """Four kills, each at a seeded random moment of one of three phases: any time (loading,
    fitting, the verdict), while the cache entry's temporary file is synced, while --out's is. Then
    an uninterrupted run into the same cache removes what the killed writers left."""
    rng = random.Random(11)
    cache, out = tmp_path / "cache", tmp_path / "taus.json"
    left_behind = 0
    for trial, phase in enumerate(["cache write", "any time", "out write", "any time"]):
        log = tmp_path / f"log{trial}"
        if phase == "any time":
            process = start_align(cache, log, "--out", str(out), "--seed", str(trial))
            time.sleep(rng.uniform(0.2, 3.0))
        else:
            which = 1 if phase == "cache write" else 2  # the cache entry is written first, then --out
            process = start_align(cache, log, "--out", str(out), "--seed", str(trial), slow_fsync=which, sleep=60)
            assert wait_for(log, which, process), process.communicate()[1]
            time.sleep(rng.uniform(0.0, 0.2))
        process.send_signal(signal.SIGKILL)
        process.communicate()
        left_behind += assert_only_whole_artifacts(cache, out)
        if phase != "any time":  # killed inside the write: the temporary file is complete, not renamed
            assert process.returncode == -signal.SIGKILL
            assert any(p.name.endswith(".tmp") for p in (cache if which == 1 else tmp_path).iterdir())
    assert left_behind >= 1
    finish(start_align(cache, tmp_path / "log-final", "--out", str(out)))
    assert assert_only_whole_artifacts(cache, out) == 0  # the cache entry's writer cleaned up under its lock
    assert read_artifact(out).fit.seed == 0 and len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1


def test_two_aligns_of_one_key_leave_one_valid_entry_and_the_last_writer_wins(tmp_path):
    """Both fit (other seeds, the same key) and start writing the cache entry at the same moment
    (the barrier); the file lock serializes the writes (each takes 0.5 s here, in its fsync: the
    logged intervals must not overlap; without the lock they do); the entry is the artifact of the
    process that wrote last. A reader polling the entry meanwhile finds it absent or whole and valid."""
    cache, log = tmp_path / "cache", tmp_path / "log"
    processes = {seed: start_align(cache, log, "--seed", str(seed), slow_fsync=1, barrier=2) for seed in (1, 2)}
    reads = 0
    while any(p.poll() is None for p in processes.values()):
        for path in cache.glob("*.json"):
            check_artifact(read_artifact(path))
            reads += 1
        time.sleep(0.02)
    for process in processes.values():
        finish(process)
    pids = {p.pid: seed for seed, p in processes.items()}
    writes = {}
    for what, name, pid, t in events(log):
        if what == "fsync":
            writes[pid] = [t]
        elif what == "replace":
            writes[pid].append(t)
    (first, (a0, a1)), (last, (b0, b1)) = sorted(writes.items(), key=lambda item: item[1][1])
    assert a1 <= b0, "the two writes of the cache entry overlapped: the lock did not hold"
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and read_artifact(entries[0]).fit.seed == pids[last]
    assert assert_only_whole_artifacts(cache, tmp_path / "no-out") == 0
    assert reads > 0


def test_same_seed_same_bytes_apart_from_created(cli, tiny_ckpt, tmp_path):
    """The tiny UNet (convolutions, whose float sums depend on the thread count: one thread in both)
    fitted in a subprocess (hash seed 1) and in this process: byte for byte the same artifact, apart
    from `created`. The default candidates and a verdict, so that every block is compared."""
    outs = [tmp_path / f"taus{k}.json" for k in (1, 2)]
    model, candidates = str(tiny_ckpt), "taus,grid+taus"
    process = start_align(tmp_path / "cache", tmp_path / "log", "--no-cache", "--out", str(outs[0]), model=model,
                          candidates=candidates, hash_seed="1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = cli(*ALIGN, "--model", model, "--candidates", candidates, "--no-cache", "--out", outs[1])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    finish(process)
    texts = [out.read_text().splitlines() for out in outs]
    differ = [a for a, b in zip(*texts) if a != b]
    assert len(texts[0]) == len(texts[1]) and len(differ) == 1 and differ[0].lstrip().startswith('"created"')
    assert json.loads(outs[0].read_text())["fit"]["candidates"].keys() == {"taus", "grid+taus"}
