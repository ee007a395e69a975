"""What the connectivity and feature-map figures show: layers as matrices, filters, responses.

Every affine layer ``f: (C, H, W) -> (C', H', W')`` is a matrix ``M: (C'H'W', CHW)`` plus a bias.
A convolution's matrix is banded and its rows are shifted copies of one filter (weight sharing);
an FC layer's rows are unrelated. All functions are pure tensor computations; drawing lives in
``equilib.widgets.connectivity``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from equilib.groups import Group

__all__ = [
    "layer_matrix",
    "unit_weights",
    "nearest_circular_conv",
    "circular_conv_matrix",
    "weight_sharing_error",
    "shared_matrix",
    "block_outputs",
    "feature_map_response",
]


def _shape3(in_shape) -> tuple[int, int, int]:
    t = tuple(int(s) for s in in_shape)
    if len(t) != 3 or min(t) < 1:
        raise ValueError(f"in_shape must be (C, H, W) with positive sizes, got {in_shape!r}")
    return t


@torch.no_grad()
def layer_matrix(f: Callable[[torch.Tensor], torch.Tensor], in_shape) -> torch.Tensor:
    """The matrix of an affine map ``f`` on ``(C, H, W)`` inputs: ``(out_numel, C*H*W)``.

    ``M[:, j] = f(e_j) - f(0)`` with ``e_j`` the j-th basis image (so the bias drops out). Only
    meaningful for affine ``f`` (a conv, an FC layer, a factored layer, a sum of those).
    """
    C, H, W = _shape3(in_shape)
    n = C * H * W
    ref = next((p for p in getattr(f, "parameters", lambda: [])()), None)
    kw = {"dtype": ref.dtype, "device": ref.device} if ref is not None else {}
    eye = torch.eye(n, **kw).view(n, C, H, W)
    zero = f(torch.zeros(1, C, H, W, **kw))
    cols = f(eye) - zero
    return cols.reshape(n, -1).T.contiguous()


def unit_weights(matrix: torch.Tensor, in_shape, unit: int) -> torch.Tensor:
    """Row ``unit`` of a layer matrix as an image over input positions: ``(C, H, W)``.

    These are the weights with which output unit ``unit`` (flat index into ``(C', H', W')``)
    reads every input pixel: a local patch around its position for a conv, anything for FC.
    """
    C, H, W = _shape3(in_shape)
    if matrix.ndim != 2 or matrix.shape[1] != C * H * W:
        raise ValueError(f"matrix must be (out, {C * H * W}), got {tuple(matrix.shape)}")
    if not 0 <= unit < matrix.shape[0]:
        raise ValueError(f"unit must be in [0, {matrix.shape[0]}), got {unit}")
    return matrix[unit].reshape(C, H, W)


def circular_conv_matrix(weight: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """The ``(C'HW, CHW)`` matrix of a stride-1 circular cross-correlation with ``weight``.

    ``weight: (C', C, k, k)`` (odd ``k``), ``M[(c', y), (c, y + d)] = weight[c', c, d + k//2]``
    with positions taken mod ``(H, W)``: one filter copied along every (wrapped) diagonal band.
    """
    Co, C, k, k2 = weight.shape
    if k != k2 or k % 2 == 0:
        raise ValueError(f"weight must be (C', C, k, k) with odd k, got {tuple(weight.shape)}")
    M = weight.new_zeros(Co, H, W, C, H, W)
    r = k // 2
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    for i in range(k):
        for j in range(k):
            yi, xj = (ys + i - r) % H, (xs + j - r) % W
            M[:, ys, xs, :, yi, xj] += weight[:, :, i, j].expand(H, W, Co, C)
    return M.reshape(Co * H * W, C * H * W)


def nearest_circular_conv(matrix: torch.Tensor, in_shape, out_channels: int) -> torch.Tensor:
    """The full-size circular filter ``(C', C, H, W)`` closest to a stride-1 layer matrix.

    Weight sharing means ``M[(c', y), (c, x)]`` depends only on ``x - y`` (mod the image size);
    the least-squares projection onto such matrices averages ``M`` along each wrapped diagonal:
    ``theta[c', c, d] = mean_y M[(c', y), (c, y + d)]``.
    """
    C, H, W = _shape3(in_shape)
    M = matrix.reshape(out_channels, H, W, C, H, W)
    theta = matrix.new_zeros(out_channels, C, H, W)
    for dy in range(H):
        for dx in range(W):
            rolled = torch.roll(M, shifts=(-dy, -dx), dims=(4, 5))  # column y+d -> y
            diag = torch.diagonal(torch.diagonal(rolled, dim1=1, dim2=4), dim1=1, dim2=3)
            theta[:, :, dy, dx] = diag.mean(dim=(-2, -1))
    return theta


def weight_sharing_error(matrix: torch.Tensor, in_shape, out_channels: int) -> float:
    """How far a stride-1 layer is from a circular convolution: ``|M - P(M)| / |M|``.

    ``P`` projects onto circular convolutions (``nearest_circular_conv``): 0 for any circular
    conv, close to 1 for a random FC layer.
    """
    C, H, W = _shape3(in_shape)
    theta = nearest_circular_conv(matrix, in_shape, out_channels)
    P = shared_matrix(theta)
    return float((matrix - P).norm() / matrix.norm().clamp_min(1e-30))


def shared_matrix(theta: torch.Tensor) -> torch.Tensor:
    """The matrix ``M[(c', y), (c, y + d)] = theta[c', c, d]`` (positions mod ``(H, W)``).

    ``theta: (C', C, H, W)`` is a full-size circular filter indexed by displacement ``d``.
    """
    Co, C, H, W = theta.shape
    M = theta.new_zeros(Co, H, W, C, H, W)
    for y in range(H):
        for x in range(W):
            M[:, y, x] = torch.roll(theta, shifts=(y, x), dims=(-2, -1))
    return M.reshape(Co * H * W, C * H * W)


@torch.no_grad()
def block_outputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every block of an ``equilib.models`` model for input ``x: (B, C, H, W)``."""
    outs, h = [], x
    model.features(x)  # validates the input shape
    for block in model.blocks:
        h = block(h)
        outs.append(h)
    return outs


@torch.no_grad()
def feature_map_response(
    model: torch.nn.Module, x: torch.Tensor, group: Group, g, fmap: bool = False
) -> dict:
    """Feature maps of every block for ``x`` and ``g.x``, and their equivariance errors.

    Returns ``{"x", "gx", "f_x": [...], "f_gx": [...], "g_fx": [...], "errors": [...]}`` where
    ``g_fx[i]`` transforms block ``i``'s output of ``x`` by ``g`` (``fmap=True``: the regular
    action on a group axis). For shifts, ``errors[i] = min over output shifts t of
    |f_gx - shift_t(f_x)| / |f_x|`` (polyphase striding moves features by whole output pixels,
    not always by the input shift divided by the stride), and ``g_fx[i]`` is ``f_x`` shifted by
    the ``t`` that attains it (the input shift divided by the total stride so far when that
    does as well); otherwise the plain relative error.
    """
    gx = group.act(g, x)
    f_x, f_gx = block_outputs(model, x), block_outputs(model, gx)
    g_fx, errors = [], []
    for a, b in zip(f_x, f_gx):
        if isinstance(g, tuple) and len(g) == 2 and getattr(group, "name", "") == "shifts":
            s = x.shape[-1] // a.shape[-1]
            h, w = a.shape[-2:]
            nominal = ((g[0] // s) % h, (g[1] // s) % w)
            gaps = {
                (i, j): float((b - torch.roll(a, (i, j), dims=(-2, -1))).norm())
                for i in range(h)
                for j in range(w)
            }
            err = min(gaps.values())
            # the drawn g.f(x) is the output shift that attains the error (after a strided
            # block a shift by an odd number of pixels need not move the features by g // s);
            # the shift by g // s where it does as well
            best = nominal if gaps[nominal] <= err else min(gaps, key=gaps.get)
            ga = torch.roll(a, best, dims=(-2, -1))
        else:
            ga = group.act_fmap(g, a) if fmap else group.act(g, a)
            err = float((b - ga).norm())
        g_fx.append(ga)
        errors.append(err / max(float(a.norm()), 1e-30))
    return {
        "x": x,
        "gx": gx,
        "f_x": f_x,
        "f_gx": f_gx,
        "g_fx": g_fx,
        "errors": errors,
        "sizes": [tuple(a.shape[1:]) for a in f_x],
        "numel": [math.prod(a.shape[1:]) for a in f_x],
    }
