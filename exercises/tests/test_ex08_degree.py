"""Grading tests of exercises/ex08_degree.py, by behaviour: properties, closed forms and
computations made here, never a call of the library function that does the same job."""

from __future__ import annotations

import math

import pytest
import torch

from equilib.degree.density import GroupDensity, kl_divergence, kl_to_uniform, normalized_entropy

NAME = "ex08_degree"
# what the exercises ask you to write, which chapter 08 calls from the library
FORBIDDEN = [
    ("8.1", GroupDensity),
    ("8.2", kl_to_uniform),
    ("8.2", normalized_entropy),
    ("8.2", kl_divergence),
]

SEC_DENSITY = "chapter 08, 'A band-limited density over the group'"
SEC_KL = "chapter 08, 'Divergences, entropy and alignment'"
SEC_PARTIAL = "chapter 08, 'The partial group convolution'"
SEC_EVIDENCE = "chapter 08, 'Learning lambda by the marginal likelihood'"


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------- Exercise 8.1


@pytest.mark.parametrize("N,L", [(4, 2), (8, 3), (6, 0), (16, 5)])
def test_8_1_log_density_is_the_series_up_to_a_constant(mod, N, L):
    c = _rand(2 * L + 1, seed=N)
    lam = mod.density(c, N)
    assert lam.shape == (N,), f"lambda lives on the {N} elements of C_{N}: shape ({N},)"
    assert bool((lam > 0).all()), f"a density over the group is positive ({SEC_DENSITY})"
    assert float(lam.mean()) == pytest.approx(1.0, abs=1e-6), (
        f"lambda is normalised to mean 1 over the grid, so that uniform is 1 ({SEC_DENSITY})"
    )
    theta = 2 * math.pi * torch.arange(N, dtype=torch.float64) / N
    series = c[0] + sum(
        c[m] * torch.cos(m * theta) + c[L + m] * torch.sin(m * theta) for m in range(1, L + 1)
    )
    offset = torch.log(lam.double()) - series
    assert float(offset.max() - offset.min()) < 1e-6, (
        f"log lambda should be the Fourier series at the angles 2 pi k / N plus one constant "
        f"({SEC_DENSITY})"
    )


def test_8_1_uniform_and_band_limit(mod):
    torch.testing.assert_close(
        mod.density(torch.zeros(3), 4),
        torch.ones(4),
        msg=f"zero coefficients are the uniform density ({SEC_DENSITY})",
    )
    with pytest.raises(ValueError):
        mod.density(torch.zeros(7), 4)  # L = 3 > 4 // 2: aliases onto lower frequencies


# --------------------------------------------------------------------------- Exercise 8.2


def test_8_2_kl_and_entropy_on_random_densities(mod):
    for seed in range(3):
        lam = torch.exp(_rand(8, seed=seed))
        lam = lam / lam.mean()
        kl, H = mod.kl_and_entropy(lam)
        p = lam / lam.sum()  # the probabilities of the 8 group elements
        kl_here = float((p * torch.log(p * 8)).sum())
        assert float(kl) == pytest.approx(kl_here, rel=1e-6), (
            f"KL(lambda || uniform) of the probabilities lambda / N ({SEC_KL})"
        )
        assert float(H) == pytest.approx(1 - kl_here / math.log(8), rel=1e-6), (
            f"the normalised entropy and the KL to uniform add up to one once the KL is "
            f"divided by log N ({SEC_KL})"
        )


def test_8_2_extremes(mod):
    kl, H = mod.kl_and_entropy(torch.ones(5, dtype=torch.float64))
    assert float(kl) == pytest.approx(0.0, abs=1e-9) and float(H) == pytest.approx(1.0), (
        f"the uniform density: no divergence, full entropy ({SEC_KL})"
    )
    peaked = torch.tensor([1e6, 1.0, 1.0, 1.0], dtype=torch.float64)
    kl, H = mod.kl_and_entropy(peaked / peaked.mean())
    assert float(H) < 1e-3 and float(kl) == pytest.approx(math.log(4), rel=1e-3), (
        f"all mass on one element: entropy near 0, KL near log N ({SEC_KL})"
    )


