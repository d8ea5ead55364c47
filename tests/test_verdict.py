"""The verdict: paired intervals, the decision rule, the looks, and its error rates on the exact mixture."""

import math

import pytest
import torch

from dpm_align.aligner_core.evaluation.calibration import Truth, perturbed_taus, verdict_rates
from dpm_align.aligner_core.models.loading import load_model
from dpm_align.aligner_core.sampling.trajectory import make_grid
from dpm_align.aligner_core.evaluation.validation import (MIN_IMPROVEMENT, NON_INFERIORITY, RUN_OFF_RMS, ValidationSettings,
                                                          decide, validate)
from dpm_align.aligner_core.evaluation.verdict import Change, kernel_change, mean_ratio_change, z_value


def test_ratio_interval_golden_values():
    # baseline constant 1, aligned 1,2,1,2: ratio 1.5, Var(log R) = (1/3) / 1.5^2 / 4
    c = mean_ratio_change(torch.ones(4), torch.tensor([1.0, 2.0, 1.0, 2.0]), 0.95)
    se = math.sqrt((1 / 3) / 2.25 / 4)
    assert c.change == pytest.approx(0.5)
    assert c.low == pytest.approx(math.exp(math.log(1.5) - 1.959964 * se) - 1, rel=1e-6)
    assert c.high == pytest.approx(math.exp(math.log(1.5) + 1.959964 * se) - 1, rel=1e-6)
    assert c.verdict == "worse" and z_value(0.95) == pytest.approx(1.959964, rel=1e-6)


def test_ratio_interval_uses_the_pairing():
    base = torch.tensor([1.0, 5.0, 2.0, 9.0, 3.0])
    c = mean_ratio_change(base, 0.9 * base, 0.99)  # every sample exactly 10% better: no doubt at all
    assert c.change == pytest.approx(-0.1) and c.low == pytest.approx(-0.1) and c.verdict == "better"
    same = mean_ratio_change(base, base.clone(), 0.99)
    assert same.change == 0 and same.verdict == "inconclusive"
    assert mean_ratio_change(torch.zeros(3), torch.ones(3), 0.95).verdict == "inconclusive"


def test_kernel_distance_sees_a_shift_and_not_a_relabelling():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(200, 8, generator=g, dtype=torch.float64)
    near = ref + 0.05 * torch.randn(200, 8, generator=g, dtype=torch.float64)
    off = ref + 1.0
    c = kernel_change(off, near, ref, 0.95)
    assert c.baseline > 0 and c.aligned < c.baseline and c.high < 0 and c.verdict == "better"
    assert kernel_change(near, off, ref, 0.95).verdict == "worse"
    assert kernel_change(off, off.clone(), ref, 0.95).verdict == "inconclusive"


def test_kernel_distance_is_unbiased_for_equal_distributions():
    g = torch.Generator().manual_seed(1)
    values = []
    for _ in range(40):
        ref, a, b = (torch.randn(64, 4, generator=g, dtype=torch.float64) for _ in range(3))
        values.append(kernel_change(a, b, ref, 0.95).baseline)
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    assert abs(mean) < 3 * sd / len(values) ** 0.5  # the unbiased MMD^2 averages to 0


def test_decision_rule():
    better = Change(1, 0.8, -0.2, -0.3, -0.1, "better")
    worse = Change(1, 1.2, 0.2, 0.1, 0.3, "worse")
    unsure = Change(1, 0.99, -0.01, -0.1, 0.08, "inconclusive")
    assert decide({"end_l2": better, "kernel": unsure}, ["end_l2", "kernel"]) == "better"
    assert decide({"end_l2": better, "kernel": worse}, ["end_l2", "kernel"]) == "worse"
    assert decide({"end_l2": unsure, "kernel": better}, ["end_l2", "kernel"]) == "inconclusive"
    assert decide({"end_l2": worse, "kernel": better}, ["kernel"]) == "better"
    # the kernel not shown within the non-inferiority margin: look again, do not accept
    wide = Change(1, 0.6, -0.4, -1.38, 0.61, "inconclusive")
    assert decide({"end_l2": better, "kernel": wide}, ["end_l2", "kernel"]) == "inconclusive"
    edge = Change(1, 1.0, 0.0, -0.2, NON_INFERIORITY, "inconclusive")
    assert decide({"end_l2": better, "kernel": edge}, ["end_l2", "kernel"]) == "better"
    # shown better, but not by the 1% improvement margin: look again
    slight = Change(1, 0.995, -0.005, -0.009, MIN_IMPROVEMENT * -0.5, "better")
    assert decide({"end_l2": slight, "kernel": edge}, ["end_l2", "kernel"]) == "inconclusive"
    enough = Change(1, 0.98, -0.02, -0.03, -MIN_IMPROVEMENT, "better")
    assert decide({"end_l2": enough, "kernel": edge}, ["end_l2", "kernel"]) == "better"


def test_looks_double_up_to_the_maximum():
    assert ValidationSettings(128, 512).looks() == [128, 256, 512]
    assert ValidationSettings(100, 300).looks() == [100, 200, 300]
    assert ValidationSettings(64, 64).looks() == [64] and ValidationSettings(600, 512).looks() == [600]


