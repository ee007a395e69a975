"""Grading tests of exercises/ex07_layerwise.py: compared against equilib and dense oracles."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from equilib import discover, train
from equilib.laplace import KronLaplace
from equilib.models import build

NAME = "ex07_layerwise"


def test_7_1_map_objective_value_and_gradient(mod):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(3, 4, generator=g, requires_grad=True),
              torch.randn(5, generator=g, requires_grad=True)]
    delta = torch.tensor([2.0, 0.3])
    logits, y = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    got = mod.map_objective(logits, y, params, delta, 7)
    expect = F.cross_entropy(logits, y) + train.prior_penalty(params, delta, 7)
    assert torch.allclose(got, expect)
    got.backward()
    for d, p in zip(delta, params):  # the prior's gradient is a weight decay delta * theta / N
        assert torch.allclose(p.grad, d * p.detach() / 7)


def test_7_2_path_precision_matches_layer_structure(mod):
    torch.manual_seed(0)
    m = build("f-fc+conv", in_shape=(1, 8, 8), n_classes=10, width=2)
    named = list(m.named_parameters())
    delta = torch.linspace(0.5, 40.0, len(named), dtype=torch.float64)
    layers = discover.layer_structure(m, delta)
    for b in range(3):
        for path in ("fc", "conv"):
            idx = [i for i, (n, _) in enumerate(named)
                   if n.startswith(f"blocks.{b}.paths.{path}.") and n.endswith("weight")]
            got = mod.path_precision([float(delta[i]) for i in idx],
                                     [named[i][1].numel() for i in idx])
            assert got == pytest.approx(layers[b]["paths"][path]["prior_precision"])
    assert mod.path_precision([3.0], [17]) == pytest.approx(3.0)


def test_7_3_effective_parameters_against_the_dense_kronecker_product(mod):
    g = torch.Generator().manual_seed(1)
    for m, k, delta in ((3, 4, 0.5), (5, 2, 20.0)):
        a, b = torch.randn(m, m, generator=g, dtype=torch.float64), \
            torch.randn(k, k, generator=g, dtype=torch.float64)
        A, B = a @ a.T, b @ b.T
        lam = torch.linalg.eigvalsh(torch.kron(B, A))
        expect = (lam / (lam + delta)).sum()
        assert float(mod.effective_parameters(A, B, delta)) == pytest.approx(float(expect))
    theta = torch.randn(4, 3, generator=g)
    assert float(mod.mackay_precision(torch.tensor(6.0), theta)) == pytest.approx(
        6.0 / float(theta.pow(2).sum()))


def test_7_3_effective_parameters_match_the_laplace(mod):
    torch.manual_seed(0)
    X, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    la = KronLaplace(model, "classification", prior_precision=0.7)
    la.fit(DataLoader(TensorDataset(X, y), batch_size=40))
    # the Kronecker factors of the single weight: A = sum x x^T / N, B = sum of the output Hessians
    p = model(X).softmax(-1).double()
    B = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).sum(0)
    A = (X.double().T @ X.double()) / 40
    got = mod.effective_parameters(A, B, 0.7)
    assert float(got) == pytest.approx(float(la.effective_dimensions()[0].detach()), rel=1e-4)


def test_7_4_hyper_steps_match_the_training_loop_and_raise_the_evidence(mod):
    torch.manual_seed(0)
    X, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    loader = DataLoader(TensorDataset(X, y), batch_size=32)
    la = KronLaplace(model, "classification").fit(loader)
    d0 = torch.ones(4, dtype=torch.float64)
    got = mod.hyper_steps(la, d0, 30, 0.1, 64)
    assert not got.requires_grad
    assert float(la.log_marginal_likelihood(got)) > float(la.log_marginal_likelihood(d0))
    # the training loop's update with the same fitted curvature is the reference
    log_delta = d0.log().clone().requires_grad_(True)
    opt = torch.optim.Adam([log_delta], lr=0.1)
    train._marglik_update(model, loader, log_delta, opt, 30, 64, lambda m, d: la)
    assert torch.allclose(got, log_delta.detach().exp(), rtol=1e-6)
