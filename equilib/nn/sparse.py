"""Sparsified layers: spatial weights interpolated from a few anchor points with an RBF kernel.

For a spatial grid of P points and M anchor points ``Z``, with the kernel
``k(z, z') = exp(-0.5 |z - z'|^2 / l^2)``, the interpolation basis is

    Psi = (K_ZZ + sigma_n^2 I)^-1 K_Z,grid        (M, P)

and a weight over the grid is ``u @ Psi``: linear in the anchor values ``u``. With the anchors on
the grid points ``Psi`` is (nearly) the identity, so the layer starts as its plain counterpart.
Fewer anchors = fewer parameters: ``anchors=m`` places ``m`` anchors per spatial axis, evenly
spaced from the first to the last grid point, and the lengthscale ``l`` defaults to the spacing
between neighbouring anchors, so the interpolated weights stay smooth between them.

* S-CONV: ``SparseConv2d`` = ``BasisConv2d`` with ``Psi`` over the ``k x k`` filter grid.
* S-FC: ``SparseFactoredLinear`` = ``FactoredLinear`` with ``Psi`` over the input grid (for
  ``U``) and over the output grid (for ``V``).
"""

from __future__ import annotations

import torch

from equilib.nn.conv import BasisConv2d, _check_kernel
from equilib.nn.linear import FactoredLinear, check_shape

__all__ = ["anchor_grid", "rbf_basis", "SparseConv2d", "SparseFactoredLinear"]


def _grid(h: int, w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    return torch.stack([ys, xs], -1).reshape(-1, 2)


def _check_anchors(size: tuple[int, int], anchors) -> tuple[int, int]:
    a = (anchors, anchors) if isinstance(anchors, int) else tuple(anchors)
    if len(a) != 2 or not all(isinstance(v, int) for v in a):
        raise ValueError(f"anchors must be an int or a pair of ints (per axis), got {anchors!r}")
    for n, m in zip(size, a):
        if m < 1 or m > n:
            raise ValueError(
                f"anchors per axis must be between 1 and the grid size {size} "
                f"(at least one anchor, so the layer keeps parameters), got {a}"
            )
    return a


def anchor_grid(size: tuple[int, int], anchors) -> torch.Tensor:
    """Anchor positions ``(M, 2)`` (row, col): ``anchors`` per axis, evenly spaced on the grid.

    ``anchors == size`` puts one anchor on every grid point. A single anchor sits in the centre.
    """
    h, w = size
    mh, mw = _check_anchors((h, w), anchors)
    ay = (
        torch.linspace(0, h - 1, mh, dtype=torch.float64)
        if mh > 1
        else torch.tensor([(h - 1) / 2], dtype=torch.float64)
    )
    ax = (
        torch.linspace(0, w - 1, mw, dtype=torch.float64)
        if mw > 1
        else torch.tensor([(w - 1) / 2], dtype=torch.float64)
    )
    ys, xs = torch.meshgrid(ay, ax, indexing="ij")
    return torch.stack([ys, xs], -1).reshape(-1, 2)


def rbf_basis(
    size: tuple[int, int], anchors, lengthscale: float | None = None, noise: float = 1e-6
) -> torch.Tensor:
    """RBF interpolation basis ``Psi = (K_ZZ + noise I)^-1 K_Z,grid``: ``(M, h*w)`` float32.

    ``size = (h, w)``: the grid; ``anchors``: per-axis count (int or pair); ``lengthscale``:
    defaults to the largest spacing between neighbouring anchors (1 when anchors are on the
    grid). Computed in float64.
    """
    h, w = int(size[0]), int(size[1])
    mh, mw = _check_anchors((h, w), anchors)
    Z = anchor_grid((h, w), (mh, mw))
    if lengthscale is None:
        spacing = [(n - 1) / (m - 1) if m > 1 else max(n - 1, 1) for n, m in ((h, mh), (w, mw))]
        lengthscale = max(max(spacing), 1.0)
    if lengthscale <= 0 or noise < 0:
        raise ValueError(f"need lengthscale > 0 and noise >= 0, got {lengthscale}, {noise}")

    def k(a, b):
        return torch.exp(-0.5 * torch.cdist(a, b).pow(2) / lengthscale**2)

    Kzz = k(Z, Z) + noise * torch.eye(len(Z), dtype=torch.float64)
    return torch.linalg.solve(Kzz, k(Z, _grid(h, w))).float()


class SparseConv2d(BasisConv2d):
    """S-CONV: a ``k x k`` convolution whose filters are interpolated from ``anchors^2`` values.

    ``x: (B, C, H, W) -> (B, C', H/stride, W/stride)``; ``weight: (C', C, M)``, filter
    ``(weight @ Psi).view(C', C, k, k)`` with ``Psi = rbf_basis((k, k), anchors)``. Weights:
    ``C'C M`` with ``M = anchors^2`` (``anchors = k``: anchors on every filter tap).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        anchors=None,
        lengthscale: float | None = None,
        bias: bool = True,
        stride: int = 1,
        padding_mode: str = "circular",
    ):
        _check_kernel(kernel_size)
        anchors = kernel_size if anchors is None else anchors
        basis = rbf_basis((kernel_size, kernel_size), anchors, lengthscale)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            basis,
            bias=bias,
            stride=stride,
            padding_mode=padding_mode,
        )
        self.anchors = _check_anchors((kernel_size, kernel_size), anchors)


class SparseFactoredLinear(FactoredLinear):
    """S-FC: the factored FC layer with both spatial factors interpolated from anchors.

    ``(B, C, H, W) -> (B, C', H', W')``; ``U = u @ Psi_in`` with ``Psi_in = rbf_basis((H, W),
    anchors_in)``, ``V = v @ Psi_out`` with ``Psi_out = rbf_basis((H', W'), anchors_out)``.
    Weights: ``C'C(M_x + M_y)``.
    """

    def __init__(
        self,
        in_shape,
        out_shape,
        anchors_in=None,
        anchors_out=None,
        bias: bool = True,
        lengthscale: float | None = None,
    ):
        C, H, W = check_shape(in_shape, "in_shape")
        Co, Ho, Wo = check_shape(out_shape, "out_shape")
        anchors_in = (H, W) if anchors_in is None else anchors_in
        anchors_out = (Ho, Wo) if anchors_out is None else anchors_out
        super().__init__(
            in_shape,
            out_shape,
            bias=bias,
            basis_in=rbf_basis((H, W), anchors_in, lengthscale),
            basis_out=rbf_basis((Ho, Wo), anchors_out, lengthscale),
        )
        self.anchors_in = _check_anchors((H, W), anchors_in)
        self.anchors_out = _check_anchors((Ho, Wo), anchors_out)
