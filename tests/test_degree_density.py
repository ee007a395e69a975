"""Band-limited densities over C_N, SO(2), D_N and O(2): normalisation, KL, entropy, band limits."""

import math

import pytest
import torch
from scipy.special import i0, i1

from equilib.degree import (
    GroupDensity,
    kl_divergence,
    kl_to_uniform,
    normalized_entropy,
    project_logits,
)
from equilib.groups import Dihedral, Rotations, SO2Grid


def _random(density: GroupDensity, seed: int = 0, scale: float = 1.0) -> GroupDensity:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        density.coefficients.copy_(torch.randn(density.coefficients.shape, generator=g) * scale)
    return density


@pytest.mark.parametrize(
    "make",
    [
        lambda: GroupDensity.cyclic(4, 2),
        lambda: GroupDensity.so2(16, 4),
        lambda: GroupDensity.dihedral(4, 2),
        lambda: GroupDensity.o2(12, 3),
    ],
)
def test_uniform_initialisation(make):
    d = make()
    lam = d()
    assert torch.allclose(lam, torch.ones_like(lam))
    assert float(d.entropy()) == pytest.approx(1.0, abs=1e-6)
    assert float(d.kl_to_uniform()) == pytest.approx(0.0, abs=1e-7)
    assert float(d.alignment()) == 0.0


@pytest.mark.parametrize(
    "make", [lambda: GroupDensity.cyclic(8, 4), lambda: GroupDensity.o2(10, 5)]
)
def test_normalisation_mean_one_and_weights_sum_to_one(make):
    d = _random(make(), seed=3, scale=2.0)
    lam = d()
    assert float(lam.mean()) == pytest.approx(1.0, abs=1e-6)
    assert bool((lam > 0).all())
    assert float(d.weights().sum()) == pytest.approx(1.0, abs=1e-6)
    # independent evaluation of the series element by element
    a = d.coefficients.detach()
    L = d.band_limit
    z = []
    for theta, f in zip(d.angles.tolist(), d.flips.tolist()):
        c = a[f]
        z.append(
            c[0]
            + sum(
                c[m] * math.cos(m * theta) + c[L + m] * math.sin(m * theta) for m in range(1, L + 1)
            )
        )
    z = torch.tensor(z)
    expected = torch.exp(z) / torch.exp(z).mean()
    assert torch.allclose(lam.detach(), expected, atol=1e-5)


def test_kl_to_itself_is_zero_and_kl_is_non_negative():
    for seed in range(5):
        p = _random(GroupDensity.cyclic(8, 4), seed)
        q = _random(GroupDensity.cyclic(8, 4), seed + 100)
        assert float(p.kl(p)) == pytest.approx(0.0, abs=1e-7)
        assert float(p.kl(q)) > 0
        assert float(kl_divergence(p(), q())) == pytest.approx(float(p.kl(q)), rel=1e-4)
        assert float(p.kl_to_uniform()) >= 0
        assert float(kl_to_uniform(p())) == pytest.approx(
            float(p.kl_to_uniform()), rel=1e-4, abs=1e-7
        )


def test_kl_on_fine_so2_grid_matches_von_mises_closed_form():
    # logit = kappa cos(theta - mu) is a von Mises density; KL has a closed form in Bessel functions
    def von_mises(kappa, mu):
        c = torch.zeros(1, 3)
        c[0, 1], c[0, 2] = kappa * math.cos(mu), kappa * math.sin(mu)
        return GroupDensity.so2(64, 1, coefficients=c)

    def A(k):
        return i1(k) / i0(k)

    kp, mp, kq, mq = 2.0, 0.3, 0.7, -1.0
    p, q = von_mises(kp, mp), von_mises(kq, mq)
    kl_u = kp * A(kp) - math.log(i0(kp))
    kl_pq = math.log(i0(kq) / i0(kp)) + A(kp) * (kp - kq * math.cos(mp - mq))
    assert float(p.kl_to_uniform()) == pytest.approx(kl_u, rel=1e-5)
    assert float(p.kl(q)) == pytest.approx(kl_pq, rel=1e-5)


