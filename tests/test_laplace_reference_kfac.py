"""The one-screen reference KFAC of chapter 06 gives KronLaplace's factors."""

import pytest
import torch
from oracles import DT
from torch import nn

from equilib.laplace import KronLaplace
from equilib.laplace.reference_kfac import reference_kfac


def cnn(c):
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, padding_mode="circular"),
        nn.Tanh(),
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Conv2d(4, 2, 3, padding=1, padding_mode="reflect"),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, c),
    ).to(DT)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_reference_kfac_equals_kron_laplace(likelihood):
    torch.manual_seed(0)
    c = 4 if likelihood == "classification" else 2
    model = cnn(c)
    X = torch.randn(5, 1, 8, 8, dtype=DT)
    y = torch.randint(0, c, (5,)) if likelihood == "classification" else torch.randn(5, c, dtype=DT)
    kron = KronLaplace(model, likelihood).fit([(X, y)])
    reference = reference_kfac(model, X, likelihood=likelihood)
    assert set(reference) == {"0.weight", "2.weight", "4.weight", "7.weight"}
    for name, (A, B) in reference.items():
        A_kron, B_kron = kron.factors[name]
        torch.testing.assert_close(A, A_kron[0], atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(B, B_kron[0], atol=1e-12, rtol=1e-10)


def test_reference_kfac_refuses_what_it_does_not_cover():
    model = nn.Sequential(
        nn.Conv2d(2, 2, 3, padding=1, groups=2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)
    ).to(DT)
    with pytest.raises(ValueError, match="groups=1"):
        reference_kfac(model, torch.randn(2, 2, 4, 4, dtype=DT))
