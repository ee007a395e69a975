"""Band-limited densities over rotation groups: C_N, SO(2) on a grid, and D_N / O(2) with flips.

A density lambda over a compact group H is stored by the Fourier coefficients of its logit
(log-density up to a constant), truncated at a band limit L:

    logit(theta, f) = a_f0 + sum_{m=1..L} a_fm cos(m theta) + b_fm sin(m theta)

where f in {0, 1} says whether the element contains a reflection (one series per coset; the
2 + 4L real numbers span the functions on O(2) whose irreducible components have frequency
<= L). On a grid of N rotations the top band is special when L = N/2: sin(L theta) vanishes at
every grid angle theta = 2 pi k / N, so b_L has no effect on lambda and gets no gradient. It is
kept for a uniform layout. Nor does a constant added to every logit change lambda (the
normalisation below divides it out): of the a_f0, only their differences between cosets act.
``GroupDensity.n_free`` counts the directions in coefficient space that do change lambda (N - 1
for C_N: the densities with mean 1 on N points). The density is evaluated on the group's grid of
elements without sampling,

    lambda(h) = exp(logit(h)) / mean_h' exp(logit(h')),

so that the uniform density equals 1 everywhere (the mean is the normalised Haar measure on the
grid). Zero coefficients are the uniform density: a fully equivariant layer.

``group_angles_flips`` reads these coordinates (angle theta, flip f) off the elements of an
``equilib.groups`` rotation group; the partial convolutions in ``layers`` take them from here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from equilib.groups import Dihedral, Group, Rotations, SO2Grid, Trivial

__all__ = [
    "GroupDensity",
    "group_angles_flips",
    "kl_divergence",
    "kl_to_uniform",
    "normalized_entropy",
    "project_logits",
]


def _check_density(lam: torch.Tensor, name: str = "density") -> None:
    if not isinstance(lam, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of grid values, got {type(lam).__name__}")
    if lam.ndim != 1 or lam.numel() < 1:
        raise ValueError(f"{name} must be 1-D (|H|,) grid values, got shape {tuple(lam.shape)}")
    if bool((lam < 0).any()):
        raise ValueError(f"{name} has negative values; a density on the grid must be >= 0")


def kl_divergence(lam_p: torch.Tensor, lam_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of two densities given on the same grid (each with mean 1 over the grid).

    lam_p, lam_q: (|H|,). KL = mean_h lam_p(h) log(lam_p(h) / lam_q(h)); exact for finite groups,
    a quadrature (rectangle rule) for SO(2) / O(2). Terms with lam_p(h) = 0 count 0; where
    lam_q(h) = 0 < lam_p(h) the divergence is infinite and ``inf`` is returned.
    """
    _check_density(lam_p, "lam_p")
    _check_density(lam_q, "lam_q")
    if lam_p.shape != lam_q.shape:
        raise ValueError(
            f"lam_p and lam_q must live on the same grid, got shapes {tuple(lam_p.shape)} "
            f"and {tuple(lam_q.shape)}"
        )
    p = lam_p / lam_p.mean()
    q = lam_q / lam_q.mean()
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).mean()


def kl_to_uniform(lam: torch.Tensor) -> torch.Tensor:
    """KL(lambda || uniform) = mean_h lambda(h) log lambda(h); lam: (|H|,) with mean 1.

    Unlike the normalised entropy, this does not depend on the grid size for a fixed density on
    SO(2) (it converges to the integral), so compare degrees of equivariance across grids by it.
    """
    _check_density(lam)
    p = lam / lam.mean()
    return torch.xlogy(p, p).mean()


def normalized_entropy(lam: torch.Tensor) -> torch.Tensor:
    """Entropy of the weights w = lambda / sum(lambda), divided by its maximum log|H| (1 = uniform).

    lam: (|H|,). H / log|H| = 1 - KL(lambda || uniform) / log|H|. A one-element grid returns 1.
    The divisor log|H| grows with the grid, so for the same density on SO(2) this number rises
    with the number of grid angles; it compares layers on one grid, ``kl_to_uniform`` across grids.
    """
    _check_density(lam)
    n = lam.numel()
    if n == 1:
        return torch.ones((), dtype=lam.dtype, device=lam.device)
    w = lam / lam.sum()
    return -torch.xlogy(w, w).sum() / math.log(n)


