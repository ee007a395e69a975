"""Soft blocks: layers made of named paths that are summed, the unit of layer-wise symmetry.

A ``SoftBlock`` with paths ``{"fc": ..., "conv": ...}`` computes

    y = relu( (1 / P) * sum_p down(path_p(x)) )        (P = number of paths)

where ``down`` is the block's striding. Paths that keep the input's spatial size (``conv``,
``gconv``) are summed first and strided together with *one* polyphase phase per example, so
that the sum of equivariant paths stays equivariant; paths that already produce the output size
(``fc`` maps straight to ``(C', H/s, W/s)``) are added as they are. Residual pathway priors
(Finzi et al. 2021) and the layer-wise learned equivariance of van der Ouderaa et al. (2023)
both use such blocks: put a prior on each path and see which one the data keep.
There is no BatchNorm (Laplace approximations with KFAC need layers without batch statistics).
"""

from __future__ import annotations

import torch
from torch import nn

from equilib.nn.conv import conv2d, downsample
from equilib.nn.group import GroupConv2d, LiftingConv2d, RotationPooledConv2d
from equilib.nn.linear import FactoredLinear, ImageLinear, check_shape
from equilib.nn.sparse import SparseConv2d, SparseFactoredLinear

__all__ = ["SoftBlock", "PATH_NAMES", "PATH_KINDS", "make_path"]

#: names a path may have inside a block (the model name tells the parameterisation)
PATH_NAMES = ("fc", "conv", "gconv")

#: kinds of path ``make_path`` builds, and the block path name each one is stored under
PATH_KINDS = {
    "fc": "fc",
    "f-fc": "fc",
    "s-fc": "fc",
    "conv": "conv",
    "s-conv": "conv",
    "gconv": "gconv",
    "lift-c4": "gconv",
    "gconv-c4": "gconv",
}


def _half(n: int) -> int:
    return max(1, (n + 1) // 2)


def make_path(
    kind: str,
    in_shape,
    out_channels: int,
    stride: int = 1,
    kernel_size: int = 3,
    padding_mode: str = "circular",
) -> nn.Module:
    """Build one path of a block mapping ``(C, H, W)`` (or ``(C, 4, H, W)``) to ``out_channels``.

    Kinds (``PATH_KINDS``): ``fc`` (``ImageLinear`` to ``(C', H/s, W/s)``), ``f-fc``
    (``FactoredLinear``), ``s-fc`` (``SparseFactoredLinear``, about half the anchors per axis),
    ``conv`` (``k x k`` circular ``nn.Conv2d``, stride 1: the block strides), ``s-conv``
    (``SparseConv2d`` with ``(k+2) x (k+2)`` filters from ``k x k`` anchors), ``gconv``
    (``RotationPooledConv2d``: lift to C4 and max over rotations), ``lift-c4`` (``LiftingConv2d``
    to a C4 feature map), ``gconv-c4`` (``GroupConv2d`` on C4 feature maps).
    """
    if kind not in PATH_KINDS:
        raise ValueError(f"unknown path kind {kind!r}; valid kinds: {sorted(PATH_KINDS)}")
    if kind == "gconv-c4":
        C, G, H, W = check_shape(in_shape, "in_shape (C, 4, H, W)", n=4)
    else:
        C, H, W = check_shape(in_shape, "in_shape")
    if H % stride or W % stride:
        raise ValueError(f"spatial size {H}x{W} is not divisible by the stride {stride}")
    out_shape = (out_channels, H // stride, W // stride)
    if kind == "fc":
        return ImageLinear((C, H, W), out_shape)
    if kind == "f-fc":
        return FactoredLinear((C, H, W), out_shape)
    if kind == "s-fc":
        return SparseFactoredLinear(
            (C, H, W),
            out_shape,
            anchors_in=(_half(H), _half(W)),
            anchors_out=(_half(out_shape[1]), _half(out_shape[2])),
        )
    if kind == "conv":
        return conv2d(C, out_channels, kernel_size, padding_mode=padding_mode)
    if kind == "s-conv":
        return SparseConv2d(
            C, out_channels, kernel_size + 2, anchors=kernel_size, padding_mode=padding_mode
        )
    if kind == "gconv":
        return RotationPooledConv2d(C, out_channels, kernel_size, padding_mode=padding_mode)
    if kind == "lift-c4":
        return LiftingConv2d(C, out_channels, kernel_size, padding_mode=padding_mode)
    return GroupConv2d(C, out_channels, kernel_size, padding_mode=padding_mode)


def _combine(ts: list[torch.Tensor], mean: bool = True) -> torch.Tensor:
    """The mean (``mean=False``: the sum) of the tensors; one tensor is returned as it is (no
    copy, and no autograd node between it and its consumer)."""
    if len(ts) == 1:
        return ts[0]
    total = ts[0] + ts[1]
    for t in ts[2:]:
        total = total + t
    return total / len(ts) if mean else total


class SoftBlock(nn.Module):
    """Sum of named paths with factor ``1/len(paths)``, shared striding, then ReLU.

    ``x: (B, C, H, W)`` (or ``(B, C, n, H, W)`` for group feature maps) ->
    ``(B, C', H/s, W/s)`` (or ``(B, C', n, H/s, W/s)``);
    ``y = act((1/P) sum_p down(path_p(x)))``. ``self.paths`` is an ``nn.ModuleDict`` (names in
    ``PATH_NAMES``); ``path_outputs(x)`` returns every path's contribution at the output size.
    """

    def __init__(
        self,
        paths: dict[str, nn.Module],
        stride: int = 1,
        striding: str = "polyphase",
        activation: bool = True,
    ):
        super().__init__()
        if not isinstance(paths, dict) or not paths:
            raise ValueError("SoftBlock needs a non-empty dict of paths {name: module}")
        bad = [n for n in paths if n not in PATH_NAMES]
        if bad:
            raise ValueError(f"unknown path name(s) {bad}; valid path names: {list(PATH_NAMES)}")
        self.paths = nn.ModuleDict(paths)
        self.stride = stride
        self.down = downsample(stride, striding)
        self.activation = activation

    def path_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each path's output at the block's output size, before the ``1/P`` factor and ReLU.

        Full-resolution outputs are strided together: with polyphase striding, one phase per
        example chosen on their sum; with max pooling, each path pooled over the same windows.
        """
        H, W = x.shape[-2:]
        raw = {name: path(x) for name, path in self.paths.items()}
        if self.stride == 1:
            return raw
        full = [n for n, y in raw.items() if y.shape[-2:] == (H, W)]
        for n, y in raw.items():
            if n not in full and y.shape[-2:] != (H // self.stride, W // self.stride):
                raise ValueError(
                    f"path {n!r} gave spatial size {tuple(y.shape[-2:])}; expected "
                    f"{(H, W)} (strided by the block) or "
                    f"{(H // self.stride, W // self.stride)}"
                )
        if full:
            total = _combine([raw[n] for n in full], mean=False)
            phase = None
            if hasattr(self.down, "choose_phase"):
                phase = self.down.choose_phase(total.detach())
            for n in full:
                raw[n] = self.down(raw[n], phase=phase)
        return raw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _combine(list(self.path_outputs(x).values()))
        return torch.relu(y) if self.activation else y

    def extra_repr(self) -> str:
        return f"stride={self.stride}, averaging=1/{len(self.paths)}"
