"""Issue 11: property-based fuzzing (hypothesis, derandomized: the same cases every run).

Mutated artifacts (every field: wrong type, out of range, NaN/inf, missing and extra keys, list
lengths; truncated JSON; other schema versions) go to ``inspect --check --model`` and to
``sample --taus``; malformed options, model sidecar configs and data files go to the commands.
Whatever the input: exit 0, or one ``error:`` line with a documented exit code (1 or 2), never a
traceback or an internal error, and nothing written; ``sample`` accepts exactly the artifacts that
``inspect --check`` accepts. About 300 cases in all, bounded to well under 60 s on 2 cores.
"""

from __future__ import annotations

import copy
import io
import json
import math
import shutil
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpm_align.cli.main import run as console_script
from tests.conftest import GMM_TINY

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
SAMPLE = ("-n", "1", "--device", "cpu", "--quiet")


def run(*args) -> tuple[int, str]:
    """Exit code and stderr of the console script ``dpm-align args`` (its parsing errors too are one
    line); a failure must be one clean ``error:`` line."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.object(sys, "argv", ["dpm-align", *map(str, args)]), redirect_stdout(out), redirect_stderr(err):
        with pytest.raises(SystemExit) as exit_info:
            console_script()
    code, output = exit_info.value.code, out.getvalue() + err.getvalue()
    assert code in (0, 1, 2), (args, code, output)
    assert "Traceback" not in output and "internal error" not in output, output
    if code:
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()
    return code, err.getvalue()


def check_both(text: str) -> int:
    """``inspect --check --model`` and ``sample --taus`` on an artifact file holding ``text``:
    the same exit code, and sample's output only when both accept. Returns the code."""
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "taus.json", Path(tmp) / "samples"
        path.write_text(text)
        code, _ = run("inspect", path, "--check", "--model", GMM_TINY)
        sampled, _ = run("sample", "--model", GMM_TINY, "--taus", path, "--out", out, *SAMPLE)
        assert sampled == code, f"inspect --check exit {code}, sample exit {sampled}"
        assert out.exists() == (code == 0)
    return code