def test_entropy_is_one_minus_kl_over_log_order_and_drops_when_concentrated():
    d = _random(GroupDensity.cyclic(8, 4), seed=1)
    assert float(d.entropy()) == pytest.approx(1 - float(d.kl_to_uniform()) / math.log(8), abs=1e-6)
    w = d.weights().detach()
    assert float(d.entropy()) == pytest.approx(float(-(w * w.log()).sum() / math.log(8)), abs=1e-6)
    peaked = GroupDensity.cyclic(8, 4, coefficients=torch.tensor([0, 20.0, 0, 0, 0, 0, 0, 0, 0]))
    assert float(peaked.entropy()) < 0.05
    assert float(normalized_entropy(torch.ones(5))) == pytest.approx(1.0)


def test_alignment_is_zero_iff_peak_at_identity():
    at_e = GroupDensity.cyclic(8, 4, coefficients=torch.tensor([0, 1.0, 0, 0, 0, 0, 0, 0, 0]))
    assert float(at_e.alignment()) == 0.0
    # peak at angle pi: cos(theta) with a negative sign
    away = GroupDensity.cyclic(8, 4, coefficients=torch.tensor([0, -1.0, 0, 0, 0, 0, 0, 0, 0]))
    z = -torch.cos(2 * math.pi * torch.arange(8) / 8)
    assert float(away.alignment()) == pytest.approx(float(z.max() - z[0]), abs=1e-6)
    away.alignment().backward()
    assert away.coefficients.grad[0, 1] < 0  # gradient descent raises the identity's logit


def test_flips_have_their_own_coset_series():
    c = torch.zeros(2, 5)
    c[1, 0] = 2.0  # only the reflected coset is raised
    d = GroupDensity.dihedral(4, 2, coefficients=c)
    lam = d().detach()
    assert torch.allclose(lam[:4], lam[0].expand(4)) and torch.allclose(lam[4:], lam[4].expand(4))
    assert float(lam[4] / lam[0]) == pytest.approx(math.exp(2.0), rel=1e-5)


def test_c4_periodic_density_needs_frequency_4():
    n = 32
    angles = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    target = 1.5 * torch.cos(4 * angles)  # a logit invariant under quarter turns
    lam_target = torch.exp(target) / torch.exp(target).mean()
    for L, representable in ((3, False), (4, True)):
        coef = project_logits(target, angles, L)
        d = GroupDensity.so2(n, L, coefficients=coef.float())
        err = float((d().detach().double() - lam_target).abs().max())
        if representable:
            assert err < 1e-5
        else:
            assert torch.allclose(d().detach(), torch.ones(n), atol=1e-5)  # best fit is uniform
            assert err > 1.0


def test_for_group_matches_element_order():
    d = GroupDensity.for_group(Dihedral(4), 2)
    assert d.flips.tolist() == [f for _, f in Dihedral(4).elements]
    assert GroupDensity.for_group(Rotations(6), 3).order == 6
    assert GroupDensity.for_group(SO2Grid(16), 8).continuous


def test_bad_input():
    with pytest.raises(ValueError, match="at most N/2 = 2"):
        GroupDensity.cyclic(4, 3)
    with pytest.raises(ValueError, match="SO\\(2\\) grid of 8 angles"):
        GroupDensity.so2(8, 5)
    with pytest.raises(ValueError, match="shape \\(1, 5\\)"):
        GroupDensity.cyclic(4, 2, coefficients=torch.zeros(7))
    with pytest.raises(ValueError, match="shape \\(2, 5\\)"):
        GroupDensity.dihedral(4, 2, coefficients=torch.zeros(1, 5))
    with pytest.raises(ValueError, match="non-negative int"):
        GroupDensity.cyclic(4, -1)
    with pytest.raises(ValueError, match="negative"):
        kl_to_uniform(torch.tensor([1.5, -0.5, 1.0]))
    with pytest.raises(ValueError, match="same grid"):
        kl_divergence(torch.ones(4), torch.ones(5))
    with pytest.raises(ValueError, match="positive int"):
        GroupDensity.cyclic(0, 0)


