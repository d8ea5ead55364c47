"""Checkpoint forms beyond the project's own (issue 4): TorchScript, Python factories, state dict +
architecture, pickled whole modules. Every form of the same weights must give the same network
(eps output) and the same sha256 as the project checkpoint, and every error is one UsageError line."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dpm_align.aligner_core.errors import UsageError
from dpm_align.aligner_core.models.loading import (
    SidecarConfig,
    _is_torchscript,
    load_model,
    parse_sample_shape,
)
from dpm_align.aligner_core.models.nets import TinyUNet
from dpm_align.aligner_core.sampling.schedule import ScheduleSpec

ARCH_CONFIG = {"in_channels": 1, "channels": [8, 16, 16], "groups": 4}
SHAPE = (1, 8, 8)


def one_line(excinfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny network in the project's checkpoint format, a copy of the same network in memory,
    and a fixed input."""
    from tests.conftest import make_tiny_checkpoint

    weights = make_tiny_checkpoint(tmp_path_factory.mktemp("ref"))
    net = TinyUNet(1, (8, 16, 16), groups=4)
    net.load_state_dict(load_file(str(weights)))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, *SHAPE, generator=gen)
    t = torch.tensor([3.0, 500.5, 999.0])
    loaded = load_model(weights)
    return {"weights": weights, "net": net.eval(), "x": x, "t": t, "model": loaded, "eps": loaded.eps(x, t)}


def same_network(loaded, reference, exact: bool = True) -> None:
    out = loaded.eps(reference["x"], reference["t"])
    if exact:
        assert torch.equal(out, reference["eps"])
    else:
        torch.testing.assert_close(out, reference["eps"], rtol=1e-5, atol=1e-6)


def write_sidecar(path: Path, **fields) -> None:
    path.write_text(SidecarConfig(**fields).model_dump_json(), encoding="utf-8")


@pytest.fixture(scope="module")
def scripted(reference, tmp_path_factory) -> Path:
    """The reference network as a TorchScript file (scripted once per module: scripting is slow)."""
    path = tmp_path_factory.mktemp("jit") / "scripted.pt"
    torch.jit.save(torch.jit.script(reference["net"]), str(path))
    return path