def project_logits(
    values: torch.Tensor, angles: torch.Tensor, band_limit: int, discrete_order: int | None = None
) -> torch.Tensor:
    """Least-squares Fourier coefficients (2L+1,) of a logit sampled at equally spaced angles.

    values, angles: (n,). Returns [a_0, a_1..a_L, b_1..b_L] minimising sum_h (values - series)^2;
    on an equally spaced grid this is the truncated discrete Fourier transform, so any frequency
    above L (e.g. the 4-fold pattern of a C4-periodic density when L < 4) is simply lost.
    """
    if values.ndim != 1 or angles.shape != values.shape:
        raise ValueError(
            f"values and angles must both be (n,), got {tuple(values.shape)} and {tuple(angles.shape)}"
        )
    B = _fourier_basis(angles.to(values.dtype), band_limit)  # (2L+1, n)
    sol = torch.linalg.lstsq(B.T, values.unsqueeze(-1)).solution
    return sol.squeeze(-1)


def _fourier_basis(angles: torch.Tensor, band_limit: int) -> torch.Tensor:
    """Rows [1, cos(m theta) for m=1..L, sin(m theta) for m=1..L]: (2L+1, n)."""
    m = torch.arange(1, band_limit + 1, dtype=angles.dtype, device=angles.device)
    arg = m[:, None] * angles[None, :]
    ones = torch.ones(1, angles.numel(), dtype=angles.dtype, device=angles.device)
    return torch.cat([ones, torch.cos(arg), torch.sin(arg)], dim=0)


