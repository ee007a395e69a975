"""The model zoo of the book: ``build(name, in_shape, n_classes, width)``.

Every model is ``blocks`` (an ``nn.ModuleList`` of ``equilib.nn.SoftBlock``), a global pooling
(max over space, and over the rotation axis for ``gconv-c4``; ``pool="mean"`` averages over
space instead) and a small MLP ``head``.
Blocks stride by ``(2, 2, 1, 1, ...)`` with shift-equivariant (polyphase) striding, or with
max pooling (``striding="max"``, equivariant to shifts by multiples of the total stride: what
chapter 07's discovery runs use), biases start at zero and there is no BatchNorm. Because of the
global spatial pooling, a model whose blocks are all equivariant to cyclic shifts is *invariant*
to them (up to the polyphase phase), so a pure CONV model cannot tell in which quadrant a digit
sits, while an FC path can encode position.

Names (``MODEL_NAMES``) and the paths of each block:

========================  ==========================================================
``conv``                  ``conv`` (3x3 circular conv)
``fc``                    ``fc`` (dense FC between images)
``fc+conv``               ``fc`` + ``conv`` (residual pathway prior model)
``f-fc`` / ``f-fc+conv``  ``fc`` as a factored FC (``FactoredLinear``) [+ ``conv``]
``s-conv``                ``conv`` as a sparsified conv (5x5 filters from 3x3 anchors)
``s-fc``                  ``fc`` as a sparsified factored FC (about half the anchors per axis)
``s-fc+s-conv``           both sparsified
``gconv-c4``              ``gconv``: C4 lifting conv, then C4 group convs (group feature maps)
``fc+conv+gconv``         three paths; ``gconv`` lifts to C4 and max-pools over rotations
``f-fc+conv+gconv``       the same with a factored FC path
========================  ==========================================================

The protocol every model of the book follows, the zoo's and ``equilib.degree.PartialGCNN``
alike, is ``BlockModel`` (``blocks``, ``head``, ``features``, ``in_shape``); every block of the zoo
is a ``PathBlock`` (named ``paths``). Code that reads a model by its blocks (per-layer
measurements, the discovery summaries, the connectivity widgets) relies on these and nothing
more. ``init_from_data`` is the data-dependent initialisation of the zoo's paths, and
``scale_in_v``, ``project_factor_grads`` and ``retract_factors`` keep the scale of its factored
paths in ``V`` (the model-level side of ``equilib.nn.FactoredLinear``'s own methods).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from equilib.nn.blocks import SoftBlock, make_path
from equilib.nn.conv import STRIDINGS
from equilib.nn.linear import FactoredLinear, check_shape

__all__ = [
    "MODEL_NAMES",
    "BlockModel",
    "PathBlock",
    "SoftNet",
    "build",
    "path_of",
    "path_norms",
    "default_strides",
    "init_from_data",
    "factored_paths",
    "scale_in_v",
    "project_factor_grads",
    "retract_factors",
]

#: model name -> path kinds of every block (block path name is given by equilib.nn.PATH_KINDS)
_SPECS: dict[str, tuple[str, ...]] = {
    "conv": ("conv",),
    "fc": ("fc",),
    "fc+conv": ("fc", "conv"),
    "f-fc": ("f-fc",),
    "f-fc+conv": ("f-fc", "conv"),
    "s-conv": ("s-conv",),
    "s-fc": ("s-fc",),
    "s-fc+s-conv": ("s-fc", "s-conv"),
    "gconv-c4": ("gconv-c4",),
    "fc+conv+gconv": ("fc", "conv", "gconv"),
    "f-fc+conv+gconv": ("f-fc", "conv", "gconv"),
}
MODEL_NAMES: tuple[str, ...] = tuple(_SPECS)

_PATH_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.paths\.([^.]+)\.")


def default_strides(depth: int) -> tuple[int, ...]:
    """Strides of the blocks: 2 for the first two, 1 after (``(2, 2, 1)`` for depth 3)."""
    return tuple(2 if i < 2 else 1 for i in range(depth))


@runtime_checkable
class BlockModel(Protocol):
    """What every model of the book offers: blocks in depth order, a pooling, then a head.

    ``model(x)``: ``(B, C, H, W) -> (B, n_classes)`` logits; ``in_shape``: ``(C, H, W)``;
    ``blocks``: an ``nn.ModuleList`` whose modules the forward pass calls in order, each once
    (per-layer measurements hook them by the names ``blocks.<i>``, see
    ``equilib.measure.default_layers``); ``features(x)``: the last block's output (before the
    pooling); ``head``: the module that maps the pooled features to the logits. ``SoftNet``
    (each block a ``PathBlock``) and ``equilib.degree.PartialGCNN`` (partial group convolutions)
    are block models. In ``SoftNet`` the blocks compose directly (``features`` is the blocks
    applied in turn, which the connectivity views rely on); the partial G-CNN applies ReLUs and
    a pooling between its blocks.
    """

    in_shape: tuple[int, ...]
    blocks: nn.ModuleList
    head: nn.Module

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class PathBlock(Protocol):
    """A block of named paths that are summed (``equilib.nn.SoftBlock``): the unit of layer-wise
    symmetry.

    ``paths``: ``nn.ModuleDict`` ``{name: module}`` (names in ``equilib.nn.PATH_NAMES``);
    ``stride``; ``path_outputs(x)``: every path's output at the block's output size. Parameter
    names ``blocks.<i>.paths.<name>.`` tell per-path code (``path_of``, ``path_norms``,
    ``equilib.discover.layer_structure``) the block and the path of a tensor.
    """

    paths: nn.ModuleDict
    stride: int

    def path_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]: ...


class SoftNet(nn.Module):
    """Blocks of summed paths, a global pooling and an MLP head: ``(B, C, H, W) -> (B, classes)``.

    A ``BlockModel`` whose every block is a ``PathBlock``.
    Attributes: ``blocks`` (``nn.ModuleList`` of ``SoftBlock``), ``head`` (``nn.Sequential``),
    ``name``, ``in_shape``, ``strides``, ``N`` (the order of C_N: 4 for ``gconv-c4``, else 1),
    ``pooling`` (``"max"`` or ``"mean"`` over space).
    """

    def __init__(
        self,
        name: str,
        in_shape: tuple[int, int, int],
        blocks: list[SoftBlock],
        head: nn.Module,
        strides: tuple[int, ...],
        N: int = 1,
        pooling: str = "max",
    ):
        super().__init__()
        if pooling not in ("max", "mean"):
            raise ValueError(f"pooling must be 'max' or 'mean', got {pooling!r}")
        self.name, self.in_shape, self.strides = name, in_shape, strides
        self.N, self.pooling = N, pooling
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's output: ``(B, width, H/S, W/S)`` (``(B, width, 4, ...)`` for C4)."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != self.in_shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"model {self.name!r} expects input (B, "
                f"{', '.join(map(str, self.in_shape))}), got {got}"
            )
        for block in self.blocks:
            x = block(x)
        return x

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """Global pooling: max over the group axis (if any), max (or mean) over space -> ``(B, C)``."""
        if self.N > 1:
            h = h.amax(dim=2)
        return h.amax(dim=(-2, -1)) if self.pooling == "max" else h.mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def build(
    name: str,
    in_shape=(1, 16, 16),
    n_classes: int = 10,
    width: int = 8,
    *,
    depth: int = 3,
    strides=None,
    kernel_size: int = 3,
    hidden: int = 64,
    pooling: str = "max",
    striding: str = "polyphase",
    fc_blocks=None,
) -> SoftNet:
    """Build the named model for inputs ``(B, C, H, W)`` with ``in_shape = (C, H, W)``.

    ``width``: channels of every block (per rotation for ``gconv-c4``); ``depth`` blocks with
    ``strides`` (default ``default_strides(depth)``; ``H`` and ``W`` must be divisible by their
    product); global ``pooling`` over space (``"max"`` or ``"mean"``); ``head`` =
    Linear(width, hidden) -> ReLU -> Linear(hidden, n_classes), He-normal first layer, zero
    biases. ``striding``: how blocks stride (``equilib.nn.STRIDINGS``): ``"polyphase"`` keeps
    exact equivariance to every cyclic shift, ``"max"`` (max pooling) to shifts by multiples of
    the total stride, which is all the quadrant tasks move a digit by. ``fc_blocks``: the
    indices of the blocks that get the model's FC path (default: every block); the others keep
    the model's other paths, so the model needs one (``f-fc+conv``, not ``f-fc``). Valid names:
    ``MODEL_NAMES``.
    """
    if name not in _SPECS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    C, H, W = check_shape(in_shape, "in_shape")
    for arg, v in (
        ("n_classes", n_classes),
        ("width", width),
        ("depth", depth),
        ("hidden", hidden),
    ):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg} must be a positive int, got {v!r}")
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be an odd positive int (a filter with a centre and at "
            f"least one weight), got {kernel_size!r}"
        )
    strides = default_strides(depth) if strides is None else tuple(strides)
    if len(strides) != depth or not all(isinstance(s, int) and s >= 1 for s in strides):
        raise ValueError(f"strides must be {depth} positive ints (one per block), got {strides!r}")
    total = math.prod(strides)
    if H % total or W % total:
        raise ValueError(
            f"input size {H}x{W} must be divisible by the total stride {total} (strides {strides})"
        )
    if striding not in STRIDINGS:
        raise ValueError(f"striding must be one of {STRIDINGS}, got {striding!r}")
    kinds = _SPECS[name]
    fc_kinds = [k for k in kinds if k in ("fc", "f-fc", "s-fc")]
    if fc_blocks is not None:
        fc_blocks = tuple(fc_blocks)
        if not all(
            isinstance(b, int) and not isinstance(b, bool) and 0 <= b < depth for b in fc_blocks
        ):
            raise ValueError(
                f"fc_blocks must be block indices from 0 to {depth - 1}, got {fc_blocks!r}"
            )
        if not fc_kinds or len(fc_kinds) == len(kinds):
            raise ValueError(
                f"fc_blocks needs a model with an FC path and another path beside it; "
                f"{name!r} has {list(kinds)}"
            )
    group = name == "gconv-c4"
    if (group or "gconv" in kinds) and H != W:
        raise ValueError(f"rotation models need square inputs, got {H}x{W}")
    blocks = []
    c, h, w = C, H, W
    for i, s in enumerate(strides):
        paths = {}
        for kind in kinds:
            if kind in fc_kinds and fc_blocks is not None and i not in fc_blocks:
                continue
            if group:
                k = "lift-c4" if i == 0 else "gconv-c4"
                shape = (c, h, w) if i == 0 else (c, 4, h, w)
                paths["gconv"] = make_path(k, shape, width, s, kernel_size)
            else:
                pname = {"f-fc": "fc", "s-fc": "fc", "s-conv": "conv"}.get(kind, kind)
                paths[pname] = make_path(kind, (c, h, w), width, s, kernel_size)
        blocks.append(SoftBlock(paths, stride=s, striding=striding))
        c, h, w = width, h // s, w // s
    head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
    nn.init.kaiming_normal_(head[0].weight, nonlinearity="relu")
    for m in head:
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return SoftNet(name, (C, H, W), blocks, head, strides, N=4 if group else 1, pooling=pooling)


def path_of(param_name: str) -> tuple[int, str] | None:
    """``(block_index, path_name)`` of a parameter name like ``blocks.1.paths.fc.u.weight``.

    ``None`` for parameters outside the blocks' paths (e.g. the head).
    """
    m = _PATH_RE.search(param_name)
    return (int(m.group(1)), m.group(2)) if m else None


@torch.no_grad()
def path_norms(model: nn.Module) -> list[dict[str, float]]:
    """Per block, the Euclidean norm of every path's parameters (all its tensors together)."""
    out: dict[int, dict[str, float]] = {}
    for pname, p in model.named_parameters():
        where = path_of(pname)
        if where is None:
            continue
        b, path = where
        out.setdefault(b, {}).setdefault(path, 0.0)
        out[b][path] += float(p.pow(2).sum())
    return [{k: math.sqrt(v) for k, v in out[b].items()} for b in sorted(out)]


