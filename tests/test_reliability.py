"""Issue 11: no command uses an artifact that fails its check, and Ctrl-C leaves nothing half-written.

Every check of ``artifact_check`` has its own case below: the artifact is mutated as a user or a
broken tool could (the key recomputed where the mutation changes it, so that the schema passes),
and ``inspect --check --model`` and ``sample --taus`` must both refuse it with the same one line,
exit 1, writing nothing.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from dpm_align.aligner_core.artifacts.artifact import TauArtifact, artifact_key, trajectory_label
from dpm_align.aligner_core.artifacts.artifact_check import check_artifact
from dpm_align.aligner_core.errors import ArtifactError
from tests.conftest import GMM_TINY
from tests.test_cli import one_line_error

SAMPLE = ("-n", "2", "--device", "cpu", "--quiet")


def rekey(doc: dict) -> dict:
    """The document with the key its (mutated) sampler and trajectory give."""
    traj = doc["trajectory"]
    doc["key"] = artifact_key(doc["model"]["sha256"], doc["sampler"]["name"], doc["sampler"]["eta"],
                              trajectory_label(traj["kind"], traj["rho"]), traj["nfe"])
    return doc


def width(doc: dict, step: int) -> float:
    grid = doc["trajectory"]["timesteps"]
    return grid[step] - grid[step + 1]


def _set(path: str, value):
    """A mutation setting the dotted ``path`` (``taus.1``: list index 1) to ``value``."""
    def mutate(doc: dict) -> dict:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value(doc) if callable(value) else value
        return doc
    return mutate


def _swap_grid(doc: dict) -> dict:
    grid = doc["trajectory"]["timesteps"]
    grid[1], grid[2] = grid[2], grid[1]
    return doc


def _other_coefficients(doc: dict) -> dict:  # alpha, sigma of another time: variance preserving, wrong place
    traj = doc["trajectory"]
    traj["alphas"], traj["sigmas"] = traj["alphas"][1:] + traj["alphas"][-1:], traj["sigmas"][1:] + traj["sigmas"][-1:]
    return doc


def _unchanged(doc: dict, **extra) -> dict:
    v = doc["validation"]
    v.update(verdict="unchanged", better=False, metrics=[], baseline={}, aligned={}, changes={}, num_samples=0, looks=[])
    v.update(extra)
    return doc


CASES = [
    ("nan tau", _set("taus.1", float("nan")), "taus[1] is nan: every number in an artifact must be finite"),
    ("inf alpha", _set("trajectory.alphas.0", float("inf")), "trajectory.alphas[0] is inf: every number"),
    ("nan verdict number", _set("validation.aligned.kernel", float("-inf")), "validation.aligned.kernel is -inf"),
    ("huge tau", _set("taus.0", 1e9), "taus[0] = 1e+09 is outside the model's time range [0, "),
    ("negative tau", _set("taus.2", -5.0), "taus[2] = -5 is outside the model's time range"),
    ("tau far from its time", _set("taus.3", lambda d: d["eval_times"][3] + 2.5 * width(d, 3)),
     "taus[3] = 874.125 is 624.375 from its evaluation time 249.75, more than 2 x its step's width 249.75"),
    ("grid not decreasing", _swap_grid, "trajectory.timesteps must decrease strictly (timesteps[1] = 499.5, timesteps[2] = 749.25)"),
    ("grid not the kind's", _set("trajectory.timesteps.1", 700.0), "trajectory.timesteps[1] = 700 differs from the uniform grid"),
    ("fitted grid, wrong end", lambda d: _set("trajectory.timesteps.0", 990.0)(_set("trajectory.fitted", True)(d)),
     "trajectory.timesteps[0] = 990, but a fitted grid keeps the uniform grid's end 999"),
    ("a cosine grid from t = 999", _set("model.schedule.beta_schedule", "squaredcos_cap_v2"),
     "trajectory.timesteps[0] = 999: grids of this schedule now start at t = 995.077, where log-SNR = -5.1"),
    ("alpha edited", _set("trajectory.alphas.2", 0.5), "trajectory.alphas[2]^2 + trajectory.sigmas[2]^2 = "),
    ("coefficients of other times", _other_coefficients, "trajectory.alphas[0] = "),
    ("eval time edited", _set("eval_times.1", 700.0), "eval_times[1] = 700 differs from the ddim sampler's evaluation times"),
    ("unknown sampler", lambda d: rekey(_set("sampler.name", "euler")(d)), "sampler.name 'euler' is not a sampler"),
    ("negative eta", lambda d: rekey(_set("sampler.eta", -1.0)(d)), "sampler.eta -1 is not allowed for ddim: it must be >= 0"),
    ("eta of a deterministic sampler", lambda d: rekey(_set("sampler.eta", 0.5)(_set("sampler.name", "dpm-solver-2")(d))),
     "sampler.eta 0.5 is not allowed for dpm-solver-2: it must be 0"),
    ("nfe not steps x evaluations", lambda d: rekey(_set("sampler.name", "dpm-solver-2")(d)),
     "trajectory.nfe 4 != steps 4 x 2 evaluation(s) per step of dpm-solver-2"),
    ("unknown trajectory", lambda d: rekey(_set("trajectory.kind", "cosine")(d)), "trajectory.kind 'cosine' is not a trajectory"),
    ("rho off edm", lambda d: rekey(_set("trajectory.rho", 7.0)(d)), "trajectory.rho 7.0 does not fit the uniform trajectory"),
    ("two Ts", _set("model.num_train_timesteps", 500), "model.num_train_timesteps 500 != model.schedule.num_train_timesteps 1000"),
    ("broken schedule", _set("model.schedule.beta_end", 2.0), "model.schedule gives alphas_cumprod outside (0, 1]"),
    ("better but not the verdict", _set("validation.better", lambda d: d["validation"]["verdict"] != "better"),
     "validation.better is "),
    ("unchanged with samples", lambda d: _unchanged(d, num_samples=8), "validation.verdict 'unchanged' (the fit kept the "
     "plain times) needs num_samples 0 and no changes, not 8 samples"),
    ("unchanged with other taus", _unchanged, "validation.verdict 'unchanged' but the taus or the grid differ"),
    ("a metric without its change", _set("validation.metrics.0", "fid"),
     "validation.metrics names 'fid', which validation.changes lacks"),
    ("negative end_l2", _set("validation.baseline.end_l2", -1.0), "validation.baseline.end_l2 = -1 is negative"),
    ("a Gamma table on ddim", _set("analytic", lambda d: {"times": d["trajectory"]["timesteps"][:-1],
                                                          "gammas": [1.0] * 4, "source": "data", "num_samples": 8}),
     "analytic holds a Gamma table, but the ddim sampler does not use one"),
]


@pytest.mark.parametrize("mutate,fragment", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_each_check_refuses_with_one_line_and_writes_nothing(cli, gmm_artifact, tmp_path, mutate, fragment):
    path = tmp_path / "taus.json"
    path.write_text(json.dumps(mutate(copy.deepcopy(gmm_artifact))))
    for args in (("inspect", path, "--check", "--model", GMM_TINY),
                 ("sample", "--model", GMM_TINY, "--taus", path, "--out", tmp_path / "s", *SAMPLE)):
        result = cli(*args)
        one_line_error(result, 1, f"{path}: {fragment}")
        assert "re-create it with `dpm-align align" in result.stderr or "fix the schedule" in result.stderr
    assert not (tmp_path / "s").exists()


def test_the_base_and_an_unchanged_verdict_pass(cli, gmm_artifact, tmp_path):
    doc = copy.deepcopy(gmm_artifact)
    doc["taus"] = list(doc["eval_times"])
    for name, document in (("base.json", gmm_artifact), ("unchanged.json", _unchanged(doc))):
        (tmp_path / name).write_text(json.dumps(document))
        checked = cli("inspect", tmp_path / name, "--check", "--model", GMM_TINY)
        assert checked.exit_code == 0, checked.output
        assert "each within 2 step widths of its evaluation time" in checked.stdout
    assert "ok: verdict 'unchanged' consistent with its numbers" in checked.stdout


def test_every_reader_refuses_a_nan_tau(cli, gmm_artifact, tmp_path):
    """inspect (plain, --format, --plot), eval, and the diffusers scheduler run the same check."""
    doc = _set("taus.0", float("nan"))(copy.deepcopy(gmm_artifact))
    path = tmp_path / "taus.json"
    path.write_text(json.dumps(doc))
    fragment = "taus[0] is nan"
    one_line_error(cli("inspect", path), 1, fragment)
    one_line_error(cli("inspect", path, "--format", "diffusers"), 1, fragment)
    one_line_error(cli("inspect", path, "--plot", tmp_path / "taus.png"), 1, fragment)
    one_line_error(cli("eval", "--model", GMM_TINY, "--taus", path, "--plot", tmp_path / "plots", *SAMPLE), 1, fragment)
    assert not (tmp_path / "taus.png").exists() and not (tmp_path / "plots").exists()
    from dpm_align.aligner_core.sampling.diffusers_scheduler import AlignedScheduler

    with pytest.raises(ArtifactError, match=r"taus\[0\] is nan"):
        AlignedScheduler.from_artifact(path)
    with pytest.raises(ArtifactError, match=r"taus\[0\] is nan"):
        AlignedScheduler.from_artifact(TauArtifact.model_validate(doc))


def _on_the_cosine_schedule(doc: dict) -> dict:
    """The artifact moved to a cosine schedule: its grid, coefficients and evaluation times recomputed, taus = plain."""
    import torch

    from dpm_align.aligner_core.sampling.samplers import nominal_eval_times
    from dpm_align.aligner_core.sampling.schedule import NoiseSchedule, ScheduleSpec
    from dpm_align.aligner_core.sampling.trajectory import make_grid

    spec = ScheduleSpec(beta_schedule="squaredcos_cap_v2")
    schedule, traj = NoiseSchedule(spec), doc["trajectory"]
    grid = make_grid(traj["kind"], traj["steps"], schedule)
    times = torch.tensor(grid, dtype=torch.float64)
    doc["model"]["schedule"] = spec.model_dump()
    traj.update(timesteps=grid, alphas=schedule.alpha(times).tolist(), sigmas=schedule.sigma(times).tolist())
    doc["eval_times"] = nominal_eval_times(doc["sampler"]["name"], grid, schedule)
    doc["taus"] = list(doc["eval_times"])
    return doc


def test_a_tau_past_a_clipped_schedules_start_is_refused(cli, gmm_artifact, tmp_path):
    """A cosine schedule's grids start at t_max = 995.08, and no fit feeds the network a later time:
    the check holds its taus to [0, t_max] (other schedules: T - 1 plus one step)."""
    doc = _on_the_cosine_schedule(copy.deepcopy(gmm_artifact))
    path = tmp_path / "taus.json"
    path.write_text(json.dumps(doc))
    checked = cli("inspect", path, "--check")
    assert checked.exit_code == 0, checked.output
    assert "4 taus (= nfe) in [0, 995.078]" in checked.stdout
    doc["taus"][0] = doc["trajectory"]["timesteps"][0] + 1.0
    path.write_text(json.dumps(doc))
    one_line_error(cli("inspect", path, "--check"), 1, "taus[0] = 996.077 is outside the model's time range [0, 995.078] "
                   "(where the clipped schedule's grids start); re-create it with `dpm-align align`")


def test_an_artifact_of_another_model_is_refused(cli, gmm_artifact, tmp_path):
    path = tmp_path / "taus.json"
    path.write_text(json.dumps(gmm_artifact))
    other = f"{GMM_TINY},seed=1"
    one_line_error(cli("inspect", path, "--check", "--model", other), 1, "was fitted for something else (model sha256")
    one_line_error(cli("sample", "--model", other, "--taus", path, "--out", tmp_path / "s", *SAMPLE), 1,
                   "was fitted for something else")
    assert not (tmp_path / "s").exists()


def test_a_tau_above_t_max_within_the_first_step_is_accepted(gmm_artifact):
    """The fitters may move the first tau above T - 1 (a joint fit on this very model put it at 1022)."""
    doc = copy.deepcopy(gmm_artifact)
    doc["taus"][0] = 999 + 0.9 * width(doc, 0)
    check_artifact(TauArtifact.model_validate(doc))


# ------------------------------------------------------------------ Ctrl-C
def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("command,target", [
    ("align", "dpm_align.aligner_core.api.fit_taus"),
    ("eval", "dpm_align.cli.main.trajectory_gap"),
    ("inspect", "dpm_align.cli.main.inspect_rows"),
])
def test_ctrl_c_exits_130_with_one_line_and_leaves_nothing(cli, gmm_artifact, tmp_path, isolated_cache, monkeypatch,
                                                           command, target):
    taus = tmp_path / "taus.json"
    taus.write_text(json.dumps(gmm_artifact))
    args = {
        "align": ("align", "--model", GMM_TINY, "--nfe", "4", "--out", tmp_path / "out.json", "--device", "cpu", "-q"),
        "sample": ("sample", "--model", GMM_TINY, "--taus", taus, "--out", tmp_path / "out", *SAMPLE),
        "eval": ("eval", "--model", GMM_TINY, "--taus", taus, "--plot", tmp_path / "out", *SAMPLE),
        "inspect": ("inspect", taus),
    }[command]
    monkeypatch.setattr(target, _interrupt)
    result = cli(*args)
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == "error: interrupted; no file was left half-written"  # after a
    # warning that the artifact's verdict is not "better" (sample)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taus.json"] and list(isolated_cache.iterdir()) == []


class _HalfWrite:
    """An image whose ``save`` writes half a file, then is interrupted."""

    def __init__(self, *args):
        pass

    def save(self, path, **kwargs):
        Path(path).write_bytes(b"half a png")
        raise KeyboardInterrupt


@pytest.mark.parametrize("target, replacement, left", [
    ("dpm_align.aligner_core.api.run_sampler", _interrupt, []),  # in the first batch: the manifest only
    ("dpm_align.aligner_core.images._pil", _HalfWrite, []),  # while the first file is written
    ("dpm_align.aligner_core.images.make_grid", _interrupt, ["000000.png", "000001.png"]),  # every sample, no grid
])
def test_ctrl_c_in_sample_leaves_complete_files_and_a_rerun_completes(cli, gmm_artifact, tmp_path, monkeypatch,
                                                                     target, replacement, left):
    taus = tmp_path / "taus.json"
    taus.write_text(json.dumps(gmm_artifact))
    args = ("sample", "--model", GMM_TINY, "--taus", taus, *SAMPLE)
    assert cli(*args, "--out", tmp_path / "clean").exit_code == 0
    with monkeypatch.context() as patch:
        patch.setattr(target, replacement)
        result = cli(*args, "--out", tmp_path / "out")
    assert result.exit_code == 130 and result.stderr.strip().splitlines()[-1] == \
        "error: interrupted; no file was left half-written"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*left, "dpm-align-sample.json"])
    assert cli(*args, "--out", tmp_path / "out").exit_code == 0
    for path in (tmp_path / "clean").iterdir():
        assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes(), path.name
