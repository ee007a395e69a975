"""What chapter 01's figures and transform explorer show: transforms, responses, rotation errors.

Everything here is a pure tensor computation; drawing lives in ``equilib.widgets.transform``.
Images are batches ``x: (B, C, H, W)`` unless said otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from equilib.groups import Dihedral, Group, rotate_exact_or_interp, shift

__all__ = [
    "TRANSFORM_KINDS",
    "D4_LABELS",
    "make_transform",
    "transform_label",
    "orbit",
    "cayley_table",
    "action_law_table",
    "response",
    "roundtrip_errors",
    "rotation_equivariance_errors",
]

Transform = Callable[[torch.Tensor], torch.Tensor]

#: The ``kind``s of image transform ``make_transform`` builds (chapter 01's explorer).
TRANSFORM_KINDS = ("identity", "rotation", "d4", "shift")

#: A readable name for each element ``(k, flip)`` of D4, in ``Dihedral(4).elements`` order.
D4_LABELS = {
    (0, 0): "identity",
    (1, 0): "rotate 90",
    (2, 0): "rotate 180",
    (3, 0): "rotate 270",
    (0, 1): "flip",
    (1, 1): "flip, rotate 90",
    (2, 1): "flip, rotate 180",
    (3, 1): "flip, rotate 270",
}

_D4 = Dihedral(4)


def make_transform(
    kind: str,
    *,
    angle: float = 0.0,
    element: tuple[int, int] = (0, 0),
    dy: int = 0,
    dx: int = 0,
) -> Transform:
    """The image transform ``x -> g.x`` named by ``kind`` and its parameter.

    ``"rotation"``: counter-clockwise by ``angle`` degrees (exact ``rot90`` at quarter turns,
    bilinear otherwise); ``"d4"``: the D4 ``element`` ``(k, flip)``; ``"shift"``: cyclic shift
    down ``dy`` and right ``dx``; ``"identity"``. The result maps ``(..., H, W)`` to the same shape.
    """
    if kind == "identity":
        return lambda x: x
    if kind == "rotation":
        rad = math.radians(float(angle))
        return lambda x: rotate_exact_or_interp(x, rad)
    if kind == "d4":
        element = (int(element[0]) % 4, int(element[1]))
        _D4._check_element(element)
        return lambda x: _D4.act(element, x)
    if kind == "shift":
        return lambda x: shift(x, int(dy), int(dx))
    raise ValueError(f"unknown transform kind {kind!r}; expected one of {list(TRANSFORM_KINDS)}")


def transform_label(
    kind: str, *, angle: float = 0.0, element: tuple[int, int] = (0, 0), dy: int = 0, dx: int = 0
) -> str:
    """A short human-readable name of the transform ``make_transform`` builds."""
    if kind == "identity":
        return "identity"
    if kind == "rotation":
        return f"rotate {float(angle):g} deg"
    if kind == "d4":
        return D4_LABELS[(int(element[0]) % 4, int(element[1]))]
    if kind == "shift":
        return f"shift ({int(dy)}, {int(dx)})"
    raise ValueError(f"unknown transform kind {kind!r}; expected one of {list(TRANSFORM_KINDS)}")


def orbit(group: Group, x: torch.Tensor) -> torch.Tensor:
    """All transformed copies ``g.x`` stacked on a new first axis. ``x: (..., H, W)`` ->
    ``(|G|, ..., H, W)`` in ``group.elements`` order."""
    return torch.stack([group.act(g, x) for g in group.elements])


def cayley_table(group: Group) -> torch.Tensor:
    """The group's multiplication table as element indices: ``T[i, j] = index(g_i g_j)``.

    ``(|G|, |G|)`` int64; every row and column is a permutation (a Latin square).
    """
    els = group.elements
    return torch.tensor([[group.index(group.compose(a, b)) for b in els] for a in els])


def action_law_table(group: Group, x: torch.Tensor, fmap: bool = False) -> torch.Tensor:
    """How far the action law fails: ``E[i, j] = |g_i.(g_j.x) - (g_i g_j).x| / |x|``.

    ``x: (..., H, W)`` (or ``(..., |G|, H, W)`` with ``fmap=True`` to test ``act_fmap``);
    returns ``(|G|, |G|)`` float64. Zero for exact actions; positive where interpolation enters.
    """
    act = group.act_fmap if fmap else group.act
    els = group.elements
    scale = x.norm().clamp_min(1e-30)
    out = torch.zeros(len(els), len(els), dtype=torch.float64)
    with torch.no_grad():
        for i, a in enumerate(els):
            for j, b in enumerate(els):
                diff = act(a, act(b, x)) - act(group.compose(a, b), x)
                out[i, j] = float(diff.norm() / scale)
    return out


def _resolve_out(x: torch.Tensor, fx: torch.Tensor, transform: Transform, out_transform: Any):
    if out_transform is None or out_transform == "auto":
        # image-like outputs are transformed like the input; vectors (logits) are compared as is
        return transform if fx.ndim == x.ndim else (lambda y: y)
    if out_transform in ("invariant", "identity"):
        return lambda y: y
    if out_transform == "same":
        return transform
    if callable(out_transform):
        return out_transform
    raise ValueError(
        f"out_transform must be 'auto', 'same', 'invariant' or a callable, got {out_transform!r}"
    )


@torch.no_grad()
def response(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    transform: Transform,
    out_transform: Transform | str | None = "auto",
) -> dict[str, Any]:
    """A function's response to a transformed input, next to the transformed response.

    ``x: (B, C, H, W)``; ``f`` maps a batch to a batch. Returns a dict with ``x``, ``gx`` (g.x),
    ``fx``, ``f_gx`` (f(g.x)), ``g_fx`` (g.f(x)), ``diff`` (f(g.x) - g.f(x)) and ``error``
    (a float, |f(g.x) - g.f(x)| / |f(x)|, the quantity ``equivariance_error`` maximises).
    ``out_transform``: how g acts on outputs; ``"auto"`` transforms image-shaped outputs
    (``f(x).ndim == x.ndim``) like the input and leaves vectors alone (an invariance test).
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a batch of images (B, C, H, W), got {shape}")
    fx = f(x)
    gx = transform(x)
    f_gx = f(gx)
    g_fx = _resolve_out(x, fx, transform, out_transform)(fx)
    if f_gx.shape != g_fx.shape:
        raise ValueError(
            f"f(g.x) has shape {tuple(f_gx.shape)} but g.f(x) has {tuple(g_fx.shape)}; "
            "pass an out_transform that maps f's outputs to outputs of the same shape"
        )
    diff = f_gx - g_fx
    error = float(diff.norm() / fx.norm().clamp_min(1e-30))
    return {"x": x, "gx": gx, "fx": fx, "f_gx": f_gx, "g_fx": g_fx, "diff": diff, "error": error}


