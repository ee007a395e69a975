"""A partial G-CNN: lifting + group convolutions, each with a learned density over the group.

Depth order (the model's ``blocks``, named ``BLOCK_NAMES``): ``lift`` (5x5), 2x2 average
pooling, ``gconv1``, ``gconv2``, ``gconv3`` (3x3, the last one twice the width); then a max over the group axis, max pooling to ``pool`` cells
(``(1, 1)`` makes the model rotation invariant when every lambda is uniform; ``(1, 2)`` keeps
"left" and "right" apart for double digits) and an MLP head. No BatchNorm.

The regularisers of Veefkind and Cesa (2024), per layer l with density lambda_l:
``kl_uniform * KL(lambda_1 || uniform) + kl_prev * sum_{l>1} KL(lambda_l || sg(lambda_{l-1}))
+ align * sum_l (max_h logit_l(h) - logit_l(e))`` (sg = stop-gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from equilib.degree.density import GroupDensity
from equilib.degree.layers import (
    PartialGroupConv,
    PartialLiftingConv,
    group_angles_flips,
    make_group,
)

__all__ = [
    "PartialGCNN",
    "BLOCK_NAMES",
    "build",
    "MODEL_KINDS",
    "degree_regulariser",
    "partial_layers",
    "layer_entropies",
    "layer_densities",
]

#: the names of a ``PartialGCNN``'s blocks, in depth order (keys of its lambdas and entropies)
BLOCK_NAMES = ("lift", "gconv1", "gconv2", "gconv3")


class PartialGCNN(nn.Module):
    """Four partial group-conv layers + group max + spatial pooling + MLP head.

    x: (B, C, H, W) -> logits (B, n_classes). A block model (``equilib.models.BlockModel``):
    ``blocks`` is the ``nn.ModuleList`` of the four partial layers (``BLOCK_NAMES``: lift,
    gconv1, gconv2, gconv3; the ReLUs and the pooling act between them), ``head`` the MLP.
    ``share=True`` uses one density for all layers; ``gain`` is the densities' learning-speed
    factor (see ``GroupDensity``). H and W must be even (one 2x2 pooling).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int] = (1, 16, 16),
        n_classes: int = 10,
        width: int = 8,
        group="C4",
        band_limit: int | None = None,
        share: bool = False,
        pool: tuple[int, int] = (1, 1),
        hidden: int = 64,
        gain: float = 1.0,
    ):
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"in_shape must be (C, H, W), got {in_shape!r}")
        C, H, W = in_shape
        if H % 2 or W % 2:
            raise ValueError(f"H and W must be even for the 2x2 pooling, got {H}x{W}")
        if (
            len(tuple(pool)) != 2
            or not all(isinstance(p, int) and not isinstance(p, bool) for p in pool)
            or not 1 <= pool[0] <= H // 2
            or not 1 <= pool[1] <= W // 2
        ):
            raise ValueError(
                f"pool must be (rows, columns) of cells, each between 1 and the pooled feature "
                f"map's size {H // 2}x{W // 2}, got {pool!r}"
            )
        group = make_group(group) if isinstance(group, str) else group
        _, _, n_rot, _ = group_angles_flips(group)
        L = n_rot // 2 if band_limit is None else band_limit
        shared = GroupDensity.for_group(group, L, gain=gain) if share else None

        def dens():
            return shared if share else GroupDensity.for_group(group, L, gain=gain)

        self.group, self.share, self.in_shape, self.pool = (
            group,
            share,
            tuple(in_shape),
            tuple(pool),
        )
        self.blocks = nn.ModuleList(
            [
                PartialLiftingConv(C, width, 5, group, density=dens()),
                PartialGroupConv(width, width, 3, group, density=dens()),
                PartialGroupConv(width, width, 3, group, density=dens()),
                PartialGroupConv(width, 2 * width, 3, group, density=dens()),
            ]
        )
        feat = 2 * width * pool[0] * pool[1]
        self.head = nn.Sequential(nn.Linear(feat, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps before the group max: (B, 2*width, |H|, H/2, W/2)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(
                f"expected x of shape (B, {', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}"
            )
        lift, *gconvs = self.blocks
        h = F.relu(lift(x))
        B, C, G, Hh, Ww = h.shape
        h = F.avg_pool2d(h.flatten(1, 2), 2).unflatten(1, (C, G))
        for gconv in gconvs:
            h = F.relu(gconv(h))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).amax(dim=2)
        h = F.adaptive_max_pool2d(h, self.pool).flatten(1)
        return self.head(h)

    def regulariser(self, kl_uniform: float = 3.0, kl_prev: float = 3.0, align: float = 5.0):
        """The degree-of-equivariance regulariser (a scalar tensor); see ``degree_regulariser``."""
        return degree_regulariser(self, kl_uniform=kl_uniform, kl_prev=kl_prev, align=align)


#: the model kinds of the degree experiments (see ``build``)
MODEL_KINDS = ("partial", "gcnn", "cnn", "fc+conv")


def build(
    kind: str,
    in_shape=(1, 16, 16),
    n_classes: int = 10,
    *,
    width: int = 8,
    group="C4",
    band_limit: int | None = None,
    share: bool = False,
    gain: float = 1.0,
    pool: tuple[int, int] = (1, 1),
) -> nn.Module:
    """The untrained model of one kind of the degree experiments: ``(B, C, H, W) -> (B, K)``.

    ``partial``: a ``PartialGCNN`` whose lambdas learn; ``gcnn``: the same with every lambda
    frozen uniform (an exact G-CNN); ``cnn``: the same network on the trivial group with twice
    the width (and default ``gain``); ``fc+conv``: ``equilib.models.build("fc+conv")`` (reads
    ``width`` only). The other arguments go to ``PartialGCNN``.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; valid kinds are {list(MODEL_KINDS)}")
    if kind == "fc+conv":
        from equilib.models import build as build_zoo

        return build_zoo("fc+conv", in_shape=tuple(in_shape), n_classes=n_classes, width=width)
    if kind == "cnn":
        return PartialGCNN(in_shape, n_classes, width=2 * width, group="C1", pool=pool)
    model = PartialGCNN(
        in_shape,
        n_classes,
        width=width,
        group=group,
        band_limit=band_limit,
        share=share,
        pool=pool,
        gain=gain,
    )
    if kind == "gcnn":
        for _, d in model.named_modules():
            if hasattr(d, "coefficients"):
                d.coefficients.requires_grad_(False)
    return model


def partial_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The partial layers of ``model`` in depth (registration) order: [(name, layer), ...].

    A ``PartialGCNN``'s blocks are named by ``BLOCK_NAMES``, other layers by their module name.
    """
    named = (
        {f"blocks.{i}": n for i, n in enumerate(BLOCK_NAMES)}
        if isinstance(model, PartialGCNN)
        else {}
    )
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, (PartialLiftingConv, PartialGroupConv)):
            out.append((named.get(name, name), mod))
    return out


