"""Partial group convolutions: kernels averaged over the group with a learned density lambda.

For a group H acting on kernels by ``h . K`` (rotate/reflect space, permute the group axes of
the regular representation), the layer's kernel is the lambda-weighted average

    K_lambda = sum_h w(h) (h . K),   w(h) = lambda(h) / |H|  (sum_h w(h) = 1),

of an unconstrained kernel ``K``. Uniform lambda gives the group average (Reynolds operator),
the projection onto equivariant kernels, so the layer is exactly equivariant; lambda
concentrated at the identity gives ``K`` itself, the unconstrained layer; in between the layer
is partially equivariant. Lifting kernels ``K: (C', |H|, C, k, k)`` are transformed as
``(h . K)[:, g] = h . K[:, h^-1 g]``; group kernels ``K: (C', |H|, C, |H|, k, k)`` as
``(h . K)[:, g, :, g'] = h . K[:, h^-1 g, :, h^-1 g']``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from equilib.degree.density import GroupDensity, group_angles_flips
from equilib.groups import Dihedral, Group, Rotations, SO2Grid
from equilib.nn.conv import PADDING_MODES, check_padding_mode, circular_pad, torch_pad_mode

__all__ = ["PartialLiftingConv", "PartialGroupConv", "group_angles_flips", "make_group"]


def make_group(name: str) -> Group:
    """A rotation group from its name: ``C4``, ``C8``, ``D4``, ``SO2-16`` (a 16-angle grid)..."""
    if not isinstance(name, str):
        raise TypeError(f"group name must be a string like 'C4', 'D4' or 'SO2-16', got {name!r}")
    try:
        if not name:
            raise ValueError
        if name.upper().startswith("SO2-"):
            return SO2Grid(int(name[4:]))
        if name[0].upper() == "C":
            return Rotations(int(name[1:]))
        if name[0].upper() == "D":
            return Dihedral(int(name[1:]))
    except ValueError:
        pass
    raise ValueError(f"unknown group {name!r}; expected 'C<N>', 'D<N>' or 'SO2-<n>', e.g. 'C4'")


def _check_weights(w: torch.Tensor, order: int) -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise TypeError(
            f"weights must be a torch.Tensor of shape ({order},), got {type(w).__name__}"
        )
    if w.shape != (order,):
        raise ValueError(
            f"weights must have shape ({order},) (one per group element), got {tuple(w.shape)}"
        )
    if bool((w < 0).any()):
        raise ValueError("weights must be non-negative (a density over the group)")
    total = w.sum()
    if float(total) <= 0:
        raise ValueError("weights must not all be zero")
    return w / total


class _PartialBase(nn.Module):
    """Shared machinery: the group, its density, the permutation table, the weighted average."""

    def __init__(self, group, density: GroupDensity | None, band_limit: int | None):
        super().__init__()
        if isinstance(group, str):
            group = make_group(group)
        group_angles_flips(group)  # validates the kind of group
        self.group = group
        order = group.order
        if density is None:
            _, _, n_rot, _ = group_angles_flips(group)
            L = n_rot // 2 if band_limit is None else band_limit
            density = GroupDensity.for_group(group, L)
        elif not isinstance(density, GroupDensity):
            raise TypeError(f"density must be a GroupDensity, got {type(density).__name__}")
        elif density.order != order:
            raise ValueError(f"density has {density.order} grid elements but the group has {order}")
        self.density = density
        perms = [group.permutation(h) for h in group.elements]
        self.register_buffer("perm", torch.tensor(perms, dtype=torch.long))  # (|H|, |H|)
        self._kernel_override = None  # a kernel to use instead of K_lambda (per-example GGN)

    def _init_kernel(
        self, in_channels, out_channels, kernel_size, padding_mode, bias, shape, fan_in
    ):
        """Store the sizes, an unconstrained He-normal kernel of ``shape`` and a zero bias (C',)."""
        if kernel_size % 2 != 1:
            raise ValueError(
                f"kernel_size must be odd (a centre pixel to rotate about), got {kernel_size}"
            )
        self.in_channels, self.out_channels, self.kernel_size = (
            in_channels,
            out_channels,
            kernel_size,
        )
        self.padding_mode = check_padding_mode(padding_mode, PADDING_MODES, type(self).__name__)
        std = math.sqrt(2.0 * self.group.order / fan_in)
        self.weight = nn.Parameter(torch.randn(shape) * std)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def _conv(self, x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """Circular-padded conv of ``x: (B, C_in, H, W)`` with ``W: (C'|H|, C_in, k, k)``.

        Returns ``(B, C', |H|, H, W)`` with the bias shared over the group axis.
        """
        p = self.kernel_size // 2
        if p and self.padding_mode == "circular":
            xp = circular_pad(x, p)
        else:
            xp = F.pad(x, (p, p, p, p), mode=torch_pad_mode(self.padding_mode)) if p else x
        y = F.conv2d(xp, W).unflatten(1, (self.out_channels, self.group.order))
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1, 1)
        return y

    def averaging_weights(self, weights: torch.Tensor | None = None) -> torch.Tensor:
        """w(h) = lambda(h) / |H|: (|H|,), from the density or from explicit ``weights``."""
        if weights is None:
            return self.density.weights()
        return _check_weights(weights, self.group.order)

    def transformed_kernels(self, K: torch.Tensor | None = None) -> torch.Tensor:
        """All |H| transformed copies ``h . K`` of ``K`` (default ``weight``): (|H|, *K.shape)."""
        raise NotImplementedError

    def effective_weight(self, weights: torch.Tensor | None = None) -> torch.Tensor:
        """K_lambda = sum_h w(h) (h . K): same shape as ``weight``."""
        if self._kernel_override is not None and weights is None:
            return self._kernel_override
        w = self.averaging_weights(weights).to(self.weight.dtype)
        stack = self.transformed_kernels()
        return torch.tensordot(w, stack, dims=1)

    def equivariance_error(self, x: torch.Tensor) -> float:
        """This layer's own max_h |f(h.x) - h.f(x)| / |f(x)| on inputs ``x`` (square images)."""
        from equilib.groups import equivariance_error

        in_action = "image" if isinstance(self, PartialLiftingConv) else "fmap"
        return equivariance_error(self, self.group, x, in_action=in_action, out_action="fmap")


class PartialLiftingConv(_PartialBase):
    """Lifting convolution Z^2 -> H x Z^2 with a lambda-averaged kernel.

    x: (B, C, H, W) -> (B, C', |H|, H, W). Parameter ``weight`` (C', |H|, C, k, k) is the
    unconstrained kernel; ``bias`` (C',) is shared over the group axis (equivariant).
    Circular padding k//2 keeps rotations of square images exact symmetries of the layer.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        group: Group | str = "C4",
        density: GroupDensity | None = None,
        band_limit: int | None = None,
        bias: bool = True,
        padding_mode: str = "circular",
    ):
        super().__init__(group, density, band_limit)
        G = self.group.order
        shape = (out_channels, G, in_channels, kernel_size, kernel_size)
        self._init_kernel(
            in_channels,
            out_channels,
            kernel_size,
            padding_mode,
            bias,
            shape,
            fan_in=in_channels * kernel_size**2,
        )

    def transformed_kernels(self, K: torch.Tensor | None = None) -> torch.Tensor:
        K = self.weight if K is None else K
        out = []
        for i, h in enumerate(self.group.elements):
            out.append(self.group.act(h, K.index_select(1, self.perm[i])))
        return torch.stack(out)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        Cp, G, C, k, _ = self.weight.shape
        return self._conv(x, self.effective_weight(weights).reshape(Cp * G, C, k, k))


class PartialGroupConv(_PartialBase):
    """Group convolution H x Z^2 -> H x Z^2 with a lambda-averaged kernel.

    x: (B, C, |H|, H, W) -> (B, C', |H|, H, W). Parameter ``weight`` (C', |H|, C, |H|, k, k);
    ``bias`` (C',) shared over the group axis.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        group: Group | str = "C4",
        density: GroupDensity | None = None,
        band_limit: int | None = None,
        bias: bool = True,
        padding_mode: str = "circular",
    ):
        super().__init__(group, density, band_limit)
        G = self.group.order
        shape = (out_channels, G, in_channels, G, kernel_size, kernel_size)
        self._init_kernel(
            in_channels,
            out_channels,
            kernel_size,
            padding_mode,
            bias,
            shape,
            fan_in=in_channels * G * kernel_size**2,
        )

    def transformed_kernels(self, K: torch.Tensor | None = None) -> torch.Tensor:
        K = self.weight if K is None else K
        out = []
        for i, h in enumerate(self.group.elements):
            p = self.perm[i]
            out.append(self.group.act(h, K.index_select(1, p).index_select(3, p)))
        return torch.stack(out)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        G = self.group.order
        if x.ndim != 5 or x.shape[1] != self.in_channels or x.shape[2] != G:
            raise ValueError(
                f"expected x of shape (B, {self.in_channels}, {G}, H, W), got {tuple(x.shape)}"
            )
        Cp, _, C, _, k, _ = self.weight.shape
        return self._conv(
            x.flatten(1, 2), self.effective_weight(weights).reshape(Cp * G, C * G, k, k)
        )
