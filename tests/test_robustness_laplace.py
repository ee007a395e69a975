"""Laplace fits refuse labels and targets that would change what the evidence means."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equilib.laplace import DiagLaplace, FullLaplace, KronLaplace


def _classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def _batches(y):
    X = torch.randn(len(y), 4, generator=torch.Generator().manual_seed(0))
    return [(X[:4], y[:4]), (X[4:], y[4:])]


@pytest.mark.parametrize("cls", [KronLaplace, DiagLaplace, FullLaplace])
@pytest.mark.parametrize("bad", [-100, 3, 18])
def test_labels_outside_the_classes_are_refused(cls, bad):
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    y[6] = bad  # in the second batch: the check covers every batch
    with pytest.raises(ValueError, match=rf"\[0, 2\].*{bad}"):
        cls(_classifier(), "classification").fit(_batches(y))
    y[6] = 2
    la = cls(_classifier(), "classification").fit(_batches(y))
    assert torch.isfinite(la.log_marginal_likelihood())


@pytest.mark.parametrize("cls", [KronLaplace, DiagLaplace, FullLaplace])
def test_regression_targets_with_nan_are_refused(cls):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 1))
    X = torch.randn(8, 4)
    y = torch.randn(8, 1)
    y[5] = float("nan")
    with pytest.raises(ValueError, match="regression targets contain NaN"):
        cls(model, "regression").fit([(X[:4], y[:4]), (X[4:], y[4:])])
    y[5] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        cls(model, "regression").fit([(X, y)])