@pytest.fixture
def pymodule(tmp_path, monkeypatch, request):
    """pymodule(name, source) -> an importable module in tmp_path (removed from sys.modules after)."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        request.addfinalizer(lambda: sys.modules.pop(name, None))
        return name

    return write


# --- TorchScript -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how,suffix", [("script", ".pt"), ("trace", ".ts")])
def test_torchscript_with_sidecar_loads_the_same_network(reference, scripted, tmp_path, how, suffix):
    path = tmp_path / f"net{suffix}"
    if how == "script":
        shutil.copy(scripted, path)
    else:
        traced = torch.jit.trace(reference["net"], (reference["x"], reference["t"]), check_trace=False)
        torch.jit.save(traced, str(path))
    write_sidecar(tmp_path / "net.json", schedule=ScheduleSpec(), sample_shape=SHAPE)
    assert _is_torchscript(path)
    loaded = load_model(path)
    assert loaded.info.format == "torchscript" and loaded.sample_shape == SHAPE
    assert loaded.info.prediction_type == "epsilon" and loaded.info.schedule == ScheduleSpec()
    assert loaded.info.source == str(path.resolve())
    same_network(loaded, reference, exact=False)
    # script and trace both keep the module's parameter names, so the key is the checkpoint's
    assert loaded.info.sha256 == reference["model"].info.sha256


def test_torchscript_options_without_sidecar_and_options_beat_the_sidecar(reference, scripted, tmp_path):
    path = shutil.copy(scripted, tmp_path / "net.pt")
    loaded = load_model(path, sample_shape="1,8,8", schedule="linear")
    assert loaded.info.format == "torchscript" and loaded.sample_shape == SHAPE
    same_network(loaded, reference, exact=False)

    write_sidecar(tmp_path / "net.json", schedule="linear", prediction_type="epsilon", sample_shape=SHAPE)
    assert load_model(path).info.schedule == ScheduleSpec()  # a schedule name is accepted in the sidecar
    over = load_model(path, sample_shape=(1, 16, 16), schedule="scaled_linear", prediction_type="v_prediction")
    assert over.sample_shape == (1, 16, 16) and over.info.prediction_type == "v_prediction"
    assert over.info.schedule.beta_schedule == "scaled_linear"


def test_torchscript_beside_a_project_checkpoint_config_uses_it(reference, scripted, tmp_path):
    shutil.copy(reference["weights"].with_suffix(".json"), tmp_path / "tiny.json")
    shutil.copy(scripted, tmp_path / "tiny.ts")
    loaded = load_model(tmp_path / "tiny.ts")
    assert loaded.info.format == "torchscript" and loaded.sample_shape == SHAPE
    assert loaded.info.schedule == reference["model"].info.schedule


@pytest.mark.parametrize(
    "sidecar,options,fragments",
    [
        (None, {}, ("does not say its sample shape and noise schedule", "--sample-shape C,H,W", "--schedule linear",
                    '"sample_shape" and "schedule"', "net.json")),
        (None, {"sample_shape": SHAPE}, ("does not say its noise schedule", "--schedule", "net.json")),
        ({"schedule": {"beta_schedule": "linear"}}, {}, ("does not say its sample shape", "--sample-shape C,H,W")),
        ({"sample_shape": [1, 8, 8], "extra": 1}, {}, ("sidecar config", "is invalid (extra")),
        ({"sample_shape": [1, 0, 8]}, {}, ("is invalid (sample_shape.1",)),
    ],
)
def test_torchscript_missing_or_bad_settings(scripted, tmp_path, sidecar, options, fragments):
    path = shutil.copy(scripted, tmp_path / "net.pt")
    if sidecar is not None:
        (tmp_path / "net.json").write_text(json.dumps(sidecar))
    with pytest.raises(UsageError) as excinfo:
        load_model(path, **options)
    one_line(excinfo, *fragments)


def test_torchscript_detection(reference, tmp_path):
    net = reference["net"]
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    torch.save(net, tmp_path / "whole.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip at all")
    assert not any(_is_torchscript(tmp_path / name) for name in ("sd.pt", "whole.pt", "junk.pt"))
    assert not _is_torchscript(reference["weights"]) and not _is_torchscript(tmp_path)
    with zipfile.ZipFile(tmp_path / "fake.ts", "w") as archive:  # looks like TorchScript, is not
        archive.writestr("fake/code/__torch__.py", "garbage")
    assert _is_torchscript(tmp_path / "fake.ts")
    with pytest.raises(UsageError) as excinfo:
        load_model(tmp_path / "fake.ts", sample_shape=SHAPE, schedule="linear")
    one_line(excinfo, "cannot load TorchScript model", "re-export it with torch.jit.save")


# --- Python factory --------------------------------------------------------------------------------

FACTORY = """
    from safetensors.torch import load_file
    from dpm_align.aligner_core.models.nets import TinyUNet

    NOT_CALLABLE = 3

    def build():
        net = TinyUNet(1, (8, 16, 16), groups=4)
        net.load_state_dict(load_file({weights!r}))
        return net

    def needs_args(size):
        return TinyUNet(1, (size, 16, 16), groups=4)

    def broken():
        raise ValueError("boom")

    def not_a_module():
        return 42

    class Holder:
        build = staticmethod(build)
