import json
import os

import pytest

from dpm_align.aligner_core.artifacts import artifact as artifact_mod
from dpm_align.aligner_core.api import SamplingPlan, align, resolve_plan
from dpm_align.aligner_core.artifacts.artifact import (
    TauArtifact,
    cache_dir,
    cache_path,
    check_artifact_matches,
    ensure_writable,
    read_artifact,
    write_artifact,
)
from dpm_align.aligner_core.errors import DpmAlignError, UsageError
from dpm_align.aligner_core.fitting.fit import resolve_config
from dpm_align.aligner_core.artifacts.artifact_check import check_artifact
from dpm_align.aligner_core.artifacts.inspection import inspect_rows
from dpm_align.aligner_core.models.loading import load_model


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    return load_model(tiny_ckpt)


@pytest.fixture(scope="module")
def artifact(tiny) -> TauArtifact:
    plan = SamplingPlan.make(tiny.eps.schedule, "ddim", None, "uniform", 3)
    return align(tiny, plan, resolve_config("default", iterations=3, num_samples=8, candidates=("taus",)))


def test_required_fields_and_round_trip(artifact, tmp_path):
    path = write_artifact(artifact, tmp_path / "taus.json")
    data = json.loads(path.read_text())
    assert data["schema_version"] == 4
    for field in ("dpm_align_version", "created", "key", "model", "sampler", "trajectory", "taus", "eval_times", "fit"):
        assert field in data
    assert set(data["model"]) >= {"sha256", "source", "format", "prediction_type", "num_train_timesteps", "schedule"}
    assert set(data["trajectory"]) == {"kind", "nfe", "steps", "rho", "fitted", "timesteps", "alphas", "sigmas"}
    assert data["trajectory"]["timesteps"][0] == 999.0 and len(data["taus"]) == 3
    assert data["eval_times"] == data["trajectory"]["timesteps"][:-1]
    assert data["created"].endswith("Z") or data["created"].endswith("+00:00")
    assert read_artifact(path) == artifact


def test_schema_v1_artifacts_are_read_and_upgraded(artifact, tmp_path):
    v1 = artifact.model_dump(mode="json")
    v1["schema_version"] = 1
    del v1["eval_times"], v1["trajectory"]["steps"], v1["trajectory"]["rho"], v1["conditioning"]
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(v1))
    assert read_artifact(path) == artifact


def test_schema_v2_artifacts_are_read(artifact, tmp_path):
    v2 = artifact.model_dump(mode="json")
    v2["schema_version"] = 2
    del v2["conditioning"]
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(v2))
    assert read_artifact(path) == artifact


def test_key_is_model_sampler_eta_trajectory_nfe(artifact):
    assert artifact.key == f"{artifact.model.sha256[:16]}-ddim-eta0-uniform-nfe3"


def test_write_is_atomic_when_interrupted(artifact, tmp_path, monkeypatch):
    target = tmp_path / "taus.json"
    write_artifact(artifact, target)
    before = target.read_text()

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifact_mod.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_artifact(artifact.model_copy(update={"taus": [1.0, 2.0, 3.0]}), target)
    assert target.read_text() == before
    assert os.listdir(tmp_path) == ["taus.json"]  # no temp file left behind