# --------------------------------------------------------------------------- initialisation


def factored_paths(model: nn.Module) -> Iterator[FactoredLinear]:
    """The factored paths (``FactoredLinear``, S-FC included) of a block model, in depth order."""
    for block in getattr(model, "blocks", ()):
        for path in getattr(block, "paths", {}).values():
            if isinstance(path, FactoredLinear):
                yield path


@torch.no_grad()
def init_from_data(
    model: SoftNet,
    x: torch.Tensor,
    target_std: float = 1.0,
    path_std: dict[str, float] | None = None,
) -> list[list[float]]:
    """Data-dependent initialisation: scale every path so its output has std ``target_std`` on ``x``.

    Block by block, with ``s = target_std / std(path(h))`` (``h``: the block's input on the batch
    ``x: (B, C, H, W)``), each of the path's ``k`` weight tensors is multiplied by ``s^(1/k)``:
    with zero biases a path is linear in each weight tensor, so its output std becomes
    ``target_std``, and a factored path is then balanced (``FactoredLinear.balance_``)
    (layer-sequential unit-variance init, Mishkin and Matas 2016). The head's linear layers
    likewise. Without it the zoo's default init shrinks the signal by about 0.4 per block.
    ``path_std`` overrides the target per path name in blocks of several paths (``{"fc": 0.1}``
    starts FC paths small). Returns the factors ``s``, per block, per path.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(block, "paths") for block in blocks):
        raise TypeError(
            "init_from_data scales the paths of a model built by equilib.models.build (blocks "
            f"with paths); got {type(model).__name__}"
        )
    if not torch.is_tensor(x) or x.ndim != 4 or len(x) == 0:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x must be a non-empty batch of images (B, C, H, W), got {shape}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf: the scales it gives would be too")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        return _scale_paths(model, blocks, x, target_std, path_std or {})
    except ValueError:
        model.load_state_dict(saved)  # a refused batch leaves the model as it was
        raise


def _scale_paths(model, blocks, x, target_std, path_std) -> list[list[float]]:
    scales = []
    h = x
    for b, block in enumerate(blocks):
        row = []
        for name, path in block.paths.items():
            weights = [p for n, p in path.named_parameters() if n.endswith("weight")]
            out = path(h)
            want = path_std.get(name, target_std) if len(block.paths) > 1 else target_std
            spread = out.std()
            if not spread > 1e-8 * max(1.0, float(out.abs().max())):
                raise ValueError(
                    f"the output of the {name!r} path of block {b} is constant on x (std "
                    f"{float(spread):.3g}): x cannot set its scale (are the images blank?)"
                )
            s = float(want / spread)
            for w in weights:
                w.mul_(s ** (1.0 / len(weights)))
            row.append(s)
            if isinstance(path, FactoredLinear):
                path.balance_()
        scales.append(row)
        h = block(h)
    if hasattr(model, "pool") and hasattr(model, "head"):
        h = model.pool(h)
        for layer in model.head:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(target_std / layer(h).std().clamp_min(1e-12))
            h = layer(h)
    return scales


def scale_in_v(model: nn.Module) -> None:
    """Move the scale of every factored path into V: each row ``U[c', c, :]`` gets unit norm.

    ``W[c', y, c, x] = V[c', c, y] U[c', c, x]`` is unchanged by ``U -> U / s``, ``V -> V s``.
    The product has this scale symmetry, and the curvature of each factor scales with the
    squared norm of the other, so when both factors shrink the evidence stops depending on
    their precisions. With U's rows fixed at unit norm only V can switch the path off, its
    curvature stays put, and its precision grows as the path is pruned (chapter 07). Called
    once before training; :func:`project_factor_grads` and :func:`retract_factors` then keep
    the rows of U on the unit sphere during training.
    """
    for path in factored_paths(model):
        path.scale_into_v_()


def project_factor_grads(model: nn.Module) -> None:
    """Before an optimiser step: drop the radial part of every factored path's U gradient."""
    for path in factored_paths(model):
        path.project_u_grad_()


def retract_factors(model: nn.Module) -> None:
    """After an optimiser step: rows of U back to unit norm (the norm is not passed to V).

    Passing it to V, as :func:`scale_in_v` does, would let V grow by ``sqrt(1 + eps^2)`` at
    every step of size ``eps`` along the sphere: the runaway that made the training loss of
    factored paths rise for as long as they trained.
    """
    for path in factored_paths(model):
        path.retract_u_()