"""


@pytest.fixture
def factory(pymodule, reference):
    return pymodule("ckpt_forms_factory", FACTORY.format(weights=str(reference["weights"])))


def test_factory_loads_the_same_network(factory, reference):
    loaded = load_model(f"{factory}:build", sample_shape=SHAPE)
    assert loaded.info.format == "python-factory" and loaded.sample_shape == SHAPE
    assert loaded.info.source == f"{factory}:build"
    assert loaded.info.schedule == ScheduleSpec() and loaded.info.prediction_type == "epsilon"  # defaults
    same_network(loaded, reference)
    assert loaded.info.sha256 == reference["model"].info.sha256
    nested = load_model(f"{factory}:Holder.build", sample_shape="1,8,8", schedule="scaled_linear",
                        prediction_type="v_prediction")
    assert nested.info.schedule.beta_schedule == "scaled_linear" and nested.info.prediction_type == "v_prediction"
    assert nested.info.sha256 == loaded.info.sha256


@pytest.mark.parametrize(
    "target,options,fragments",
    [
        ("{m}:build", {}, ("--model {m}:build does not say its sample shape", "--sample-shape C,H,W")),
        ("no_such_module_xyz:build", {"sample_shape": SHAPE},
         ("cannot import no_such_module_xyz", "No module named", "PYTHONPATH")),
        ("{m}:missing", {"sample_shape": SHAPE}, ("has no attribute 'missing'", "check the name after ':'")),
        ("{m}:NOT_CALLABLE", {"sample_shape": SHAPE}, ("NOT_CALLABLE is a int, not callable",)),
        ("{m}:broken", {"sample_shape": SHAPE}, ("calling broken() failed (ValueError: boom)", "no arguments")),
        ("{m}:needs_args", {"sample_shape": SHAPE}, ("calling needs_args() failed (TypeError",)),
        ("{m}:not_a_module", {"sample_shape": SHAPE}, ("returned a int, not a torch.nn.Module", "net(x, t)")),
        ("{m}:build", {"sample_shape": (1, 8)}, ("--sample-shape (1, 8) is not C,H,W",)),
    ],
)
def test_factory_errors(factory, target, options, fragments):
    with pytest.raises(UsageError) as excinfo:
        load_model(target.format(m=factory), **options)
    one_line(excinfo, *(f.format(m=factory) for f in fragments))


def test_broken_factory_module_import(pymodule):
    name = pymodule("ckpt_forms_broken", "raise RuntimeError('import time failure')\n")
    with pytest.raises(UsageError) as excinfo:
        load_model(f"{name}:build", sample_shape=SHAPE)
    one_line(excinfo, f"importing {name} failed (RuntimeError: import time failure)", "fix that module")


def test_colon_strings_that_are_not_factories(tmp_path, monkeypatch):
    with pytest.raises(UsageError) as excinfo:  # not package.module:function: a path that does not exist
        load_model("some/dir:weights.pt")
    one_line(excinfo, "does not exist", "package.module:function")
    monkeypatch.chdir(tmp_path)  # an existing path wins over the factory reading
    Path("pkg.mod:fn").mkdir()
    with pytest.raises(UsageError) as excinfo:
        load_model("pkg.mod:fn")
    one_line(excinfo, "is not a diffusers model directory")


# --- state dict + architecture ---------------------------------------------------------------------

ARCH = """
    from torch import nn
    from dpm_align.aligner_core.models.nets import TinyUNet

    class MyUNet(TinyUNet):
        pass

    def not_a_module(**kwargs):
        return kwargs

    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(2, 2)
