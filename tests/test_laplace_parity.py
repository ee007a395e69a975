"""The same log marginal likelihood as laplace-torch, on an MLP and a small CNN, with the full,
diagonal and Kronecker GGN, for classification and regression.

Optional: skipped where laplace-torch is not installed (it is no dependency of equilib; install
it with ``pip install torch==<the pinned version> laplace-torch``). Compared with two of its
backends: ASDL (``AsdlGGN``) and the default, Curvlinops (``CurvlinopsGGN``), whose dense GGN
agrees to about 1e-8 relative (the others to rounding). BackPack's KFAC of a convolution uses
another convention for the factors and is not compared.
"""

import copy
import warnings

import pytest
import torch
from oracles import DT
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from equilib.laplace import Laplace

laplace = pytest.importorskip("laplace")
curvature = pytest.importorskip("laplace.curvature")


def mlp(c):
    return nn.Sequential(
        nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, c)
    ).to(DT)


def cnn(c):
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, c),
    ).to(DT)


def problem(kind, likelihood, n=16):
    c = 3 if likelihood == "classification" else 2
    torch.manual_seed(0)
    model = mlp(c) if kind == "mlp" else cnn(c)
    g = torch.Generator().manual_seed(1)
    shape = (n, 5) if kind == "mlp" else (n, 1, 8, 8)
    X = torch.randn(*shape, generator=g, dtype=DT)
    if likelihood == "classification":
        y = torch.randint(0, c, (n,), generator=g)
    else:
        y = torch.randn(n, c, generator=g, dtype=DT)
    return model, DataLoader(TensorDataset(X, y), batch_size=4)


@pytest.mark.parametrize("backend,rtol", [("AsdlGGN", 1e-12), ("CurvlinopsGGN", 1e-7)])
@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_log_marginal_likelihood_equals_laplace_torch(kind, likelihood, structure, backend, rtol):
    model, loader = problem(kind, likelihood)
    sigma = 0.7 if likelihood == "regression" else 1.0
    n_tensors = len(list(model.parameters()))
    delta = torch.linspace(0.5, 2.0, n_tensors, dtype=DT)  # one precision per tensor
    ours = Laplace(
        model, likelihood, subset_of_weights="all", hessian_structure=structure, sigma_noise=sigma
    ).fit(loader)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = laplace.Laplace(
            copy.deepcopy(model),
            likelihood,
            subset_of_weights="all",
            hessian_structure=structure,
            sigma_noise=sigma,
            backend=getattr(curvature, backend),
        )
        theirs.fit(loader)
        expected = theirs.log_marginal_likelihood(prior_precision=delta)
    got = ours.log_marginal_likelihood(prior_precision=delta)
    torch.testing.assert_close(got, expected.to(got.dtype), rtol=rtol, atol=0.0)
    # and with a scalar prior precision
    got = ours.log_marginal_likelihood(prior_precision=1.3)
    expected = theirs.log_marginal_likelihood(prior_precision=torch.tensor(1.3, dtype=DT))
    torch.testing.assert_close(got, expected.to(got.dtype), rtol=rtol, atol=0.0)
