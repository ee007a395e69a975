"""Layers: circular convs, shift-equivariant striding, group convs, FC/factored/sparsified layers
on images, and soft blocks that sum named paths."""

from equilib.nn.blocks import PATH_KINDS, PATH_NAMES, SoftBlock, make_path
from equilib.nn.conv import (
    STRIDINGS,
    BasisConv2d,
    CircularConv2d,
    MaxPoolDownsample,
    PlainDownsample,
    PolyphaseDownsample,
    circular_pad,
    conv2d,
    downsample,
    polyphase_components,
    window_maxima,
)
from equilib.nn.group import (
    GroupConv2d,
    GroupConvCN,
    GroupPool,
    LiftingConv2d,
    LiftingConvCN,
    RotationPooledConv2d,
    rotation_interpolation_matrix,
)
from equilib.nn.linear import FactoredLinear, GroupedLinear, ImageLinear
from equilib.nn.sparse import SparseConv2d, SparseFactoredLinear, anchor_grid, rbf_basis

__all__ = [
    "BasisConv2d",
    "CircularConv2d",
    "FactoredLinear",
    "GroupConv2d",
    "GroupConvCN",
    "GroupPool",
    "GroupedLinear",
    "ImageLinear",
    "LiftingConv2d",
    "LiftingConvCN",
    "MaxPoolDownsample",
    "window_maxima",
    "PATH_KINDS",
    "PATH_NAMES",
    "PlainDownsample",
    "PolyphaseDownsample",
    "RotationPooledConv2d",
    "STRIDINGS",
    "SoftBlock",
    "SparseConv2d",
    "SparseFactoredLinear",
    "anchor_grid",
    "circular_pad",
    "conv2d",
    "downsample",
    "make_path",
    "polyphase_components",
    "rbf_basis",
    "rotation_interpolation_matrix",
]