"""


@pytest.fixture
def arch_module(pymodule):
    return pymodule("ckpt_forms_arch", ARCH)


@pytest.fixture
def arch_config(tmp_path) -> Path:
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(ARCH_CONFIG))
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth", ".bin"])
def test_state_dict_with_arch_loads_the_same_network(arch_module, arch_config, reference, tmp_path, suffix):
    weights = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in reference["net"].state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(weights))
    else:
        torch.save(state, weights)
    loaded = load_model(weights, arch=f"{arch_module}:MyUNet", arch_config=str(arch_config), sample_shape=SHAPE)
    assert loaded.info.format == "state-dict+arch" and loaded.sample_shape == SHAPE
    assert loaded.info.schedule == ScheduleSpec() and loaded.info.prediction_type == "epsilon"
    assert loaded.info.source == str(weights.resolve())
    same_network(loaded, reference)
    assert loaded.info.sha256 == reference["model"].info.sha256
    # the project checkpoint's own weights file also loads this way (its sidecar is not consulted)
    direct = load_model(reference["weights"], arch="dpm_align.aligner_core.models.nets:TinyUNet", arch_config=arch_config,
                        sample_shape=SHAPE, schedule="squaredcos_cap_v2")
    assert direct.info.sha256 == loaded.info.sha256 and direct.info.schedule.beta_schedule == "squaredcos_cap_v2"


def test_state_dict_with_arch_errors(arch_module, arch_config, reference, tmp_path):
    weights = reference["weights"]
    arch = f"{arch_module}:MyUNet"

    def fails(*fragments, path=weights, **options):
        options = {"arch": arch, "arch_config": arch_config, "sample_shape": SHAPE, **options}
        with pytest.raises(UsageError) as excinfo:
            load_model(path, **options)
        return one_line(excinfo, *fragments)

    fails("--arch-config was given without --arch", arch=None)
    fails("no --model was given", "point --model at the weights file", path=None)
    fails(f"{tmp_path / 'nope.pt'} does not exist", path=tmp_path / "nope.pt")
    fails("is not a .safetensors/.pt/.pth/.bin file", path=weights.with_suffix(".json"))
    fails("does not say its sample shape", "--sample-shape C,H,W", sample_shape=None)
    fails("--arch-config", "does not exist", arch_config=tmp_path / "none.json")
    fails("is not package.module:name", arch="MyUNet")
    fails("has no attribute 'Nope'", arch=f"{arch_module}:Nope")
    fails("built a dict, not a torch.nn.Module", arch=f"{arch_module}:not_a_module")
    (tmp_path / "bad.json").write_text(json.dumps({**ARCH_CONFIG, "depth": 3}))
    fails("cannot build it from --arch-config", "unexpected keyword argument 'depth'", arch_config=tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    fails("must hold a JSON object", arch_config=tmp_path / "list.json")
    (tmp_path / "wide.json").write_text(json.dumps({**ARCH_CONFIG, "channels": [8, 16, 32]}))
    message = fails("do not fit --arch", "size mismatch for", "check --arch and --arch-config",
                    arch_config=tmp_path / "wide.json")
    assert len(message) < 600
    fails("do not fit --arch", "Missing key(s)", "Unexpected key(s)", arch=f"{arch_module}:Other", arch_config=None)


class PickledExtra:
    """An arbitrary Python object: weights_only loading refuses a file holding one."""


def test_arch_with_a_pickled_state_dict_needs_trust(arch_module, arch_config, reference, tmp_path):
    torch.save({"state_dict": reference["net"].state_dict(), "extra": PickledExtra()}, tmp_path / "w.pt")
    options = {"arch": f"{arch_module}:MyUNet", "arch_config": arch_config, "sample_shape": SHAPE}
    with pytest.raises(UsageError) as excinfo:
        load_model(tmp_path / "w.pt", **options)
    one_line(excinfo, "pass --trust-pickle only if you trust")


# --- pickled whole modules -------------------------------------------------------------------------


def test_pickled_module_needs_trust_then_loads(reference, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(reference["net"], path)
    with pytest.raises(UsageError) as excinfo:  # no sidecar, options given: still refused
        load_model(path, sample_shape=SHAPE, schedule="linear")
    one_line(excinfo, "weights_only loading refuses", "pass --trust-pickle only if you trust its source")
    write_sidecar(tmp_path / "whole.json", schedule=ScheduleSpec(), sample_shape=SHAPE)
    with pytest.raises(UsageError) as excinfo:  # with the sidecar too
        load_model(path)
    one_line(excinfo, "--trust-pickle")

    loaded = load_model(path, trust_pickle=True)
    assert loaded.info.format == "pickled-module" and loaded.sample_shape == SHAPE
    same_network(loaded, reference)
    assert loaded.info.sha256 == reference["model"].info.sha256
    assert load_model(path, trust_pickle=True, prediction_type="sample").info.prediction_type == "sample"


def test_pickled_module_without_settings(reference, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(reference["net"], path)
    with pytest.raises(UsageError) as excinfo:
        load_model(path, trust_pickle=True)
    one_line(excinfo, "pickled model", "does not say its sample shape and noise schedule", "model.json")
    (tmp_path / "config.json").write_text(json.dumps({"sample_shape": [1, 8, 8], "schedule": "linear"}))
    assert load_model(path, trust_pickle=True).sample_shape == SHAPE  # model.* also reads config.json


def test_weights_without_an_architecture_say_how_to_fix(reference, tmp_path):
    state = reference["net"].state_dict()
    torch.save(state, tmp_path / "sd.pt")
    for options in ({}, {"trust_pickle": True}):
        with pytest.raises(UsageError) as excinfo:
            load_model(tmp_path / "sd.pt", **options)
        one_line(excinfo, "needs its config", "sd.json", "--arch package.module:Class")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "sd2.safetensors"))
    write_sidecar(tmp_path / "sd2.json", sample_shape=SHAPE)
    with pytest.raises(UsageError) as excinfo:
        load_model(tmp_path / "sd2.safetensors")
    one_line(excinfo, "holds weights only", "names no architecture", "--arch package.module:Class")


# --- one key for one set of weights; existing forms keep working -----------------------------------


def test_every_form_of_the_same_weights_has_one_key(reference, scripted, tmp_path, pymodule, arch_config):
    net = reference["net"]
    shutil.copy(scripted, tmp_path / "a.ts")
    torch.save(net, tmp_path / "b.pt")
    torch.save(net.state_dict(), tmp_path / "c.pt")
    name = pymodule("ckpt_forms_all", FACTORY.format(weights=str(reference["weights"])))
    shape = {"sample_shape": SHAPE}
    models = [
        load_model(tmp_path / "a.ts", schedule="linear", **shape),
        load_model(tmp_path / "b.pt", schedule="linear", trust_pickle=True, **shape),
        load_model(tmp_path / "c.pt", arch="dpm_align.aligner_core.models.nets:TinyUNet", arch_config=arch_config, **shape),
        load_model(f"{name}:build", **shape),
    ]
    assert [m.info.format for m in models] == ["torchscript", "pickled-module", "state-dict+arch", "python-factory"]
    assert {m.info.sha256 for m in models} == {reference["model"].info.sha256}
    assert {m.info.source for m in models} == {str((tmp_path / n).resolve()) for n in ("a.ts", "b.pt", "c.pt")} | {
        f"{name}:build"}


def test_sample_shape_option_on_existing_forms(reference):
    assert reference["model"].info.format == "dpm-align-checkpoint" and reference["model"].sample_shape == SHAPE
    assert load_model(reference["weights"], sample_shape=(1, 16, 16)).sample_shape == (1, 16, 16)
    assert load_model("gmm:dim=16", sample_shape="1,4,4").sample_shape == (1, 4, 4)
    with pytest.raises(UsageError) as excinfo:
        load_model("gmm:dim=16", sample_shape=(1, 8, 2))
    one_line(excinfo, "has sample shape 1,4,4", "drop --sample-shape")


@pytest.mark.parametrize("value", ["1,8", "1,0,8", "a,b,c", "1,8,8,8", (1.5, 8, 8), (True, 8, 8), 8])
def test_bad_sample_shapes(value):
    with pytest.raises(UsageError) as excinfo:
        parse_sample_shape(value)
    one_line(excinfo, "is not C,H,W", "three positive integers")


def test_good_sample_shapes():
    assert parse_sample_shape(" 3, 32,32") == (3, 32, 32)
    assert parse_sample_shape([1, 8, 8]) == (1, 8, 8)
    assert parse_sample_shape(None) is None