# --------------------------------------------------------------------------- Exercise 8.3


def _act(K, h):
    """The group element h on a lifting kernel, written out entry by entry."""
    out = torch.empty_like(K)
    for g in range(4):
        out[:, g] = torch.rot90(K[:, (g - h) % 4], h, dims=(-2, -1))
    return out


def test_8_3_one_element_is_its_action(mod):
    K = _rand(3, 4, 2, 5, 5, seed=4, dtype=torch.float32)
    for h in range(4):
        w = torch.zeros(4)
        w[h] = 1.0
        torch.testing.assert_close(
            mod.partial_lifting_kernel(K, w),
            _act(K, h),
            msg=f"all weight on h must give h.K: rotate the taps by h quarter turns and shift "
            f"the orientation axis by h ({SEC_PARTIAL})",
        )


def test_8_3_linear_in_the_weights(mod):
    K = _rand(2, 4, 1, 3, 3, seed=5, dtype=torch.float32)
    a, b = torch.tensor([0.5, 0.2, 0.2, 0.1]), torch.tensor([0.1, 0.1, 0.3, 0.5])
    torch.testing.assert_close(
        mod.partial_lifting_kernel(K, 0.3 * a + 0.7 * b),
        0.3 * mod.partial_lifting_kernel(K, a) + 0.7 * mod.partial_lifting_kernel(K, b),
        msg=f"the average is a weighted sum of transformed copies: linear in w ({SEC_PARTIAL})",
    )


def test_8_3_uniform_is_equivariant_identity_is_free(mod):
    K = _rand(2, 4, 1, 3, 3, seed=1, dtype=torch.float32)
    Ku = mod.partial_lifting_kernel(K, torch.full((4,), 0.25))
    for g in range(4):
        torch.testing.assert_close(
            Ku[:, g],
            torch.rot90(Ku[:, 0], g, dims=(-2, -1)),
            msg=f"uniform weights project onto equivariant kernels ({SEC_PARTIAL})",
        )
    torch.testing.assert_close(
        mod.partial_lifting_kernel(K, torch.tensor([1.0, 0, 0, 0])),
        K,
        msg=f"the identity alone leaves the kernel free ({SEC_PARTIAL})",
    )


# --------------------------------------------------------------------------- Exercise 8.4


def test_8_4_constant_curvature_has_a_closed_form(mod):
    # with d = c everywhere, C^T C is circulant: its eigenvalues are |DFT(w)|^2
    for seed in range(3):
        w = torch.softmax(_rand(6, seed=seed), 0)
        got = float(mod.orbit_complexity(w, torch.full((6,), 2.5, dtype=torch.float64), 0.5))
        want = float(torch.log(2.5 * torch.fft.fft(w).abs() ** 2 + 0.5).sum())
        assert got == pytest.approx(want, rel=1e-9), (
            f"log det(C^T diag(d) C + delta I) with C the circulant of w ({SEC_EVIDENCE})"
        )


def test_8_4_uniform_is_cheapest(mod):
    d = torch.tensor([5.0, 1.0, 3.0, 2.0], dtype=torch.float64)
    uni = mod.orbit_complexity(torch.full((4,), 0.25, dtype=torch.float64), d, 1.0)
    ide = mod.orbit_complexity(torch.tensor([1.0, 0, 0, 0], dtype=torch.float64), d, 1.0)
    assert float(ide) == pytest.approx(float(torch.log(d + 1).sum()), rel=1e-10), (
        f"with w on the identity C = I: every entry of the orbit is a free parameter "
        f"({SEC_EVIDENCE})"
    )
    assert float(uni) == pytest.approx(math.log(1 + float(d.sum()) / 4), rel=1e-10), (
        f"with uniform w, C has rank one: the orbit is one shared parameter ({SEC_EVIDENCE})"
    )
    assert float(uni) < float(ide)
