"""Laplace evidence over lambda: exact orbit log-determinants and the per-example GGN diagonal."""

import pytest
import torch
import torch.nn.functional as F

from equilib.degree import PartialGroupConv, PartialLiftingConv
from equilib.degree.marglik import MarglikLambda, diag_ggn_effective, orbit_logdet, orbit_structure
from equilib.degree.model import PartialGCNN, partial_layers


def _dense_P(layer, w):
    n = layer.weight.numel()
    E = torch.eye(n, dtype=torch.float64).reshape(n, *layer.weight.shape)
    cols = [torch.tensordot(w, layer.transformed_kernels(E[i]), dims=1).flatten() for i in range(n)]
    return torch.stack(cols, 1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: PartialLiftingConv(1, 2, 3, "C4"),
        lambda: PartialGroupConv(2, 1, 3, "C4"),
        lambda: PartialLiftingConv(1, 1, 3, "D4"),
    ],
)
def test_orbit_logdet_equals_dense_logdet(make):
    torch.manual_seed(0)
    layer = make()
    orbits, M = orbit_structure(layer)
    n = layer.weight.numel()
    assert orbits.shape == (n // layer.group.order, layer.group.order)
    for w in (
        torch.softmax(torch.randn(layer.group.order), 0).double(),
        torch.full((layer.group.order,), 1.0 / layer.group.order, dtype=torch.float64),
    ):
        P = _dense_P(layer, w)
        d = torch.rand(n, dtype=torch.float64) * 3
        dense = torch.logdet(P.T @ torch.diag(d) @ P + 0.5 * torch.eye(n, dtype=torch.float64))
        assert float(orbit_logdet(w, M, d[orbits], 0.5)) == pytest.approx(
            float(dense), rel=1e-9, abs=1e-9
        )


def test_uniform_lambda_has_the_smallest_complexity():
    """With uniform weights P has rank |K|/|H|: the Occam factor of an equivariant layer."""
    torch.manual_seed(1)
    layer = PartialGroupConv(2, 2, 3, "C4")
    orbits, M = orbit_structure(layer)
    d = torch.rand(layer.weight.numel(), dtype=torch.float64) + 1.0
    uniform = orbit_logdet(torch.full((4,), 0.25, dtype=torch.float64), M, d[orbits], 1.0)
    identity = orbit_logdet(torch.tensor([1.0, 0, 0, 0], dtype=torch.float64), M, d[orbits], 1.0)
    assert float(uniform) < float(identity)
    assert float(identity) == pytest.approx(float(torch.log(d + 1.0).sum()), rel=1e-9)


def test_interpolated_rotations_are_refused():
    with pytest.raises(ValueError, match="not a permutation"):
        orbit_structure(PartialLiftingConv(1, 1, 3, "C8"))


def test_diag_ggn_matches_per_example_loop():
    torch.manual_seed(2)
    model = PartialGCNN((1, 8, 8), 5, width=2)
    X = torch.randn(6, 1, 8, 8)
    got = diag_ggn_effective(model, X, torch.Generator().manual_seed(7))
    # oracle: the same sampled labels, one backward per example through the effective kernels
    with torch.no_grad():
        probs = torch.softmax(model(X), -1)
    y = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(7)).squeeze(1)
    layers = [m for _, m in partial_layers(model)]
    expected = [torch.zeros_like(m.weight) for m in layers]
    for i in range(len(X)):
        ks = [m.effective_weight().detach().requires_grad_(True) for m in layers]
        for m, k in zip(layers, ks):
            m._kernel_override = k
        loss = F.cross_entropy(model(X[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, ks)
        for m in layers:
            m._kernel_override = None
        for e, g in zip(expected, grads):
            e += g.square()
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-10)


def test_marglik_update_moves_only_lambda():
    torch.manual_seed(3)
    model = PartialGCNN((1, 8, 8), 3, width=2)
    X, y = torch.randn(32, 1, 8, 8), torch.randint(3, (32,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=16)
    hook = MarglikLambda(model, loader, n_data=32, subset=32, steps=3, lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hook.freeze()
    entry = hook.update()
    assert set(entry) == {"nll", "complexity", "log_occam", "log_marglik"}
    # chapter 05's convention: log evidence = data fit + log Occam factor, the factor <= 0
    assert entry["log_occam"] == -entry["complexity"] and entry["log_occam"] <= 0
    assert entry["log_marglik"] == pytest.approx(-entry["nll"] + entry["log_occam"])
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == n.endswith("coefficients"), n
        if n.endswith("coefficients"):
            assert not p.requires_grad  # stays out of the MAP optimiser


def _tiny_loader():
    X, y = torch.randn(16, 1, 8, 8), torch.randint(3, (16,))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=8)


def test_a_gcnn_keeps_its_uniform_lambda_under_either_objective():
    from equilib.degree.model import build, layer_densities
    from equilib.degree.training import train_degree

    for objective in ("kl", "marglik"):
        torch.manual_seed(0)
        model = build("gcnn", (1, 8, 8), 3, width=2)
        out = train_degree(
            model, _tiny_loader(), epochs=1, lambda_objective=objective, marglik_subset=16
        )
        for name, lam in layer_densities(model).items():
            torch.testing.assert_close(lam, torch.ones_like(lam), msg=f"{objective}: {name}")
        assert all(
            not layer.density.coefficients.requires_grad for _, layer in partial_layers(model)
        )
        assert out["marglik"] is None  # nothing to learn, no evidence steps taken


def test_a_model_whose_lambdas_are_all_frozen_is_refused_by_the_evidence_hook():
    model = PartialGCNN((1, 8, 8), 3, width=2)
    for _, layer in partial_layers(model):
        layer.density.coefficients.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        MarglikLambda(model, _tiny_loader(), n_data=16, subset=16)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"subset": 0}, "subset must be a positive integer"),
        ({"prior_precision": 0.0}, "prior_precision must be a positive number"),
        ({"prior_precision": -1.0}, "prior_precision must be a positive number"),
        ({"lr": 0}, "lr must be a positive number"),
    ],
)
def test_the_evidence_hook_refuses_settings_it_cannot_use(kwargs, message):
    model = PartialGCNN((1, 8, 8), 3, width=2)
    with pytest.raises(ValueError, match=message):
        MarglikLambda(model, _tiny_loader(), n_data=16, **kwargs)