# ------------------------------------------------------------------ mutated artifacts
def paths(node, prefix=()) -> list[tuple]:
    """Every key path of a JSON document (containers and leaves)."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += paths(value, (*prefix, i))
    return found


def parent_of(doc, path: tuple):
    node = doc
    for key in path[:-1]:
        node = node[key]
    return node


BAD_VALUES = {
    "nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "huge": 1e300, "negative": -1e9, "zero": 0,
    "string": "x", "null": None, "bool": True, "list": [1.0], "dict": {"a": 1},
}
NON_FINITE = ("nan", "inf", "-inf")


@pytest.fixture(scope="module")
def base(gmm_artifact) -> dict:
    assert check_both(json.dumps(gmm_artifact)) == 0  # the base itself passes
    return gmm_artifact


@settings(max_examples=150, **SETTINGS)
@given(data=st.data())
def test_a_field_set_to_a_bad_value(base, data):
    path = data.draw(st.sampled_from([p for p in paths(base) if p]), label="path")
    kind = data.draw(st.sampled_from(sorted(BAD_VALUES)), label="value")
    doc = copy.deepcopy(base)
    original = parent_of(doc, path)[path[-1]]
    parent_of(doc, path)[path[-1]] = BAD_VALUES[kind]
    code = check_both(json.dumps(doc))
    if kind in NON_FINITE and isinstance(original, float) and math.isfinite(original):
        assert code != 0, f"{path} = {kind} was accepted"


@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_keys_removed_or_added_and_lists_resized(base, data):
    doc = copy.deepcopy(base)
    containers = [p for p in paths(doc) if isinstance(_at(doc, p), (dict, list))]
    path = data.draw(st.sampled_from(containers), label="container")
    node = _at(doc, path)
    op = data.draw(st.sampled_from(["remove", "add"]), label="op")
    if isinstance(node, dict) and op == "remove" and node:
        del node[data.draw(st.sampled_from(sorted(node)), label="key")]
    elif isinstance(node, dict):
        node[data.draw(st.text(min_size=1, max_size=8), label="key")] = 1.0
    elif op == "remove" and node:
        node.pop(data.draw(st.integers(0, len(node) - 1), label="index"))
    else:
        node.append(node[-1] if node else 1.0)
    check_both(json.dumps(doc))


def _at(doc, path: tuple):
    for key in path:
        doc = doc[key]
    return doc


@settings(max_examples=30, **SETTINGS)
@given(data=st.data())
def test_truncated_json(base, data):
    text = json.dumps(base, indent=2)
    assert check_both(text[: data.draw(st.integers(0, len(text) - 1), label="length")]) == 2


@settings(max_examples=20, **SETTINGS)
@given(version=st.one_of(st.integers(-3, 100).filter(lambda v: v not in (1, 2, 3, 4)), st.text(max_size=4),
                         st.none(), st.floats(allow_nan=True)))
def test_other_schema_versions(base, version):
    doc = dict(base, schema_version=version)
    assert check_both(json.dumps(doc)) == 2


@settings(max_examples=10, **SETTINGS)
@given(document=st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=3)))
def test_not_an_object(document):
    assert check_both(json.dumps(document)) == 2


# ------------------------------------------------------------------ malformed command lines
OPTION_VALUES = {
    "--nfe": st.one_of(st.integers(-5, 2000), st.sampled_from(["abc", "", "1e3", "4.5"])),
    "--sampler": st.sampled_from(["euler", "", "DDIM", "ddim ", "dpm-solver-2"]),
    "--trajectory": st.sampled_from(["cosine", "", "edm", "uniform"]),
    "--eta": st.sampled_from(["-1", "nan", "inf", "abc", "0.5"]),
    "--rho": st.sampled_from(["-1", "0", "nan", "abc", "3"]),
    "-n": st.sampled_from(["0", "-3", "abc", "1"]),
    "--batch-size": st.sampled_from(["0", "-1", "x", "2"]),
    "--format": st.sampled_from(["gif", "", "PNG", "npz"]),
    "--model": st.sampled_from(["gmm:dim=x", "gmm:foo", "gmm:dim=16,components=0", "gmm:dim=-1", "", "/no/such",
                                "nomodule:factory", GMM_TINY]),
    "--sample-shape": st.sampled_from(["1,8", "a,b,c", "0,0,0", "1,4,4"]),
    "--class-label": st.sampled_from(["-1", "3", "x"]),
    "--device": st.sampled_from(["tpu", "", "cuda:99", "cpu"]),
}


@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_malformed_sample_options(data):
    names = data.draw(st.lists(st.sampled_from(sorted(OPTION_VALUES)), min_size=1, max_size=3, unique=True), label="options")
    args = [item for name in names for item in (name, data.draw(OPTION_VALUES[name], label=name))]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "samples"
        model = [] if "--model" in names else ["--model", GMM_TINY]
        code, _ = run("sample", *model, "--no-taus", "-n", "1", "--quiet", "--out", out, *args)
        assert out.exists() == (code == 0)


@settings(max_examples=20, **SETTINGS)
@given(data=st.data())
def test_model_sidecar_configs(tiny_ckpt, data):
    """A checkpoint's JSON sidecar with one field broken: load errors are one line (exit 2)."""
    config = json.loads(tiny_ckpt.with_suffix(".json").read_text())
    path = data.draw(st.sampled_from([p for p in paths(config) if p]), label="path")
    parent_of(config, path)[path[-1]] = data.draw(st.sampled_from(list(BAD_VALUES.values())), label="value")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "tiny.safetensors"
        shutil.copy(tiny_ckpt, weights)
        weights.with_suffix(".json").write_text(json.dumps(config))
        out = Path(tmp) / "samples"
        code, _ = run("sample", "--model", weights, "--no-taus", "--nfe", "2", "-n", "1", "--quiet", "--device", "cpu",
                      "--out", out)
        assert out.exists() == (code == 0)


@settings(max_examples=15, **SETTINGS)
@given(content=st.one_of(st.binary(max_size=64), st.sampled_from([b"PK\x03\x04", b"\x93NUMPY", b""])),
       suffix=st.sampled_from([".npz", ".png", ""]))
def test_data_files(content, suffix):
    """A broken --data file for the parallel strategy: one line, exit 2, no artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / f"data{suffix}"
        data.write_bytes(content)
        out = Path(tmp) / "taus.json"
        code, _ = run("align", "--model", GMM_TINY, "--strategy", "parallel", "--data", data, "--no-cache", "--out", out,
                      "--iterations", "2", "--num-samples", "4", "--no-validate", "--device", "cpu", "--quiet")
        assert code == 2 and not out.exists()
