"""Convolutions on the torus and striding that keeps shift equivariance.

A convolution with circular padding commutes exactly with cyclic shifts of its input; zero
padding breaks this at the border. Striding (keeping every s-th pixel) breaks it too, because a
one-pixel shift of the input changes *which* pixels are kept. Shift-equivariant striding picks
the polyphase component (one of the ``s*s`` sub-grids ``x[..., i::s, j::s]``) with the largest
norm (adaptive polyphase sampling, Chaman and Dokmanic 2021): a shifted input has the same
components in a permuted order, so the same component is chosen and the output is a shifted
copy of the unshifted output.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import nn

from equilib._checks import check_positive_int, is_int

__all__ = [
    "PADDING_MODES",
    "check_padding_mode",
    "torch_pad_mode",
    "pad2d",
    "circular_pad",
    "CircularConv2d",
    "conv2d",
    "BasisConv2d",
    "polyphase_components",
    "PolyphaseDownsample",
    "PlainDownsample",
    "MaxPoolDownsample",
    "window_maxima",
    "STRIDINGS",
    "downsample",
]


def _check_kernel(kernel_size) -> int:
    if not is_int(kernel_size) or kernel_size < 1:
        raise ValueError(
            f"kernel_size must be a positive int (a k x k filter with k >= 1), got {kernel_size!r}"
        )
    if kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd, got {kernel_size}: 'same' padding k // 2 keeps the image "
            "size only for a filter centred on its pixel"
        )
    return kernel_size


# padding modes by their ``nn.Conv2d`` names, and the name ``F.pad`` gives each
PADDING_MODES = ("zeros", "circular", "reflect", "replicate")
_F_PAD = {
    "zeros": "constant",
    "circular": "circular",
    "reflect": "reflect",
    "replicate": "replicate",
}


def check_padding_mode(mode, valid=PADDING_MODES, who: str = "padding_mode") -> str:
    """``mode`` if it is one of ``valid`` (``nn.Conv2d``'s names), else a ValueError naming
    ``who`` and listing the valid modes."""
    if not isinstance(mode, str) or mode not in valid:
        raise ValueError(f"{who}: padding_mode must be one of {tuple(valid)}, got {mode!r}")
    return mode


def torch_pad_mode(mode: str) -> str:
    """The ``F.pad`` mode of a padding mode named as in ``nn.Conv2d`` (``"zeros"`` is
    ``"constant"``); an unknown mode raises instead of falling back to another."""
    return _F_PAD[check_padding_mode(mode)]


def pad2d(x: torch.Tensor, ph: int, pw: int, mode: str) -> torch.Tensor:
    """``x: (..., H, W)`` padded by ``ph`` rows and ``pw`` columns per side in ``mode``
    (``nn.Conv2d``'s names; circular through ``circular_pad``)."""
    if mode == "circular":
        return circular_pad(x, ph, pw)
    mode = torch_pad_mode(mode)
    if ph == 0 and pw == 0:
        return x
    return nn.functional.pad(x, (pw, pw, ph, ph), mode=mode)


def _wrap(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """The periodic extension of ``x: (..., H, W)`` by ``ph`` rows and ``pw`` columns per side."""
    H, W = x.shape[-2:]
    if pw > 0:
        x = torch.cat([x[..., W - pw :], x, x[..., :pw]], dim=-1)
    if ph > 0:
        x = torch.cat([x[..., H - ph :, :], x, x[..., :ph, :]], dim=-2)
    return x


def _fold(g: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """The adjoint of ``_wrap``: every border row / column of ``g`` is added back onto the
    row / column of the interior it copies. ``g: (..., H + 2 ph, W + 2 pw) -> (..., H, W)``.

    Rows first, then columns (the corners travel with the rows): two copies and four strip
    additions, measured faster than one copy with eight additions for padding wider than one.
    """
    H, W = g.shape[-2] - 2 * ph, g.shape[-1] - 2 * pw
    if ph > 0:  # bottom strip -> top rows, top strip -> bottom rows
        out = g[..., ph : ph + H, :].clone()
        out[..., :ph, :] += g[..., ph + H :, :]
        out[..., H - ph :, :] += g[..., :ph, :]
        g = out
    if pw > 0:  # right strip -> left columns, left strip -> right columns
        out = g[..., pw : pw + W].clone()
        out[..., :pw] += g[..., pw + W :]
        out[..., W - pw :] += g[..., :pw]
        g = out
    return g


def _linear_op(fn, name: str) -> type[torch.autograd.Function]:
    """An autograd function for the linear map ``fn(x, ph, pw)``: its backward pass applies
    the function set as its ``adjoint`` (so gradients of gradients stay cheap too) and its
    forward-mode derivative applies ``fn`` to the tangent."""

    class Op(torch.autograd.Function):
        generate_vmap_rule = True
        adjoint: type[torch.autograd.Function]

        @staticmethod
        def forward(x, ph, pw):
            return fn(x, ph, pw)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.ph, ctx.pw = inputs[1], inputs[2]

        @staticmethod
        def backward(ctx, g):
            return Op.adjoint.apply(g, ctx.ph, ctx.pw), None, None

        @staticmethod
        def jvp(ctx, t, *_):
            return Op.apply(t, ctx.ph, ctx.pw)

    Op.__name__ = Op.__qualname__ = name
    return Op


# ``_wrap`` with ``_fold`` as its backward pass: one copy of the interior and thin strip
# additions, where autograd's own backward of the concatenations allocates, zero-fills and sums
# a full-size gradient for every slice
_CircularPad = _linear_op(_wrap, "_CircularPad")
_CircularFold = _linear_op(_fold, "_CircularFold")
_CircularPad.adjoint, _CircularFold.adjoint = _CircularFold, _CircularPad


def circular_pad(x: torch.Tensor, ph: int, pw: int | None = None) -> torch.Tensor:
    """Pad the last two axes of ``x: (..., H, W)`` periodically: ``(..., H + 2 ph, W + 2 pw)``.

    The same values as ``F.pad(x, (pw, pw, ph, ph), mode="circular")``, built from two
    concatenations; the backward pass folds the border of the gradient back onto the interior
    directly. Both are cheaper than ``F.pad`` on CPU (``benchmarks/bench_models.py`` times them
    in the same run).
    """
    pw = ph if pw is None else pw
    H, W = x.shape[-2:]
    if ph < 0 or pw < 0:
        raise ValueError(f"circular padding must be non-negative, got ({ph}, {pw})")
    if ph > H or pw > W:
        raise ValueError(f"circular padding ({ph}, {pw}) is larger than the input {H}x{W}")
    if ph == 0 and pw == 0:
        return x
    return _CircularPad.apply(x, ph, pw)


class CircularConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose circular padding goes through ``circular_pad`` (same outputs).

    A subclass, so everything that understands ``nn.Conv2d`` (the Laplace curvature, hooks)
    keeps working; other padding modes behave exactly as in ``nn.Conv2d``.
    """

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "circular":
            return super()._conv_forward(input, weight, bias)
        ph, pw = self.padding
        return nn.functional.conv2d(
            circular_pad(input, ph, pw), weight, bias, self.stride, 0, self.dilation, self.groups
        )


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    padding_mode: str = "circular",
    bias: bool = True,
) -> nn.Conv2d:
    """A ``k x k`` ``nn.Conv2d`` with 'same' padding ``k // 2``, He-normal weights, zero bias.

    ``x: (B, C, H, W) -> (B, C', H/stride, W/stride)``. ``padding_mode``: ``"circular"`` (exact
    shift equivariance for odd ``k``), ``"zeros"`` (breaks it at the border), ``"reflect"`` or
    ``"replicate"`` (``PADDING_MODES``; anything else raises).
    """
    k = _check_kernel(kernel_size)
    check_padding_mode(padding_mode, PADDING_MODES, "conv2d")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    conv = CircularConv2d(
        in_channels,
        out_channels,
        k,
        stride=stride,
        padding=k // 2,
        padding_mode=padding_mode,
        bias=bias,
    )
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # std sqrt(2 / (C k^2))
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


class BasisConv2d(nn.Module):
    """A convolution whose ``k x k`` filters are linear in a few coefficients: ``w = weight @ basis``.

    ``weight: (C', C, M)``, fixed ``basis: (M, k*k)``; effective filter
    ``(weight @ basis).view(C', C, k, k)``, 'same' padding ``k // 2`` in ``padding_mode``
    (one of ``PADDING_MODES``).
    ``x: (B, C, H, W) -> (B, C', H/stride, W/stride)``. With an RBF basis this is the
    sparsified convolution S-CONV (see ``equilib.nn.sparse``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        basis: torch.Tensor,
        bias: bool = True,
        stride: int = 1,
        padding_mode: str = "circular",
    ):
        super().__init__()
        k = _check_kernel(kernel_size)
        if not isinstance(basis, torch.Tensor) or basis.ndim != 2 or basis.shape[1] != k * k:
            got = tuple(basis.shape) if isinstance(basis, torch.Tensor) else type(basis).__name__
            raise ValueError(f"basis must be a tensor (M, k*k={k * k}), got {got}")
        if basis.shape[0] < 1:
            raise ValueError("basis must have at least one row (M >= 1): no parameters otherwise")
        check_padding_mode(padding_mode, PADDING_MODES, type(self).__name__)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (k, k)
        self.stride = (stride, stride)
        self.padding = (k // 2, k // 2)
        self.padding_mode = padding_mode
        self.register_buffer("basis", basis.detach().clone().float())
        m = basis.shape[0]
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, m))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        with torch.no_grad():  # effective filter entries of size sqrt(2 / (C k^2)) (He init)
            std = (2.0 / (in_channels * k * k)) ** 0.5
            target = torch.randn(out_channels * in_channels, k * k, dtype=torch.float64) * std
            sol = torch.linalg.lstsq(self.basis.T.double(), target.T).solution  # (M, C'C)
            self.weight.copy_(sol.T.reshape(out_channels, in_channels, m).float())

    def effective_weight(self) -> torch.Tensor:
        """The effective filter ``(C', C, k, k)``: ``(weight @ basis)`` reshaped."""
        return (self.weight @ self.basis).view(
            self.out_channels, self.in_channels, *self.kernel_size
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"BasisConv2d expects input (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        p = self.padding[0]
        if self.padding_mode == "zeros":
            pad = p
        else:
            x, pad = pad2d(x, p, p, self.padding_mode), 0
        return nn.functional.conv2d(
            x, self.effective_weight(), self.bias, stride=self.stride, padding=pad
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"basis=({self.basis.shape[0]}, {self.basis.shape[1]}), stride={self.stride}, "
            f"padding_mode={self.padding_mode!r}"
        )


def _check_stride_input(x: torch.Tensor, stride: int) -> None:
    if x.ndim < 3:
        raise ValueError(f"downsampling expects (B, ..., H, W), got {tuple(x.shape)}")
    H, W = x.shape[-2:]
    if H % stride or W % stride:
        raise ValueError(
            f"spatial size {H}x{W} is not divisible by the stride {stride}; shift-equivariant "
            f"striding needs H and W to be multiples of the stride"
        )


def polyphase_components(x: torch.Tensor, stride: int) -> torch.Tensor:
    """The ``s*s`` polyphase components of ``x: (B, ..., H, W)``: ``(B, s*s, ..., H/s, W/s)``.

    Component ``i*s + j`` is ``x[..., i::s, j::s]``.
    """
    _check_stride_input(x, stride)
    comps = [x[..., i::stride, j::stride] for i in range(stride) for j in range(stride)]
    return torch.stack(comps, dim=1)


class PolyphaseDownsample(nn.Module):
    """Shift-equivariant striding: keep, per example, the polyphase component of largest norm.

    ``x: (B, ..., H, W) -> (B, ..., H/s, W/s)``. The norm is taken over every non-batch axis
    (all channels, and a group axis if there is one), so one phase is chosen per example and
    applied to all its channels consistently. ``forward(x, phase=...)`` reuses a given phase
    ``(B,)`` (e.g. the one chosen on the sum of several paths).
    """

    def __init__(self, stride: int):
        super().__init__()
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        self.stride = stride

    def choose_phase(self, x: torch.Tensor) -> torch.Tensor:
        """Index ``(B,)`` of the largest-norm polyphase component of each example
        (component ``i*s + j`` is ``x[..., i::s, j::s]``)."""
        _check_stride_input(x, self.stride)
        s = self.stride
        B, (H, W) = x.shape[0], x.shape[-2:]
        with torch.no_grad():
            # channels first (a reduction over contiguous planes), then the s x s grid: twice
            # as fast as one reduction over the strided axes
            energy = x.detach().pow(2).reshape(B, -1, H, W).sum(1)
            energy = energy.reshape(B, H // s, s, W // s, s).sum((1, 3))
        return energy.reshape(B, s * s).argmax(dim=1)

    def forward(self, x: torch.Tensor, phase: torch.Tensor | None = None) -> torch.Tensor:
        _check_stride_input(x, self.stride)
        if self.stride == 1:
            return x
        if phase is None:
            phase = self.choose_phase(x)
        s = self.stride
        B, (H, W) = x.shape[0], x.shape[-2:]
        if phase.shape != (B,):
            raise ValueError(f"phase must have shape ({B},), got {tuple(phase.shape)}")
        # one gather of the chosen sub-grid: its backward is a single scatter, far cheaper than
        # the backward of s*s stacked slices
        rows = torch.arange(0, H, s, device=x.device) * W
        cols = torch.arange(0, W, s, device=x.device)
        grid = (rows[:, None] + cols[None, :]).reshape(1, -1)  # (1, H/s * W/s)
        offset = (phase // s) * W + phase % s  # (B,)
        index = (grid + offset[:, None]).unsqueeze(1)  # (B, 1, H/s * W/s)
        flat = x.reshape(B, -1, H * W)
        out = flat.gather(2, index.expand(B, flat.shape[1], index.shape[2]))
        return out.reshape(*x.shape[:-2], H // s, W // s)

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


class PlainDownsample(nn.Module):
    """Ordinary striding ``x[..., ::s, ::s]`` (not shift equivariant; for comparison).

    ``x: (B, ..., H, W) -> (B, ..., H/s, W/s)``.
    """

    def __init__(self, stride: int):
        super().__init__()
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        self.stride = stride

    def forward(self, x: torch.Tensor, phase: torch.Tensor | None = None) -> torch.Tensor:
        _check_stride_input(x, self.stride)
        return x[..., :: self.stride, :: self.stride]

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


def window_maxima(x: torch.Tensor, stride: int) -> torch.Tensor:
    """The maximum of every non-overlapping ``stride x stride`` window of the last two axes:
    ``x: (..., H, W) -> (..., H/stride, W/stride)``, the values of ``max_pool2d`` (a NaN in a
    window gives NaN). Elementwise maxima of the strided rows, then of the strided columns:
    no indices are kept, so it is meant for passes without a backward (its gradient would split
    between tied entries where ``max_pool2d`` picks one)."""
    check_positive_int("stride", stride)
    if x.ndim < 2 or x.shape[-2] % stride or x.shape[-1] % stride:
        raise ValueError(
            f"window_maxima expects (..., H, W) with H and W multiples of the stride {stride}, "
            f"got {tuple(x.shape)}"
        )
    rows = x[..., 0::stride, :]
    for i in range(1, stride):
        rows = torch.maximum(rows, x[..., i::stride, :])
    out = rows[..., 0::stride]
    for j in range(1, stride):
        out = torch.maximum(out, rows[..., j::stride])
    return out


class MaxPoolDownsample(nn.Module):
    """Max pooling over non-overlapping ``s x s`` windows: ``x: (B, ..., H, W) -> (B, ..., H/s, W/s)``.

    Commutes exactly with cyclic shifts by multiples of ``s`` (the windows tile the grid, so such
    a shift permutes whole windows); a shift by one pixel regroups the windows and is not exactly
    equivariant, but each output keeps the strongest response of its window instead of one of
    its ``s*s`` pixels, which makes the features tolerant to small deformations.

    Without derivatives (evaluation, ``torch.no_grad`` and no forward-mode tangent) the maxima
    are taken as elementwise maxima of the strided sub-grids, the same values (NaN included)
    several times faster on the CPU than ``max_pool2d``, which also records where each maximum
    came from for a backward pass.
    """

    def __init__(self, stride: int):
        super().__init__()
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        self.stride = stride

    def forward(self, x: torch.Tensor, phase: torch.Tensor | None = None) -> torch.Tensor:
        _check_stride_input(x, self.stride)
        if self.stride == 1:
            return x
        H, W = x.shape[-2:]
        s = self.stride
        if not torch.is_grad_enabled() and _forward_ad.unpack_dual(x).tangent is None:
            return window_maxima(x, s)
        out = nn.functional.max_pool2d(x.reshape(-1, 1, H, W), s)
        return out.reshape(*x.shape[:-2], H // s, W // s)

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


#: striding modes of ``downsample`` (and of blocks and the model zoo)
STRIDINGS = ("polyphase", "max", "plain")


def downsample(stride: int, mode: str = "polyphase") -> nn.Module:
    """A striding module: ``"polyphase"`` (shift equivariant), ``"max"`` (max pooling; equivariant
    to shifts by multiples of the stride) or ``"plain"`` (``x[::s, ::s]``)."""
    modes = {"polyphase": PolyphaseDownsample, "max": MaxPoolDownsample, "plain": PlainDownsample}
    if mode not in modes:
        raise ValueError(f"unknown striding mode {mode!r}; valid: {sorted(modes)}")
    return modes[mode](stride)