def test_the_first_look_spends_a_tenth_of_the_error_rate():
    """Bonferroni over the looks: the first (smallest) look's interval is at 99.5%, the later ones
    share the other 4.5%; one look spends all of it; equal shares are first_look_share = 1 / looks."""
    default = ValidationSettings()
    assert default.looks() == [64, 128, 256, 512]
    assert default.levels() == pytest.approx([0.995, 0.985, 0.985, 0.985])
    assert sum(1 - level for level in default.levels()) == pytest.approx(1 - default.confidence)
    assert ValidationSettings(64, 64).levels() == [0.95]
    assert ValidationSettings(128, 512, first_look_share=1 / 3).levels() == pytest.approx([1 - 0.05 / 3] * 3)
    with pytest.raises(ValueError, match="first_look_share must be in"):
        ValidationSettings(first_look_share=1.0)


# ---------------------------------------------------------------- calibration on the exact mixture
def test_verdict_error_rates_on_the_exact_mixture():
    """24 perturbed tau sets on the uniform 5-step grid, each judged twice on fresh held-out seeds
    (64 -> 128 -> 256 samples), against the truth from 2048 samples (calibration.py): nothing whose
    end-point error is truly not lower is accepted (the rule's bound: 2.5% per trial), nothing
    truly better is called worse, and what is clearly better (end L2 -5% or more, kernel not
    higher) is accepted. (On finer grids the kernel guard misses some truly higher kernel
    distances: benchmarks/verdict_calibration.py, docs/RESULTS.md.)"""
    model = load_model("gmm:dim=16,components=4,seed=3")
    grid = make_grid("uniform", 5, model.eps.schedule)
    family = perturbed_taus(grid, model.eps.schedule, directions=8, scales=(0.01, 0.03, 0.1))
    rates = verdict_rates(model.eps, grid, model.sample_shape, family, Truth(model.eps, grid, model.sample_shape),
                          ValidationSettings(64, 256, 60), repeats=2)
    assert rates.null_trials >= 30 and rates.false_accepts == 0
    assert rates.false_rejects == 0
    assert rates.clear_trials >= 2 and rates.clear_accepts == rates.clear_trials


def test_pixel_models_are_judged_on_the_images_users_receive(tiny_ckpt):
    """Pixel models carry data_range [-1, 1] and the verdict compares clamped end points (as every
    saved image is); a mixture's values are compared as they are."""
    pixel = load_model(tiny_ckpt).eps
    assert pixel.data_range == (-1.0, 1.0) and load_model("gmm:dim=4,components=2,seed=0").eps.data_range is None
    x = torch.tensor([-3.0, -0.5, 0.25, 14.0])
    assert pixel.delivered(x).tolist() == [-1.0, -0.5, 0.25, 1.0]
    model = load_model(tiny_ckpt)
    model.eps.data_range = (-0.01, 0.01)  # so narrow that every end point lands on its edges
    grid = make_grid("uniform", 3, model.eps.schedule)
    v = validate(model.eps, grid, "ddim", 0.0, [t - 5 for t in grid[:-1]], model.sample_shape,
                 ValidationSettings(8, 8, 6), batch_size=8)
    size = math.prod(model.sample_shape)
    assert v.data_range == (-0.01, 0.01) and "images clamped to [-0.01, 0.01]" in v.summary()
    assert v.baseline["end_l2"] <= 0.02 * math.sqrt(size) + 1e-9  # distances between clamped points only


def test_the_verdict_says_when_the_models_own_samples_run_off(tiny_ckpt):
    """The reference's RMS before clamping is recorded; over RUN_OFF_RMS times the data range's
    magnitude, run_off() names it and the fix. A random eps network runs off (RMS ~160); read as
    v-prediction, the same weights stay near the data (RMS ~1.1); a mixture has no data range."""
    settings = ValidationSettings(8, 8, 6)

    def judged(model):
        grid = make_grid("uniform", 3, model.eps.schedule)
        return validate(model.eps, grid, "ddim", 0.0, [t - 5 for t in grid[:-1]], model.sample_shape, settings,
                        batch_size=8)

    ran_off = judged(load_model(tiny_ckpt))
    assert ran_off.reference_rms > 50
    message = ran_off.run_off()
    assert message.startswith("the model's own samples run off its data range (RMS ") and "--prediction-type" in message
    sane = judged(load_model(tiny_ckpt, prediction_type="v_prediction"))
    assert 0.5 < sane.reference_rms < 2 and sane.run_off() is None
    assert sane.model_copy(update={"reference_rms": RUN_OFF_RMS}).run_off() is None  # the edge: not over
    assert sane.model_copy(update={"reference_rms": RUN_OFF_RMS * 1.01}).run_off() is not None
    assert sane.model_copy(update={"reference_rms": None}).run_off() is None  # artifacts from before the field
    mixture = judged(load_model("gmm:dim=4,components=2,seed=0"))
    assert mixture.data_range is None and mixture.run_off() is None
