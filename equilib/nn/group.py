"""Group convolutions for rotations: lifting and group convolutions for C4 (exact) and C_N.

Feature maps with a group axis have shape ``(B, C, N, H, W)``; rotation ``g`` acts on them by
the regular representation ``(g.f)[:, :, h] = rot_g(f[:, :, h - g])`` (rotate space, roll the
group axis), as ``equilib.groups.Rotations(N).act_fmap`` does.

* Lifting convolution: ``y[:, :, g] = conv_{rot_g w}(x) = rot_g(conv_w(rot_{-g} x))``.
* Group convolution: ``y[:, :, g] = conv_{T_g w}(x)`` with ``T_g`` = rotate the filter and roll
  its group axis by ``g``; equivalently ``rot_g(conv_w(T_{-g} x))``.

The C4 modules use the second form: the N transformed copies of the *input* are stacked along
the batch axis and pass through one inner ``nn.Conv2d``, then each output is rotated back. For
quarter turns every step is an exact permutation of pixels, so the layers are exactly
equivariant. For other N the filters are rotated by bilinear interpolation on the ``k x k`` grid
(``LiftingConvCN``, ``GroupConvCN``): equivariance then holds only approximately.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from equilib.nn.conv import PADDING_MODES, check_padding_mode, conv2d, pad2d

__all__ = [
    "LiftingConv2d",
    "GroupConv2d",
    "RotationPooledConv2d",
    "GroupPool",
    "rotation_interpolation_matrix",
    "LiftingConvCN",
    "GroupConvCN",
]


def _quarter_steps(N: int) -> int:
    if isinstance(N, bool) or N not in (1, 2, 4):
        raise ValueError(
            f"exact rotation layers support N in (1, 2, 4) (multiples of 90 degrees), got N={N!r};"
            f" use LiftingConvCN / GroupConvCN for other N"
        )
    return 4 // N


def _check_odd(k) -> int:
    if not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise ValueError(
            f"rotation-equivariant convs need an odd kernel_size >= 1 (a filter "
            f"with a centre pixel), got {k!r}"
        )
    return k


class LiftingConv2d(nn.Module):
    """Lifting convolution for C_N, N in (1, 2, 4): ``(B, C, H, W) -> (B, C', N, H, W)``.

    ``y[:, :, g] = rot_g(conv(rot_{-g} x))`` with one inner ``nn.Conv2d`` (``self.conv``,
    circular padding, stride 1) applied once to the ``N`` rotated copies stacked on the batch
    axis. Requires square inputs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        N: int = 4,
        padding_mode: str = "circular",
        bias: bool = True,
    ):
        super().__init__()
        check_padding_mode(padding_mode, PADDING_MODES, type(self).__name__)
        self._q = _quarter_steps(N)
        self.N = N
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv = conv2d(
            in_channels * self._group_in(),
            out_channels,
            _check_odd(kernel_size),
            padding_mode=padding_mode,
            bias=bias,
        )

    def _group_in(self) -> int:
        return 1

    def _transform_input(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """``rot_{-g} x`` on images ``(B, C, H, W)``."""
        return torch.rot90(x, -g * self._q, dims=(-2, -1))

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-1] != x.shape[-2]:
            raise ValueError(
                f"{type(self).__name__} expects square input (B, {self.in_channels}, "
                f"H, H), got {tuple(x.shape)}"
            )

    def lifted(self, x: torch.Tensor) -> torch.Tensor:
        """The lifted feature map ``(B, C', N, H, W)``."""
        self._check(x)
        B = x.shape[0]
        stacked = torch.cat([self._transform_input(x, g) for g in range(self.N)], dim=0)
        y = self.conv(stacked.flatten(1, -3)).unflatten(0, (self.N, B))  # (N, B, C', H, W)
        outs = [torch.rot90(y[g], g * self._q, dims=(-2, -1)) for g in range(self.N)]
        return torch.stack(outs, dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lifted(x)

    def extra_repr(self) -> str:
        return f"N={self.N}"


class GroupConv2d(LiftingConv2d):
    """Group convolution for C_N, N in (1, 2, 4): ``(B, C, N, H, W) -> (B, C', N, H, W)``.

    ``y[:, :, g] = rot_g(conv(T_{-g} x))`` where ``T_{-g}`` rotates space by ``-g`` and rolls
    the group axis by ``-g``; one inner ``nn.Conv2d(C*N, C', k)`` on the stacked copies.
    """

    def _group_in(self) -> int:
        return self.N

    def _transform_input(self, x: torch.Tensor, g: int) -> torch.Tensor:
        return torch.rot90(torch.roll(x, -g, dims=2), -g * self._q, dims=(-2, -1))

    def _check(self, x: torch.Tensor) -> None:
        if (
            x.ndim != 5
            or x.shape[1] != self.in_channels
            or x.shape[2] != self.N
            or x.shape[-1] != x.shape[-2]
        ):
            raise ValueError(
                f"GroupConv2d expects square input (B, {self.in_channels}, {self.N},"
                f" H, H), got {tuple(x.shape)}"
            )


class GroupPool(nn.Module):
    """Pool over the group axis: ``(B, C, N, H, W) -> (B, C, H, W)`` by ``max`` or ``mean``.

    Turns a regular-representation feature map into one that rotates as an ordinary image.
    """

    def __init__(self, mode: str = "max"):
        super().__init__()
        if mode not in ("max", "mean"):
            raise ValueError(f"group pooling mode must be 'max' or 'mean', got {mode!r}")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"GroupPool expects (B, C, N, H, W), got {tuple(x.shape)}")
        return x.amax(dim=2) if self.mode == "max" else x.mean(dim=2)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class RotationPooledConv2d(LiftingConv2d):
    """The ``gconv`` path of a soft block: lift to C_N, then max over the group axis.

    ``(B, C, H, W) -> (B, C', H, W)``, ``y = max_g rot_g(conv(rot_{-g} x))``: equivariant to
    rotations by multiples of ``360/N`` degrees (and to cyclic shifts), with image-like output so
    that it can be summed with ``conv`` and ``fc`` paths.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lifted(x).amax(dim=2)


# ------------------------------------------------------------------ C_N by filter rotation


def rotation_interpolation_matrix(
    kernel_size: int, angle: float, dtype=torch.float64
) -> torch.Tensor:
    """The ``(k*k, k*k)`` matrix ``R`` that rotates a ``k x k`` filter by ``angle`` (radians).

    ``vec(rot(w)) = R @ vec(w)``, counter-clockwise like ``torch.rot90(w, 1, dims=(-2, -1))``,
    bilinear interpolation about the centre pixel, zero outside the filter. Exact permutation for
    multiples of 90 degrees.
    """
    k = _check_odd(kernel_size)
    c = (k - 1) / 2
    cos, sin = math.cos(angle), math.sin(angle)
    R = torch.zeros(k * k, k * k, dtype=dtype)
    for i in range(k):
        for j in range(k):
            r, q = i - c, j - c
            # rot(w)(p) = w(R^-1 p); R^-1 (r, q) = (cos r + sin q, -sin r + cos q)
            sr, sq = cos * r + sin * q + c, -sin * r + cos * q + c
            r0, q0 = math.floor(sr + 1e-9), math.floor(sq + 1e-9)
            for dr in (0, 1):
                for dq in (0, 1):
                    rr, qq = r0 + dr, q0 + dq
                    wgt = (1 - abs(sr - rr)) * (1 - abs(sq - qq))
                    if 0 <= rr < k and 0 <= qq < k and wgt > 1e-12:
                        R[i * k + j, rr * k + qq] += wgt
    return R


class LiftingConvCN(nn.Module):
    """Lifting convolution for any C_N by interpolated filter rotation: ``(B,C,H,W)->(B,C',N,H,W)``.

    ``y[:, :, g] = conv_{rot_g w}(x)`` with ``rot_g`` the bilinear rotation by ``2 pi g / N``
    (``rotation_interpolation_matrix``); ``weight: (C', C, k, k)``. All N rotated filters are
    stacked into one ``conv2d`` call. Exact only when every ``2 pi g / N`` is a quarter turn.
    'Same' padding ``k // 2`` in ``padding_mode`` (one of ``PADDING_MODES``; others raise).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        N: int = 8,
        padding_mode: str = "circular",
        bias: bool = True,
    ):
        super().__init__()
        if not isinstance(N, int) or N < 1:
            raise ValueError(f"N must be a positive int, got {N!r}")
        k = _check_odd(kernel_size)
        self.N, self.k, self.in_channels, self.out_channels = N, k, in_channels, out_channels
        self.padding_mode = check_padding_mode(padding_mode, PADDING_MODES, type(self).__name__)
        rots = torch.stack(
            [rotation_interpolation_matrix(k, 2 * math.pi * g / N) for g in range(N)]
        )
        self.register_buffer("rotations", rots.float())  # (N, k*k, k*k)
        fan_in = in_channels * self._group_in() * k * k
        self.weight = nn.Parameter(
            torch.randn(out_channels, in_channels * self._group_in(), k, k) / math.sqrt(fan_in)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def _group_in(self) -> int:
        return 1

    def effective_weight(self) -> torch.Tensor:
        """The N transformed filters the layer convolves with: ``(N, C', C*N_in, k, k)``."""
        Co, k = self.out_channels, self.k
        w = self.weight.view(Co, self.in_channels, self._group_in(), k * k)
        rot = torch.einsum("gpq,dcnq->gdcnp", self.rotations, w)  # rotate space
        if self._group_in() > 1:  # roll the filter's group axis by g
            rot = torch.stack([torch.roll(rot[g], g, dims=2) for g in range(self.N)])
        return rot.reshape(self.N, Co, -1, k, k)

    def _check(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        B, H, W = x.shape[0], x.shape[-2], x.shape[-1]
        w = self.effective_weight()  # (N, C', Cin, k, k)
        p = self.k // 2
        xf = x.reshape(B, -1, H, W)
        if self.padding_mode == "zeros":
            pad = p
        else:
            xf, pad = pad2d(xf, p, p, self.padding_mode), 0
        y = nn.functional.conv2d(xf, w.flatten(0, 1), padding=pad)  # (B, N*C', H, W)
        y = y.view(B, self.N, self.out_channels, H, W).transpose(1, 2)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1, 1)
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.k}, N={self.N}, "
            f"padding_mode={self.padding_mode!r}"
        )


class GroupConvCN(LiftingConvCN):
    """Group convolution for any C_N by interpolated filter rotation: ``(B,C,N,H,W)->(B,C',N,H,W)``.

    ``y[:, :, g] = conv_{T_g w}(x)``, ``T_g`` = rotate the filter by ``2 pi g / N`` and roll its
    group axis by ``g``; ``weight: (C', C*N, k, k)`` with the input group axis inner.
    """

    def _group_in(self) -> int:
        return self.N

    def _check(self, x):
        if x.ndim != 5 or x.shape[1] != self.in_channels or x.shape[2] != self.N:
            raise ValueError(
                f"GroupConvCN expects (B, {self.in_channels}, {self.N}, H, W), got {tuple(x.shape)}"
            )