def group_angles_flips(group: Group) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Angle (radians) and flip (0/1) of every element of ``group``, in element order.

    Returns ``(angles (|H|,), flips (|H|,), number of rotations N, continuous?)``.
    """
    if isinstance(group, Dihedral):
        ks = [k for k, _ in group.elements]
        fs = [f for _, f in group.elements]
        n, cont = group.N, False
    elif isinstance(group, Rotations):
        ks, fs, n = list(group.elements), [0] * group.order, group.N
        cont = isinstance(group, SO2Grid)
    elif isinstance(group, Trivial):
        ks, fs, n, cont = [0], [0], 1, False
    else:
        raise TypeError(
            f"partial group convolutions need a rotation group (Rotations, SO2Grid, Dihedral or "
            f"Trivial), got {group!r}"
        )
    angles = torch.tensor([2 * math.pi * k / n for k in ks], dtype=torch.float32)
    return angles, torch.tensor(fs, dtype=torch.long), n, cont


class GroupDensity(nn.Module):
    """A learnable band-limited density lambda over C_N, SO(2) (grid), D_N or O(2) (grid).

    The grid of elements is given by ``angles`` (|H|,) and ``flips`` (|H|,) in {0, 1}; element h
    acts as "reflect if flips[h], then rotate by angles[h]". Index 0 must be the identity.
    Parameter ``coefficients``: (F, 2L+1) with F = 2 when the group has flips, else 1, laid out as
    [a_0, a_1..a_L, b_1..b_L] per coset. Use the constructors ``cyclic``, ``dihedral``, ``so2``,
    ``o2`` or ``for_group``. The density computes in the dtype of ``coefficients`` when they are
    given as a floating-point tensor (float64 stays float64), else in torch's default dtype.
    ``N`` is the number of rotations (the N of C_N, D_N or the SO(2) grid; |H| = N or 2N).
    When 2L = N, b_L multiplies sin(L theta) = 0 at every grid angle: it has no effect
    and no gradient (see ``n_free``).
    """

    def __init__(
        self,
        angles: torch.Tensor,
        flips: torch.Tensor | None,
        band_limit: int,
        N: int,
        continuous: bool = False,
        coefficients: torch.Tensor | None = None,
        gain: float = 1.0,
    ):
        super().__init__()
        if not (isinstance(gain, (int, float)) and gain > 0):
            raise ValueError(f"gain must be a positive number, got {gain!r}")
        self.gain = float(gain)
        if isinstance(coefficients, torch.Tensor) and coefficients.is_floating_point():
            dtype = coefficients.dtype
        else:
            dtype = torch.get_default_dtype()
        angles = torch.as_tensor(angles, dtype=torch.float64)
        if angles.ndim != 1 or angles.numel() < 1:
            raise ValueError(
                f"angles must be a non-empty 1-D tensor, got shape {tuple(angles.shape)}"
            )
        if flips is None:
            flips = torch.zeros(angles.numel(), dtype=torch.long)
        flips = torch.as_tensor(flips, dtype=torch.long)
        if flips.shape != angles.shape:
            raise ValueError(
                f"flips must have the shape of angles {tuple(angles.shape)}, got {tuple(flips.shape)}"
            )
        if not isinstance(band_limit, int) or isinstance(band_limit, bool) or band_limit < 0:
            raise ValueError(f"band_limit must be a non-negative int, got {band_limit!r}")
        max_l = N // 2
        if band_limit > max_l:
            what = f"an SO(2) grid of {N} angles" if continuous else f"C_{N}"
            raise ValueError(
                f"band_limit={band_limit} is above what {what} allows: at most N/2 = {max_l} "
                f"(higher frequencies alias onto lower ones on {N} rotations)"
            )
        if float(angles[0]) != 0.0 or int(flips[0]) != 0:
            raise ValueError("element 0 of the grid must be the identity (angle 0, no flip)")
        self.band_limit = band_limit
        self.N = N
        self.continuous = continuous
        self.has_flips = bool((flips != 0).any())
        n_cosets = 2 if self.has_flips else 1
        basis = _fourier_basis(angles, band_limit)  # (2L+1, |H|), in float64
        if band_limit > 0 and 2 * band_limit == N:
            basis[-1] = 0.0  # sin(L theta) on the grid: exactly zero, not float rounding of it
        self.register_buffer("angles", angles.to(dtype))
        self.register_buffer("flips", flips)
        self.register_buffer("basis", basis.to(dtype))
        shape = (n_cosets, 2 * band_limit + 1)
        if coefficients is None:
            coefficients = torch.zeros(shape, dtype=dtype)
        else:
            coefficients = torch.as_tensor(coefficients, dtype=dtype)
            if coefficients.ndim == 1 and n_cosets == 1:
                coefficients = coefficients.unsqueeze(0)
            if tuple(coefficients.shape) != shape:
                raise ValueError(
                    f"coefficients must have shape {shape} (cosets, 2L+1 = [a_0, a_1..a_L, "
                    f"b_1..b_L]) for band_limit={band_limit}, got {tuple(coefficients.shape)}"
                )
        self.coefficients = nn.Parameter(coefficients.clone())

    # ---------------------------------------------------------------- constructors
    @classmethod
    def cyclic(cls, N: int, band_limit: int, **kw) -> GroupDensity:
        """Density over C_N, element k = rotation by 2 pi k / N; band_limit <= N // 2."""
        _check_order(N)
        angles = 2 * math.pi * torch.arange(N, dtype=torch.float64) / N
        return cls(angles, None, band_limit, N=N, **kw)

    @classmethod
    def so2(cls, N: int, band_limit: int, **kw) -> GroupDensity:
        """Density over SO(2) evaluated on a grid of N equally spaced angles; band_limit <= N // 2."""
        _check_order(N)
        angles = 2 * math.pi * torch.arange(N, dtype=torch.float64) / N
        return cls(angles, None, band_limit, N=N, continuous=True, **kw)

    @classmethod
    def dihedral(cls, N: int, band_limit: int, **kw) -> GroupDensity:
        """Density over D_N: elements (k, f), index f * N + k; band_limit <= N // 2."""
        _check_order(N)
        angles = (2 * math.pi * torch.arange(N, dtype=torch.float64) / N).repeat(2)
        flips = torch.arange(2).repeat_interleave(N)
        return cls(angles, flips, band_limit, N=N, **kw)

    @classmethod
    def o2(cls, N: int, band_limit: int, **kw) -> GroupDensity:
        """Density over O(2) on a grid of N angles times {no flip, flip}; band_limit <= N // 2."""
        _check_order(N)
        angles = (2 * math.pi * torch.arange(N, dtype=torch.float64) / N).repeat(2)
        flips = torch.arange(2).repeat_interleave(N)
        return cls(angles, flips, band_limit, N=N, continuous=True, **kw)

    @classmethod
    def for_group(cls, group, band_limit: int, **kw) -> GroupDensity:
        """Density over the elements of an ``equilib.groups`` rotation group, in its element order."""
        angles, flips, n_rot, continuous = group_angles_flips(group)
        return cls(angles, flips, band_limit, N=n_rot, continuous=continuous, **kw)

    # ---------------------------------------------------------------- evaluation
    @property
    def order(self) -> int:
        """Number of grid elements |H|."""
        return self.angles.numel()

    @property
    def n_free(self) -> int:
        """Directions in coefficient space that change lambda: (2L+1) per coset, less b_L when
        2L = N, less one for the constant that the normalisation divides out."""
        per_coset = 2 * self.band_limit + 1
        if self.band_limit > 0 and 2 * self.band_limit == self.N:
            per_coset -= 1
        return per_coset * self.coefficients.shape[0] - 1

    def logits(self) -> torch.Tensor:
        """Logit on the grid: (|H|,), logit(h) = gain * coefficients[flip(h)] . basis(angle(h))."""
        per_coset = self.gain * (self.coefficients @ self.basis)  # (F, |H|)
        return per_coset.gather(0, self.flips.unsqueeze(0)).squeeze(0)

    def forward(self) -> torch.Tensor:
        """The density lambda on the grid: (|H|,), positive with mean 1 (uniform = 1)."""
        z = self.logits()
        return torch.softmax(z, dim=0) * self.order

    density = forward

    def weights(self) -> torch.Tensor:
        """Averaging weights w(h) = lambda(h) / |H|: (|H|,), non-negative, summing to 1."""
        return torch.softmax(self.logits(), dim=0)

    def entropy(self) -> torch.Tensor:
        """Normalised entropy of the weights: H(w) / log|H| (1 = uniform, 0 = a single element)."""
        return normalized_entropy(self.density())

    def kl_to_uniform(self) -> torch.Tensor:
        """KL(lambda || uniform) on the grid (>= 0, 0 iff uniform)."""
        z = self.logits()
        logw = torch.log_softmax(z, dim=0)
        return (logw.exp() * (logw + math.log(self.order))).sum()

    def kl(self, other: GroupDensity | torch.Tensor) -> torch.Tensor:
        """KL(self || other) on the shared grid; ``other`` a GroupDensity or grid values (|H|,)."""
        if isinstance(other, GroupDensity):
            if other.order != self.order:
                raise ValueError(
                    f"densities on different grids: {self.order} vs {other.order} elements"
                )
            logq = torch.log_softmax(other.logits(), dim=0)
        else:
            _check_density(other, "other")
            if other.numel() != self.order:
                raise ValueError(f"other must have {self.order} grid values, got {other.numel()}")
            logq = torch.log(other / other.sum())  # -inf where other vanishes: KL = inf
        logp = torch.log_softmax(self.logits(), dim=0)
        return (logp.exp() * (logp - logq.to(logp.dtype))).sum()

    def alignment(self) -> torch.Tensor:
        """max_h logit(h) - logit(identity) >= 0: zero iff the density peaks at the identity."""
        z = self.logits()
        return z.max() - z[0]

    def extra_repr(self) -> str:
        kind = (
            ("O(2)" if self.continuous else "D")
            if self.has_flips
            else ("SO(2)" if self.continuous else "C")
        )
        return f"group={kind}, N={self.N}, band_limit={self.band_limit}"


def _check_order(N) -> None:
    if not isinstance(N, int) or isinstance(N, bool) or N < 1:
        raise ValueError(f"the number of rotations N must be a positive int, got {N!r}")