@pytest.mark.parametrize(
    "mutate,message",
    [(lambda text: text[: len(text) // 2], "is not valid JSON"),
     (lambda text: "[1, 2", "is not valid JSON"),
     (lambda text: text.replace('"schema_version": 4', '"schema_version": 7'), "has schema_version 7"),
     (lambda text: text.replace('"taus": [', '"bogus": 1, "taus": ['), "does not match the tau artifact schema v4 \\(bogus"),
     (lambda text: json.dumps({**json.loads(text), "taus": [1.0]}), "taus has 1 values"),
     (lambda text: json.dumps({**json.loads(text), "key": "other"}), "key 'other' does not match its contents")],
)
def test_malformed_artifacts_are_one_line_usage_errors(artifact, tmp_path, mutate, message):
    path = tmp_path / "bad.json"
    path.write_text(mutate(artifact.model_dump_json(indent=2)))
    with pytest.raises(UsageError, match=message) as info:
        read_artifact(path)
    assert "\n" not in str(info.value)


def test_missing_artifact(tmp_path):
    with pytest.raises(UsageError, match="does not exist; run `dpm-align align`"):
        read_artifact(tmp_path / "nope.json")


def test_artifact_for_another_model_is_refused(artifact, tmp_path, tiny):
    from tests.conftest import make_tiny_checkpoint

    other = load_model(make_tiny_checkpoint(tmp_path, seed=1))
    with pytest.raises(DpmAlignError, match="fitted for something else \\(model sha256"):
        check_artifact_matches(artifact, model=other.info)
    with pytest.raises(DpmAlignError, match="sampler ddim != ddpm; trajectory uniform != logsnr; nfe 3 != 5"):
        check_artifact_matches(artifact, model=tiny.info, sampler="ddpm", trajectory="logsnr", nfe=5)
    changed = tiny.info.model_copy(update={"schedule": tiny.info.schedule.model_copy(update={"beta_end": 0.03})})
    with pytest.raises(DpmAlignError, match="noise schedule differs"):
        check_artifact_matches(artifact, model=changed)


def test_cache_lookup_by_key(artifact, tiny, isolated_cache):
    assert cache_dir() == isolated_cache
    with pytest.raises(DpmAlignError, match="no taus in the cache for .*nfe3"):
        resolve_plan(tiny, sampler=None, eta=None, trajectory=None, nfe=3)
    write_artifact(artifact, cache_path(artifact.key))
    plan, found, path = resolve_plan(tiny, sampler=None, eta=None, trajectory=None, nfe=3)
    assert found == artifact and path == cache_path(artifact.key) and plan.nfe == 3
    plan, found, _ = resolve_plan(tiny, sampler=None, eta=None, trajectory=None, nfe=3, use_taus=False)
    assert found is None


def test_explicit_taus_file_fills_settings_and_rejects_conflicts(artifact, tiny, tmp_path):
    path = write_artifact(artifact, tmp_path / "t.json")
    plan, found, _ = resolve_plan(tiny, sampler=None, eta=None, trajectory=None, nfe=None, taus_path=path)
    assert (plan.sampler, plan.trajectory, plan.nfe) == ("ddim", "uniform", 3)
    with pytest.raises(DpmAlignError, match="nfe 3 != 10"):
        resolve_plan(tiny, sampler=None, eta=None, trajectory=None, nfe=10, taus_path=path)


def test_check_recomputes_grid_and_detects_tampering(artifact):
    assert len(check_artifact(artifact)) == 4
    tampered = artifact.model_copy(update={"trajectory": artifact.trajectory.model_copy(
        update={"timesteps": [999.0, 600.0, 333.0, 0.0]})})
    with pytest.raises(DpmAlignError, match=r"trajectory.timesteps\[1\] = 600 differs from the uniform grid"):
        check_artifact(tampered)
    assert [row[0] for row in inspect_rows(artifact)] == ["1", "2", "3"]


def test_unwritable_destinations(tmp_path):
    with pytest.raises(UsageError, match="is a directory; pass a file path"):
        ensure_writable(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="cannot write .*choose a writable --out path"):
        ensure_writable(blocker / "sub" / "taus.json")


def test_fit_seconds_of_older_files_is_dropped(artifact, tmp_path):
    """Until 0.2.0 artifacts stored the fit's duration, the one field besides `created` that made two
    runs differ; files that have it are still read."""
    for version in (3, 4):
        doc = artifact.model_dump(mode="json")
        doc["schema_version"], doc["fit"]["seconds"] = version, 1.25
        (tmp_path / "old.json").write_text(json.dumps(doc))
        assert read_artifact(tmp_path / "old.json") == artifact


def test_schema_v3_validation_and_fitgrid_key_are_upgraded(artifact, tmp_path):
    v3 = artifact.model_dump(mode="json")
    v3["schema_version"] = 3
    v3["key"] = v3["key"].replace("-nfe3", "-fitgrid-nfe3")
    v3["validation"] = {"metrics": ["end_l2", "frechet_pixel"], "decided_by": ["end_l2", "frechet_pixel"],
                        "baseline": {"end_l2": 2.0, "frechet_pixel": 10.0},
                        "aligned": {"end_l2": 1.5, "frechet_pixel": 8.0}, "num_samples": 32, "reference_nfe": 100,
                        "seed": 1000000, "better": True}
    path = tmp_path / "v3.json"
    path.write_text(json.dumps(v3))
    upgraded = read_artifact(path)
    assert upgraded.key == artifact.key and upgraded.schema_version == 4
    v = upgraded.validation
    assert v.verdict == "better" and v.better and v.confidence is None and v.looks == [32]
    assert v.changes["end_l2"].change == pytest.approx(-0.25) and v.changes["end_l2"].interval is None
    assert v.reference.solver.startswith("ddim") and v.reference.nfe == 100 and v.reference.error_l2 is None
    assert "point estimate" in v.summary()