def layer_densities(model: nn.Module) -> dict[str, torch.Tensor]:
    """lambda on the grid for every partial layer, detached: {name: (|H|,)}."""
    with torch.no_grad():
        return {name: layer.density().detach().clone() for name, layer in partial_layers(model)}


def layer_entropies(model: nn.Module) -> list[dict]:
    """[{"name", "entropy"}] per partial layer in depth order; entropy = H(lambda) / log|H|."""
    with torch.no_grad():
        return [
            {"name": name, "entropy": float(layer.density.entropy())}
            for name, layer in partial_layers(model)
        ]


def degree_regulariser(
    model: nn.Module, kl_uniform: float = 3.0, kl_prev: float = 3.0, align: float = 5.0
):
    """kl_uniform KL(lambda_1 || U) + kl_prev sum_l KL(lambda_l || sg lambda_{l-1}) + align sum_l A_l.

    A_l = max_h logit_l(h) - logit_l(e). A density shared by several layers counts once.
    Weights must be non-negative floats.
    """
    for name, v in (("kl_uniform", kl_uniform), ("kl_prev", kl_prev), ("align", align)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"regulariser weight {name} must be a non-negative number, got {v!r}")
    seen, densities = set(), []
    for _, layer in partial_layers(model):
        if id(layer.density) not in seen:
            seen.add(id(layer.density))
            densities.append(layer.density)
    if not densities:
        raise ValueError("model has no partial group-conv layers to regularise")
    first = densities[0]
    total = kl_uniform * first.kl_to_uniform() + align * first.alignment()
    prev = first
    for d in densities[1:]:
        total = total + kl_prev * d.kl(prev.density().detach()) + align * d.alignment()
        prev = d
    return total
