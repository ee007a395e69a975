"""Grading tests of exercises/ex07_layerwise.py: compared against equilib and dense oracles."""

from __future__ import annotations

import math

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
    params = [
        torch.randn(3, 4, generator=g, requires_grad=True),
        torch.randn(5, generator=g, requires_grad=True),
    ]
    delta = torch.tensor([2.0, 0.3])
    logits, y = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    got = mod.map_objective(logits, y, params, delta, 7)
    expect = F.cross_entropy(logits, y) + train.prior_penalty(params, delta, 7)
    assert torch.allclose(got, expect), (
        "expected the mean cross-entropy plus each tensor's Gaussian prior term, divided by N"
    )
    got.backward()
    for d, p in zip(delta, params):  # the prior's gradient is a weight decay delta * theta / N
        assert torch.allclose(p.grad, d * p.detach() / 7), (
            "the gradient in each tensor should be a weight decay delta_l * theta_l / N"
        )


def test_7_2_path_precision_matches_layer_structure(mod):
    torch.manual_seed(0)
    m = build("f-fc+conv", in_shape=(1, 8, 8), n_classes=10, width=2)
    named = list(m.named_parameters())
    delta = torch.linspace(0.5, 40.0, len(named), dtype=torch.float64)
    layers = discover.layer_structure(m, delta)
    for b in range(3):
        for path in ("fc", "conv"):
            idx = [
                i
                for i, (n, _) in enumerate(named)
                if n.startswith(f"blocks.{b}.paths.{path}.") and n.endswith("weight")
            ]
            got = mod.path_precision(
                [float(delta[i]) for i in idx], [named[i][1].numel() for i in idx]
            )
            assert got == pytest.approx(layers[b]["paths"][path]["prior_precision"]), (
                f"block {b}, path {path}: not the precision chapter 07's tables report"
            )
    assert mod.path_precision([3.0], [17]) == pytest.approx(3.0), "one tensor: its own precision"
    assert mod.path_precision([2.0, 2.0, 2.0], [4, 9, 1]) == pytest.approx(2.0), (
        "tensors that share one precision: that precision"
    )
    # the summary gives the path the same total prior variance as its tensors' priors
    deltas, sizes = [0.5, 8.0, 40.0], [30, 5, 100]
    one = mod.path_precision(deltas, sizes)
    total = sum(n / d for n, d in zip(sizes, deltas))
    assert sum(sizes) / one == pytest.approx(total), (
        "with the summary precision on every weight, the path's total prior variance changes"
    )


def _dense_objective(A, B, theta, delta):
    """-delta/2 |theta|^2 + n/2 log delta - 1/2 log det(kron(B, A) + delta I), densely."""
    K = torch.kron(B, A)
    n = K.shape[0]
    logdet = torch.linalg.slogdet(K + delta * torch.eye(n, dtype=K.dtype))[1]
    return float(-delta / 2 * theta.double().pow(2).sum() + n / 2 * math.log(delta) - logdet / 2)


@pytest.mark.parametrize("m, k, scale, seed", [(3, 4, 1.0, 1), (5, 2, 0.05, 2), (4, 3, 3.0, 3)])
def test_7_3_evidence_optimal_precision(mod, m, k, scale, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(2 * m, m, generator=g, dtype=torch.float64)
    b = torch.randn(k, k, generator=g, dtype=torch.float64)
    A, B = a.T @ a / (2 * m), b @ b.T
    theta = scale * torch.randn(k, m, generator=g, dtype=torch.float64)
    delta = mod.evidence_optimal_precision(A, B, theta)
    assert isinstance(delta, float) and delta > 0, f"expected a positive float, got {delta!r}"
    best = _dense_objective(A, B, theta, delta)
    for factor in (0.5, 0.95, 0.999, 1.001, 1.05, 2.0):
        other = _dense_objective(A, B, theta, delta * factor)
        assert other <= best + 1e-9, (
            f"delta = {delta:.5g} is not the optimum: delta = {delta * factor:.5g} gives a larger "
            f"evidence ({other:.8f} > {best:.8f})"
        )


def test_7_3_smaller_weights_get_a_larger_precision(mod):
    g = torch.Generator().manual_seed(4)
    a, b = (
        torch.randn(8, 4, generator=g, dtype=torch.float64),
        torch.randn(3, 3, generator=g, dtype=torch.float64),
    )
    A, B = a.T @ a / 8, b @ b.T
    theta = torch.randn(3, 4, generator=g, dtype=torch.float64)
    deltas = [mod.evidence_optimal_precision(A, B, s * theta) for s in (1.0, 0.3, 0.1)]
    assert deltas[0] < deltas[1] < deltas[2], (
        f"shrinking the weights should raise the precision the evidence picks, got {deltas}"
    )


def test_7_4_hyper_steps_match_the_training_loop_and_raise_the_evidence(mod):
    torch.manual_seed(0)
    X, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    loader = DataLoader(TensorDataset(X, y), batch_size=32)
    la = KronLaplace(model, "classification").fit(loader)
    d0 = torch.ones(4, dtype=torch.float64)
    got = mod.hyper_steps(la, d0, 30, 0.1, 64)
    assert not got.requires_grad, "return the new precisions detached from the graph"
    assert float(la.log_marginal_likelihood(got)) > float(la.log_marginal_likelihood(d0)), (
        "the steps should raise the evidence"
    )
    # the training loop's update with the same fitted curvature is the reference
    log_delta = d0.log().clone().requires_grad_(True)
    opt = torch.optim.Adam([log_delta], lr=0.1)
    train._marglik_update(model, loader, log_delta, opt, 30, 64, lambda m, d: la)
    assert torch.allclose(got, log_delta.detach().exp(), rtol=1e-6), (
        "not the steps of chapter 07's training loop ('One precision per tensor, learned during "
        "training'): the same variable, optimiser and objective, scaled the same way?"
    )


def _dense_conv_output_variance(x, k, delta):
    """Mean over outputs of |d o / d kernel|^2 / delta: each output's patch, from unfold."""
    pad = k // 2
    xp = F.pad(x.double(), (pad, pad, pad, pad), mode="circular")
    patches = F.unfold(xp, k)  # (B, C k^2, H W): what each output position reads
    return float(patches.pow(2).sum(dim=1).mean() / delta)


@pytest.mark.parametrize(
    "k, delta, shape", [(3, 2.0, (5, 3, 7, 6)), (1, 0.5, (4, 2, 5, 5)), (5, 7.0, (3, 1, 9, 9))]
)
def test_7_5_conv_output_prior_variance(mod, k, delta, shape):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(*shape, generator=g) + 0.5  # images are not centred
    got = mod.conv_output_prior_variance(x, k, delta)
    assert isinstance(got, float), f"expected a float, got {type(got).__name__}"
    assert got == pytest.approx(_dense_conv_output_variance(x, k, delta), rel=1e-9), (
        "not the prior variance of an output of that convolution, averaged over the outputs"
    )


def test_7_5_matches_the_output_precisions_of_a_conv_path(mod):
    torch.manual_seed(0)
    m = build("conv", in_shape=(1, 8, 8), n_classes=10, width=3)
    x = torch.rand(32, 1, 8, 8)
    got = discover.output_precisions(m, x, 4.0, probes=64)[0]["paths"]["conv"]
    assert 1 / mod.conv_output_prior_variance(x, 3, 4.0) == pytest.approx(
        got["output_precision"], rel=0.05
    ), "the first block's conv path in discover.output_precisions disagrees"