def test_normalised_entropy_depends_on_the_grid_but_kl_to_uniform_does_not():
    # one smooth density on SO(2), a von Mises bump, sampled on finer and finer grids
    ents, kls = [], []
    for n in (8, 64, 256):
        c = torch.zeros(1, 3, dtype=torch.float64)
        c[0, 1] = 1.0
        d = GroupDensity.so2(n, 1, coefficients=c)
        ents.append(float(d.entropy().detach()))
        kls.append(float(d.kl_to_uniform().detach()))
    assert ents[0] < ents[1] - 0.04 and ents[1] < ents[2] - 0.01  # the entropy rises with log n
    kl_exact = float(i1(1.0) / i0(1.0) - math.log(i0(1.0)))  # kappa A(kappa) - log I0(kappa)
    assert all(k == pytest.approx(kl_exact, rel=1e-5) for k in kls)  # KL: the same on every grid


@pytest.mark.parametrize(
    "make, n_free",
    [
        (lambda: GroupDensity.cyclic(4, 2), 3),
        (lambda: GroupDensity.cyclic(8, 3), 6),
        (lambda: GroupDensity.so2(16, 8), 15),
        (lambda: GroupDensity.so2(32, 4), 8),
        (lambda: GroupDensity.dihedral(4, 2), 7),
        (lambda: GroupDensity.cyclic(1, 0), 0),
    ],
)
def test_n_free_counts_the_directions_that_change_lambda(make, n_free):
    d = _random(make(), seed=5)
    assert d.n_free == n_free
    # the rank of the map from coefficients to lambda on the grid is the number of directions
    # that act: neither b_L at 2L = N nor a shift of every logit by one constant changes lambda
    d64 = make().double()
    jac = torch.autograd.functional.jacobian(
        lambda c: torch.func.functional_call(d64, {"coefficients": c}, ()),
        d.coefficients.detach().double(),
    )
    assert int(torch.linalg.matrix_rank(jac.reshape(-1, d.coefficients.numel()))) == n_free
    (d() * torch.arange(d.order)).sum().backward()
    L = d.band_limit
    if L and 2 * L == d.N:
        assert bool((d.coefficients.grad[:, 2 * L] == 0).all())  # b_L: exactly no gradient


def test_kl_is_infinite_where_q_vanishes_and_p_does_not():
    p = torch.tensor([2.0, 1.0, 1.0, 0.0])
    q = torch.tensor([2.0, 2.0, 0.0, 0.0])
    assert float(kl_divergence(p, q)) == math.inf
    assert math.isfinite(float(kl_divergence(q, p)))  # q's zeros count 0
    # exact value where finite: mean_h q log(q / p) with q normalised to mean 1
    assert float(kl_divergence(q, p)) == pytest.approx(
        (2 * math.log(2 / 2) + 2 * math.log(2 / 1)) / 4
    )
    d = GroupDensity.cyclic(4, 2)
    assert float(d.kl(q)) == math.inf
    assert float(kl_to_uniform(torch.tensor([4.0, 0, 0, 0]))) == pytest.approx(math.log(4))
    assert float(normalized_entropy(torch.tensor([4.0, 0, 0, 0]))) == 0.0


def test_float64_coefficients_stay_float64():
    c = torch.tensor([[0.1, 1.3, -0.7, 0.2, 1e-9]], dtype=torch.float64)
    d = GroupDensity.so2(64, 2, coefficients=c)
    assert d.coefficients.dtype == torch.float64 and d().dtype == torch.float64
    t = 2 * math.pi * torch.arange(64, dtype=torch.float64) / 64
    z = (
        0.1
        + 1.3 * torch.cos(t)
        - 0.7 * torch.cos(2 * t)
        + 0.2 * torch.sin(t)
        + 1e-9 * torch.sin(2 * t)
    )
    assert torch.allclose(d().detach(), torch.exp(z) / torch.exp(z).mean(), rtol=1e-13, atol=0)
    assert GroupDensity.cyclic(4, 2).coefficients.dtype == torch.get_default_dtype()
    assert (
        GroupDensity.cyclic(4, 2, coefficients=[0, 1, 0, 0, 0])().dtype == torch.get_default_dtype()
    )