def _angles(angles_deg: Iterable[float]) -> list[float]:
    angles = [float(a) for a in angles_deg]
    if not angles:
        raise ValueError("angles_deg must hold at least one angle (in degrees)")
    return angles


@torch.no_grad()
def roundtrip_errors(x: torch.Tensor, angles_deg: Sequence[float]) -> torch.Tensor:
    """Relative round-trip error ``|R(-a) R(a) x - x| / |x|`` for each angle (degrees).

    ``x: (..., H, H)``; returns ``(len(angles_deg),)`` float64. Exactly zero at quarter turns.
    """
    scale = x.norm().clamp_min(1e-30)
    out = []
    for a in _angles(angles_deg):
        rad = math.radians(a)
        back = rotate_exact_or_interp(rotate_exact_or_interp(x, rad), -rad)
        out.append(float((back - x).norm() / scale))
    return torch.tensor(out, dtype=torch.float64)


@torch.no_grad()
def rotation_equivariance_errors(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    angles_deg: Sequence[float],
    out_transform: str = "auto",
) -> torch.Tensor:
    """``|f(R_a x) - R_a f(x)| / |f(x)|`` for each angle ``a`` (degrees).

    ``x: (B, C, H, H)``; ``out_transform`` as in ``response`` (``"invariant"`` compares
    ``f(R_a x)`` with ``f(x)``). Returns ``(len(angles_deg),)`` float64.
    """
    return torch.tensor(
        [
            response(f, x, make_transform("rotation", angle=a), out_transform)["error"]
            for a in _angles(angles_deg)
        ],
        dtype=torch.float64,
    )
