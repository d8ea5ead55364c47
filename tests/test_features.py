"""FID and feature-space Fréchet distances with small stand-in TorchScript networks (no download)."""

import numpy as np
import pytest
import torch
from torch import nn

from dpm_align.aligner_core.data import load_data
from dpm_align.aligner_core.errors import UsageError
from dpm_align.aligner_core.evaluation.features import (FeatureNet, FeatureStats, _Precomputed, feature_reference, inception_score,
                                             kernel_distance, load_stats, save_stats)
from dpm_align.aligner_core.evaluation.metrics import frechet_distance, frechet_from_stats
from tests.conftest import assert_one_line, parse_json
from tests.test_cli import FAST, one_line_error


class StandInInception(nn.Module):
    """The calling convention of the FID Inception (inception-2015-12-05.pt): 3-channel images
    with values 0..255; ``return_features=True`` -> [N, F] pool features, else class
    probabilities, asked for without the output bias (the IS convention). Refuses anything else."""

    def forward(self, x: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        assert x.shape[1] == 3, "Inception takes RGB"
        assert float(x.min()) >= 0.0 and float(x.max()) <= 255.0 and float(x.max()) > 2.0, "values 0..255"
        pooled = nn.functional.adaptive_avg_pool2d(x / 255.0, 2).flatten(1)  # [N, 12]
        if return_features:
            return torch.cat([pooled, pooled.square()], dim=1)  # [N, 24]
        assert no_output_bias, "the Inception Score uses the softmax without the output bias"
        return torch.softmax(8.0 * pooled[:, :10], dim=1)  # [N, 10] class probabilities


class StandInFeatures(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x.flatten(1)[:, :6] * 2.0)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("nets")
    torch.jit.save(torch.jit.script(StandInInception()), root / "inception.pt")
    torch.jit.save(torch.jit.script(StandInFeatures()), root / "features.pt")
    return root / "inception.pt", root / "features.pt"


def test_frechet_from_stats_is_the_sample_formula():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 4, generator=gen, dtype=torch.float64), torch.randn(40, 4, generator=gen, dtype=torch.float64) + 1
    assert frechet_from_stats(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T)) == pytest.approx(frechet_distance(a, b))


def test_inception_gets_rgb_0_255_and_stats_round_trip(nets, tmp_path):
    net = FeatureNet(nets[0], "inception")
    gray = torch.linspace(-1, 1, 2 * 64).reshape(2, 1, 8, 8)
    features = net.features(gray)
    expected = StandInInception()(((gray + 1) * 127.5).round().expand(-1, 3, -1, -1), return_features=True)
    assert torch.allclose(features, expected.to(torch.float64))
    stats = FeatureStats.of(net.features(torch.rand(10, 1, 8, 8) * 2 - 1), net.id)
    path = save_stats(stats, tmp_path / "s.npz")
    back = load_stats(path, net.id)
    assert torch.equal(back.mu, stats.mu) and torch.equal(back.sigma, stats.sigma)
    assert back.num_samples == 10 and back.feature_net == net.id and net.metric == "fid"
    assert back.distance(stats) == pytest.approx(0.0, abs=1e-7)


