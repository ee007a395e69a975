"""Grading tests of exercises/ex08_degree.py: compared against equilib.degree and closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from equilib.degree import GroupDensity, PartialLiftingConv, normalized_entropy
from equilib.degree.marglik import orbit_logdet, orbit_structure

NAME = "ex08_degree"


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- Exercise 8.1


@pytest.mark.parametrize("N,L", [(4, 2), (8, 3), (6, 0)])
def test_8_1_density_matches_equilib(mod, N, L):
    c = _rand(2 * L + 1, seed=N)
    lam = mod.density(c, N)
    ref = GroupDensity.cyclic(N, L, coefficients=c)().detach()
    torch.testing.assert_close(lam, ref, rtol=1e-5, atol=1e-6)
    assert float(lam.mean()) == pytest.approx(1.0, abs=1e-6)


def test_8_1_uniform_and_band_limit(mod):
    torch.testing.assert_close(mod.density(torch.zeros(3), 4), torch.ones(4))
    with pytest.raises(ValueError):
        mod.density(torch.zeros(7), 4)  # L = 3 > 4 // 2


# --------------------------------------------------------------------------- Exercise 8.2


def test_8_2_kl_and_entropy(mod):
    for seed in range(3):
        d = GroupDensity.cyclic(8, 4, coefficients=_rand(9, seed=seed))
        lam = d().detach()
        kl, H = mod.kl_and_entropy(lam)
        assert float(kl) == pytest.approx(float(d.kl_to_uniform()), rel=1e-4, abs=1e-7)
        assert float(H) == pytest.approx(float(normalized_entropy(lam)), rel=1e-5)
        assert float(H) == pytest.approx(1 - float(kl) / math.log(8), abs=1e-5)
    kl, H = mod.kl_and_entropy(torch.ones(5))
    assert float(kl) == pytest.approx(0.0, abs=1e-7) and float(H) == pytest.approx(1.0)


# --------------------------------------------------------------------------- Exercise 8.3


def test_8_3_matches_the_partial_lifting_layer(mod):
    torch.manual_seed(0)
    layer = PartialLiftingConv(2, 3, 5, "C4")
    w = torch.tensor([0.4, 0.3, 0.1, 0.2])
    got = mod.partial_lifting_kernel(layer.weight.detach(), w)
    torch.testing.assert_close(got, layer.effective_weight(w).detach(), rtol=1e-5, atol=1e-6)


def test_8_3_uniform_is_equivariant_identity_is_free(mod):
    K = _rand(2, 4, 1, 3, 3, seed=1)
    Ku = mod.partial_lifting_kernel(K, torch.full((4,), 0.25))
    for g in range(4):
        torch.testing.assert_close(Ku[:, g], torch.rot90(Ku[:, 0], g, dims=(-2, -1)))
    torch.testing.assert_close(mod.partial_lifting_kernel(K, torch.tensor([1.0, 0, 0, 0])), K)


# --------------------------------------------------------------------------- Exercise 8.4


def test_8_4_orbit_complexity_matches_equilib(mod):
    layer = PartialLiftingConv(1, 1, 3, "C4")
    orbits, M = orbit_structure(layer)
    for seed in range(3):
        w = torch.softmax(_rand(4, seed=seed), 0).double()
        d = torch.rand(4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 4
        ref = orbit_logdet(w, M, d[None, :], 0.5)
        assert float(mod.orbit_complexity(w, d, 0.5)) == pytest.approx(float(ref), rel=1e-8)


def test_8_4_uniform_is_cheapest(mod):
    d = torch.tensor([5.0, 1.0, 3.0, 2.0], dtype=torch.float64)
    uni = mod.orbit_complexity(torch.full((4,), 0.25, dtype=torch.float64), d, 1.0)
    ide = mod.orbit_complexity(torch.tensor([1.0, 0, 0, 0], dtype=torch.float64), d, 1.0)
    assert float(ide) == pytest.approx(float(torch.log(d + 1).sum()), rel=1e-10)
    assert float(uni) == pytest.approx(math.log(1 + float(d.sum()) / 4), rel=1e-10)
    assert float(uni) < float(ide)
