import torch

from dpm_align.aligner_core.evaluation.metrics import frechet_distance, mean_l2


def test_frechet_distance_closed_forms():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=gen, dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    assert abs(frechet_distance(a, a)) < 1e-9
    assert abs(frechet_distance(a, a + shift) - float(shift.square().sum())) < 1e-9
    # b = 2a: ||mu_a - 2 mu_a||^2 + tr(S + 4S - 2 (4 S^2)^{1/2}) = ||mu_a||^2 + tr(S)
    b = 2 * a
    expected = float(a.mean(0).square().sum() + torch.cov(a.T).trace())
    assert abs(frechet_distance(a, b) - expected) < 1e-9


def test_frechet_distance_with_fewer_samples_than_dimensions_is_finite_and_non_negative():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(10, 1, 8, 8, generator=gen), torch.randn(10, 1, 8, 8, generator=gen)
    value = frechet_distance(a, b)
    assert value == value and value >= 0


def test_mean_l2():
    a = torch.zeros(2, 3)
    assert mean_l2(a, torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])) == 3.0
