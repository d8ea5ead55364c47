"""Slow regression checks of docs/RESULTS.md rows (not in the default run: `pytest -m slow`)."""

import pytest

from dpm_align.aligner_core.api import SamplingPlan, ValidationSettings, align
from dpm_align.aligner_core.fit import resolve_config
from dpm_align.aligner_core.loading import load_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("nfe", [5, 10])
def test_default_preset_helps_the_demo_model_with_ddim(nfe):
    model = load_model(None)
    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", nfe)
    artifact = align(model, plan, resolve_config("default"), validation=ValidationSettings(64, 200))
    v = artifact.validation
    assert v.better
    assert v.aligned["end_l2"] < 0.9 * v.baseline["end_l2"]
    assert v.aligned["frechet_pixel"] < 0.8 * v.baseline["frechet_pixel"]
