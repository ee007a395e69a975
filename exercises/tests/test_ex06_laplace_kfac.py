"""Grading tests of exercises/ex06_laplace_kfac.py: dense log-determinants and equilib.laplace."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equilib.laplace import KronLaplace, kron_logdet, reference_kfac

NAME = "ex06_laplace_kfac"
DT = torch.float64
# what the exercises ask you to write, which chapter 06 calls from the library
FORBIDDEN = [("6.1", kron_logdet), ("6.2", reference_kfac)]
# factors too large for their Kronecker product: (300 * 200)^2 numbers are 27 GiB
BIG_M, BIG_K = 300, 200
NO_KRON = (
    "it forms the {n} x {n} matrix (or another of that size): use what chapter 06, 'The "
    "Kronecker log-determinant identity', says about the eigenvalues of a Kronecker product"
)


def _psd(n, rank, seed):
    a = torch.randn(n, rank, generator=torch.Generator().manual_seed(seed), dtype=DT)
    return a @ a.T


def test_6_1_kron_logdet(mod):
    for (m, k, rank), delta, scale in (((4, 3, 4), 0.5, 1.0), ((5, 4, 2), 2.0, 0.3)):
        A, B = _psd(m, rank, 0), _psd(k, rank, 1)
        dense = torch.linalg.slogdet(scale * torch.kron(B, A) + delta * torch.eye(m * k, dtype=DT))[
            1
        ]
        got = float(mod.kron_logdet(A, B, scale, delta))
        assert abs(got - float(dense)) < 1e-9, (
            f"kron_logdet(A, B, scale={scale}, delta={delta}) = {got:.8f}, but the dense "
            f"log-determinant is {float(dense):.8f}"
        )


def _factor(n, seed):
    """A random symmetric PSD matrix (n, n) with known eigenvalues (some zero): (matrix, eigs)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    eigs = torch.rand(n, generator=g, dtype=DT) * 3
    eigs[: n // 10] = 0.0
    return (Q * eigs) @ Q.T, eigs


def test_6_1_kron_logdet_never_forms_the_product(mod, within_memory):
    (A, a), (B, b) = _factor(BIG_M, 10), _factor(BIG_K, 11)
    expect = float(torch.log(0.7 * torch.outer(b, a) + 0.2).sum())
    got = within_memory(
        4 << 30,
        lambda: mod.kron_logdet(A, B, 0.7, 0.2),
        f"kron_logdet with A ({BIG_M}x{BIG_M}) and B ({BIG_K}x{BIG_K}): "
        + NO_KRON.format(n=BIG_M * BIG_K),
    )
    assert abs(float(got) - expect) < 1e-6 * abs(expect), (
        f"for A ({BIG_M}x{BIG_M}) and B ({BIG_K}x{BIG_K}) got {float(got):.6f}, expected {expect:.6f}"
    )


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)
    ).to(DT)


@pytest.mark.parametrize("C", [2, 3, 6])
def test_6_2_softmax_hessian_root(mod, C):
    logits = torch.randn(5, C, generator=torch.Generator().manual_seed(C), dtype=DT)
    logits[0] = torch.tensor([30.0] + [0.0] * (C - 1), dtype=DT)  # a nearly certain prediction
    p = torch.softmax(logits, dim=-1)
    L = mod.softmax_hessian_root(p)
    assert tuple(L.shape) == (5, C, C), f"expected (N, C, C) = (5, {C}, {C}), got {tuple(L.shape)}"
    Lam = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    torch.testing.assert_close(
        L @ L.transpose(1, 2),
        Lam,
        atol=1e-12,
        rtol=1e-9,
        msg="L[n] @ L[n].T should be the cross-entropy Hessian diag(p_n) - p_n p_n^T of chapter 06",
    )


@pytest.mark.parametrize("index", [0, 2, 4])
def test_6_2_linear_kfac_factors(mod, index):
    net = _net()
    X = torch.randn(12, 4, generator=torch.Generator().manual_seed(2), dtype=DT)
    y = torch.zeros(12, dtype=torch.long)
    A, B = mod.linear_kfac_factors(net, net[index], X)
    la = KronLaplace(net, "classification").fit([(X, y)])
    A_ref, B_ref = la.factors[f"{index}.weight"]
    torch.testing.assert_close(
        A, A_ref[0], msg="A should be the mean outer product of the layer's inputs"
    )
    torch.testing.assert_close(B, B_ref[0], msg="B differs from chapter 06's KFAC output factor")
    assert not net[index]._forward_hooks, "remove the hook when done"


def test_6_3_effective_dimensions_and_mackay(mod):
    net = _net(1)
    X = torch.randn(30, 4, generator=torch.Generator().manual_seed(3), dtype=DT)
    y = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(4))
    delta = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.7, 3.0], dtype=DT)
    la = KronLaplace(net, "classification", prior_precision=delta, temperature=2.0)
    la.fit([(X, y)])
    gamma = la.effective_dimensions()
    for i, name in enumerate(la.param_names):
        if not name.endswith("weight"):
            continue
        A, B = la.factors[name]
        g = mod.effective_dimensions(A[0], B[0], 0.5, float(delta[i]))
        lam = torch.linalg.eigvalsh(0.5 * torch.kron(B[0], A[0])).clamp_min(0)  # dense, here only
        dense = float((lam / (lam + delta[i])).sum())
        assert abs(float(g) - dense) < 1e-8, (
            f"{name}: got {float(g):.6f} effective parameters, the dense curvature gives {dense:.6f}"
        )
        assert abs(float(g) - float(gamma[i])) < 1e-8
        w = dict(net.named_parameters())[name]
        new = mod.mackay_update(A[0], B[0], w, 0.5, float(delta[i]))
        assert abs(float(new) - float(gamma[i] / w.detach().pow(2).sum())) < 1e-8, (
            f"{name}: MacKay's update is not chapter 05's fixed point for this block"
        )


def test_6_3_effective_dimensions_never_form_the_product(mod, within_memory):
    (A, a), (B, b) = _factor(BIG_M, 12), _factor(BIG_K, 13)
    lam = 0.5 * torch.outer(b, a)
    expect = float((lam / (lam + 1.5)).sum())
    got = within_memory(
        4 << 30,
        lambda: mod.effective_dimensions(A, B, 0.5, 1.5),
        f"effective_dimensions with A ({BIG_M}x{BIG_M}) and B ({BIG_K}x{BIG_K}): "
        + NO_KRON.format(n=BIG_M * BIG_K),
    )
    assert abs(float(got) - expect) < 1e-6 * expect, (
        f"for A ({BIG_M}x{BIG_M}) and B ({BIG_K}x{BIG_K}) got {float(got):.4f} effective "
        f"parameters, expected {expect:.4f}"
    )
