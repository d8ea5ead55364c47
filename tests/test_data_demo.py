"""Data inputs for the parallel strategy, and the embedded demo model."""

import numpy as np
import pytest
from PIL import Image

from dpm_align.aligner_core.api import SamplingPlan, generate
from dpm_align.aligner_core.data import load_data, shared_data_dir
from dpm_align.aligner_core.errors import UsageError
from dpm_align.aligner_core.models.loading import DEMO_DIR, load_model


def test_image_folder_and_npz_are_resized_to_the_model_shape(tmp_path):
    for k in range(3):
        Image.fromarray(np.full((16, 16, 3), 60 * k, np.uint8)).save(tmp_path / f"{k}.png")
    x = load_data(str(tmp_path), (1, 8, 8))
    assert x.shape == (3, 1, 8, 8) and float(x.min()) == -1.0 and float(x.max()) < 1.0
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 8, 8), np.uint8))
    assert load_data(str(tmp_path / "d.npz"), (3, 8, 8)).shape == (4, 3, 8, 8)


def test_builtin_digits():
    pytest.importorskip("sklearn")
    x = load_data("digits", (1, 8, 8))
    assert x.shape == (1797, 1, 8, 8) and -1.0 <= float(x.min()) < float(x.max()) <= 1.0


@pytest.mark.skipif(not (shared_data_dir() / "mnist-test").is_dir(), reason="../shared/data not present")
def test_builtin_mnist_from_shared_data():
    x = load_data("mnist", (1, 28, 28))
    assert x.shape == (10000, 1, 28, 28)


def test_bad_data_inputs(tmp_path):
    with pytest.raises(UsageError, match="neither a built-in dataset"):
        load_data("imagenet", (1, 8, 8))
    with pytest.raises(UsageError, match="no images"):
        load_data(str(tmp_path), (1, 8, 8))
    np.savez(tmp_path / "x.npz", labels=np.zeros(3))
    with pytest.raises(UsageError, match="holds no image array"):
        load_data(str(tmp_path / "x.npz"), (1, 8, 8))


def test_demo_model_is_small_and_loads_without_a_path():
    size = sum(p.stat().st_size for p in DEMO_DIR.iterdir())
    assert size <= 5 * 1024 * 1024
    model = load_model(None)
    assert model.info.format == "dpm-align-demo" and model.sample_shape == (1, 28, 28)
    assert model.info.sha256 == load_model(DEMO_DIR / "model.safetensors").info.sha256


def test_demo_samples_look_like_digits():
    """Digit images: mostly dark background, a minority of bright stroke pixels, few grey ones."""
    model = load_model(None)
    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", 20)
    (x,) = [b.samples for b in generate(model, plan, None, num_samples=16, batch_size=16, seed=0)]
    pixels = x.clamp(-1, 1).flatten()
    background = float((pixels < -0.8).float().mean())
    strokes = float((pixels > 0.5).float().mean())
    assert 0.65 < background < 0.95, background
    assert 0.05 < strokes < 0.3, strokes
    # the mean image of MNIST is a centred blob: the border is darker than the centre
    mean = x.mean(0)[0]
    assert float(mean[:4].mean()) < float(mean[10:18, 10:18].mean()) - 0.5