def test_frechet_distance_equals_torchmetrics_fid_on_the_same_features():
    """Our FID formula against a maintained library's (torchmetrics), features given directly."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    gen = torch.Generator().manual_seed(3)
    real = torch.randn(300, 16, generator=gen, dtype=torch.float64)
    fake = 0.7 * torch.randn(200, 16, generator=gen, dtype=torch.float64) + 0.3
    library = FrechetInceptionDistance(feature=_Precomputed(16))
    library.update(real, real=True)
    library.update(fake, real=False)
    assert frechet_distance(fake, real) == pytest.approx(float(library.compute()), rel=1e-9)


def test_kernel_distance_is_the_unbiased_cubic_kernel_mmd_and_deterministic():
    gen = torch.Generator().manual_seed(4)
    real = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    fake = torch.randn(30, 5, generator=gen, dtype=torch.float64) + 0.5

    def mmd2(x, y):  # k(a, b) = (a.b / d + 1)^3, diagonal terms left out (unbiased)
        k = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731
        m = x.shape[0]
        kxx, kyy = k(x, x), k(y, y)
        return ((kxx.sum() - kxx.trace()) / (m * (m - 1)) + (kyy.sum() - kyy.trace()) / (m * (m - 1))
                - 2 * k(x, y).mean())

    whole = kernel_distance(real[:30], fake, subsets=1)  # one subset of all 30: no randomness
    assert whole.subset_size == 30 and whole.library.startswith("torchmetrics ")
    assert whole.mean == pytest.approx(float(mmd2(real[:30], fake)), rel=1e-9)
    assert kernel_distance(real, fake, seed=1, subsets=20) == kernel_distance(real, fake, seed=1, subsets=20)
    with pytest.raises(UsageError, match="at least 2 real and 2 generated"):
        kernel_distance(real, fake[:1])


def test_inception_score_is_exp_mean_kl_to_the_marginal():
    """IS per split = exp mean_x KL(p(y|x) || mean p), the splits a permutation drawn from the seed."""
    p = torch.softmax(torch.randn(40, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64), dim=1)
    torch.manual_seed(11)
    splits = p[torch.randperm(40)].chunk(4)
    by_hand = torch.tensor([float(torch.exp((q * (q.log() - q.mean(0, keepdim=True).log())).sum(1).mean()))
                            for q in splits], dtype=torch.float64)
    score = inception_score(p, seed=11, max_splits=4)
    assert score.splits == 4 and score.library.startswith("torchmetrics ")
    assert (score.mean, score.std) == pytest.approx((float(by_hand.mean()), float(by_hand.std())), rel=1e-9)
    assert inception_score(p, seed=3) == inception_score(p, seed=3)
    assert inception_score(p[:3]) is None  # under 4 samples: no two splits of 2


def test_pytorch_fid_style_stats_without_metadata_are_read(tmp_path):
    np.savez(tmp_path / "ref.npz", mu=np.zeros(3), sigma=np.eye(3))
    stats = load_stats(tmp_path / "ref.npz", "inception:0123")
    assert stats.feature_net is None and stats.num_samples == 0
    assert stats.distance(FeatureStats(torch.ones(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64), 5, None)) \
        == pytest.approx(3.0)


def test_eval_fid_with_data_then_saved_stats(cli, tiny_ckpt, tmp_path, nets):
    taus = tmp_path / "taus.json"
    assert cli("align", "--model", tiny_ckpt, "--nfe", "3", "--out", taus, *FAST).exit_code == 0
    common = ("eval", "--model", tiny_ckpt, "--taus", taus, "-n", "12", "--reference-nfe", "6", "--device", "cpu",
              "--quiet", "--json", "--inception-weights", nets[0])
    stats = tmp_path / "digits.npz"
    first = cli(*common, "--data", "digits", "--save-stats", stats)
    assert first.exit_code == 0, first.output
    report = parse_json(first)["features"]
    assert report["metric"] == "fid" and report["reference"] == "digits" and report["reference_samples"] == 1797
    assert report["kid"]["subset_size"] == 12 and report["kid"]["library"].startswith("torchmetrics")
    assert report["inception_score"]["splits"] == 6 and report["inception_score"]["baseline"] >= 1.0
    inception = FeatureNet(nets[0], "inception")
    digits = FeatureStats.of(inception.features(load_data("digits", (1, 8, 8))), inception.id)
    assert torch.allclose(load_stats(stats).mu, digits.mu)
    again = parse_json(cli(*common, "--reference-stats", stats))["features"]
    assert (again["baseline"], again["aligned"]) == (report["baseline"], report["aligned"])
    assert again["kid"] is None  # statistics alone: no real features for the KID
    text = cli(*common[:-3], "--inception-weights", nets[0], "--reference-stats", stats)
    assert "FID to" in text.stdout and "(1797 real, 12 generated)" in text.stdout and "KID" not in text.stdout
    with_data = cli(*common[:-3], "--inception-weights", nets[0], "--data", "digits").stdout
    assert "KID (torchmetrics" in with_data and "Inception Score (torchmetrics" in with_data
    other = parse_json(cli(*common[:-2], "--feature-net", nets[1], "--data", "digits"))["features"]
    assert other["metric"] == "fd_features" and other["network"].startswith("torchscript:")
    assert other["inception_score"] is None  # not an ImageNet classifier


@pytest.mark.parametrize("options,fragment", [
    (("--inception-weights", "INC", "--feature-net", "FEAT", "--data", "digits"), "pass one of them"),
    (("--data", "digits"), "also pass --inception-weights FILE or --feature-net FILE"),
    (("--inception-weights", "INC"), "pass --data (images) or --reference-stats FILE.npz, one of them"),
    (("--inception-weights", "missing.pt", "--data", "digits"), "does not exist; pass a local TorchScript file"),
    (("--feature-net", "NOTJIT", "--data", "digits"), "is not a loadable TorchScript network"),
    (("--inception-weights", "INC", "--reference-stats", "STATS", "--save-stats", "x.npz"), "--save-stats writes the statistics of --data"),
    (("--feature-net", "FEAT", "--reference-stats", "STATS"), "was made with the feature network inception:"),
    (("--inception-weights", "INC", "--reference-stats", "BAD"), "has no 'mu' and 'sigma' arrays"),
])
def test_feature_distance_errors(cli, tiny_ckpt, tmp_path, nets, options, fragment):
    taus = tmp_path / "taus.json"
    assert cli("align", "--model", tiny_ckpt, "--nfe", "3", "--out", taus, *FAST).exit_code == 0
    net = FeatureNet(nets[0], "inception")
    stats = save_stats(FeatureStats.of(net.features(torch.rand(4, 1, 8, 8)), net.id), tmp_path / "stats.npz")
    (tmp_path / "notjit.pt").write_bytes(b"not a network")
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 8, 8)))
    names = {"INC": nets[0], "FEAT": nets[1], "STATS": stats, "NOTJIT": tmp_path / "notjit.pt",
             "BAD": tmp_path / "bad.npz", "missing.pt": tmp_path / "missing.pt"}
    args = [str(names.get(o, o)) for o in options]
    one_line_error(cli("eval", "--model", tiny_ckpt, "--taus", taus, "-n", "4", "--reference-nfe", "3", "--quiet", *args),
                   2, fragment)


def test_stats_of_another_size_are_refused(nets, tmp_path):
    net = FeatureNet(nets[1], "torchscript")
    np.savez(tmp_path / "ref.npz", mu=np.zeros(3), sigma=np.eye(3))
    reference = feature_reference(net, (1, 8, 8), stats=tmp_path / "ref.npz")
    with pytest.raises(UsageError) as info:
        reference.scores(torch.zeros(4, 1, 8, 8))
    assert_one_line(info, "statistics have 3 features, the feature network gives 6")
