"""Measuring the equivariance a trained network has learned: Lie derivatives, per layer.

The Lie derivative (Gruver et al. 2022) of a function ``f`` along a one-parameter group of
transformations ``rho(t)`` (rotation by the angle ``t``, shift by ``t`` pixels) is

    L f(x) = d/dt|_{t=0}  rho_out(t)^-1 f(rho_in(t) x),

zero for every ``x`` exactly when ``f`` is equivariant to the whole continuous group. It is
computed here by forward-mode automatic differentiation (``torch.func.jvp``) through a
differentiable resampling of the image, or by central finite differences as a check.

The resampling uses the cubic convolution kernel of Keys (a = -1/2) written in plain torch
operations (``equilib.groups.rotate(x, t, mode="cubic")`` for rotations, ``translate`` here for
shifts): ``grid_sample`` has no forward-mode derivative, and bilinear interpolation has a kink
exactly at the pixel centres where ``t = 0`` samples, so its derivative there would depend on
the side. The cubic kernel is continuously differentiable, samples the identity exactly at
``t = 0``, and its generator is the central difference.

Actions on tensors (chosen from the shape):
* ``(B, C, H, W)``: an image or feature map; rotate or shift space.
* ``(B, C, G, H, W)``: a feature map with a C_G group axis (regular representation); rotation
  turns space and shifts the group axis by ``t * G / (2 pi)`` (cubic interpolation along the
  cyclic axis, so that ``t = 2 pi k / G`` matches ``equilib.groups.Rotations(G).act_fmap``
  for quarter turns); translation acts on space only.
* ``(B, K)`` or ``(B,)``: invariant (logits, pooled features); nothing to undo.
Translations of feature maps are in units of *input* pixels: a map of half the input's width is
shifted by ``t / 2`` of its own pixels, so that strided layers compose.

Per-layer attribution: by the chain rule the Lie derivative of a composition ``f_n o ... o f_1``
is a sum of one term per layer, ``L f = sum_i J_{f_n..f_{i+1}} L f_i``, where ``L f_i`` is the
Lie derivative of layer ``i`` alone. ``layer_lie_derivatives`` computes every term with hooks
that transform a layer's input by ``rho(t_i)`` and undo it on its output, and differentiates in
each ``t_i`` separately; the terms add up to the total (up to what happens outside the hooked
layers, returned as the residual).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from equilib.groups import cubic_kernel, rotate

__all__ = [
    "TRANSFORMS",
    "translate",
    "act",
    "lie_derivative",
    "lie_derivative_norm",
    "LayerAttribution",
    "layer_lie_derivatives",
    "default_layers",
    "group_errors",
    "transform_error_curve",
]

TRANSFORMS = ("rotation", "translation_x", "translation_y")


def _check_transform(transform: str) -> None:
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; expected one of {list(TRANSFORMS)}")


# --------------------------------------------------------------------------- resampling


def _as_param(t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar or per-image (B,) transformation parameter as a tensor on x's device/dtype."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
        raise ValueError(
            f"the transformation parameter must be a scalar or have shape ({x.shape[0]},) "
            f"(one per image); got shape {tuple(t.shape)}"
        )
    return t


def _weights_1d(src: torch.Tensor, n: int, cyclic: bool) -> torch.Tensor:
    """Interpolation weights ``k(src - j)`` for taps ``j = 0..n-1``: ``src (...)`` -> ``(..., n)``.

    With ``cyclic`` the distance wraps around the axis of length ``n``.
    """
    taps = torch.arange(n, dtype=src.dtype, device=src.device)
    d = src.unsqueeze(-1) - taps
    if cyclic:
        d = d - n * torch.floor((d.detach() + n / 2) / n)  # into [-n/2, n/2): locally a shift
    return cubic_kernel(d)


def _shift_matrix(d: torch.Tensor, n: int, cyclic: bool) -> torch.Tensor:
    """``M[..., i, j] = k(i - d - j)``: ``(M @ v)[i]`` reads ``v`` at ``i - d``."""
    rows = torch.arange(n, dtype=d.dtype, device=d.device)
    src = rows - d.unsqueeze(-1)  # (..., n)
    return _weights_1d(src, n, cyclic)


def translate(
    x: torch.Tensor, dy: float | torch.Tensor, dx: float | torch.Tensor, cyclic: bool = True
) -> torch.Tensor:
    """Shift images down by ``dy`` and right by ``dx`` pixels (sub-pixel, cubic interpolation).

    ``x: (B, ..., H, W)``; ``dy``, ``dx``: scalars or ``(B,)``. With ``cyclic`` (default) the
    image wraps around, so integer shifts equal ``torch.roll``; otherwise zeros enter.
    """
    if x.ndim < 3:
        raise ValueError(f"translate expects x of shape (B, ..., H, W); got {tuple(x.shape)}")
    H, W = x.shape[-2:]
    ty, tx = _as_param(dy, x), _as_param(dx, x)
    My = _shift_matrix(ty, H, cyclic)  # (H, H) or (B, H, H)
    Mx = _shift_matrix(tx, W, cyclic)
    flat = x.reshape(x.shape[0], -1, H, W)
    eq_y = "ih" if ty.ndim == 0 else "bih"
    eq_x = "jw" if tx.ndim == 0 else "bjw"
    out = torch.einsum(f"{eq_y},bchw,{eq_x}->bcij", My, flat, Mx)
    return out.reshape(x.shape)


def _shift_group_axis(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Cyclically shift axis -3 (the group axis) by ``s`` steps (cubic interpolation)."""
    G = x.shape[-3]
    M = _shift_matrix(s, G, cyclic=True)
    return torch.einsum("gk,...khw->...ghw", M, x)


def _times(t: torch.Tensor, c: float) -> torch.Tensor:
    """``t * c`` with ``c`` as a tensor of ``t``'s dtype (a Python float would promote the
    forward-mode tangent of a 0-dim ``t`` to float64)."""
    return t * torch.as_tensor(c, dtype=t.dtype, device=t.device)


def act(
    x: torch.Tensor, t: float | torch.Tensor, transform: str, in_size: int | None = None
) -> torch.Tensor:
    """The continuous action ``rho(t) x`` on a tensor, chosen from its shape (module docstring).

    ``transform`` is one of ``TRANSFORMS``; ``in_size`` is the width of the network's input (for
    translations of smaller feature maps), default ``x``'s own width.
    """
    _check_transform(transform)
    if x.ndim <= 2:
        return x
    if x.ndim == 3:
        raise ValueError(
            f"cannot tell how {transform} acts on a tensor of shape {tuple(x.shape)}: expected "
            "(B, C, H, W), (B, C, G, H, W) or an invariant (B, K)"
        )
    t = _as_param(t, x)
    if transform == "rotation":
        if x.ndim == 5:
            x = _shift_group_axis(x, _times(t, x.shape[-3] / (2 * math.pi)))
        return rotate(x, t, mode="cubic")
    scale = 1.0 if in_size is None else x.shape[-1] / in_size
    zero = torch.zeros_like(t)
    if transform == "translation_x":
        return translate(x, zero, _times(t, scale))
    return translate(x, _times(t, scale), zero)


# --------------------------------------------------------------------------- Lie derivative


def _check_input(x: torch.Tensor, transform: str) -> None:
    _check_transform(transform)
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a batch of images (B, C, H, W); got {shape}")
    H, W = x.shape[-2:]
    if transform == "rotation" and H != W:
        raise ValueError(
            f"a rotation needs square inputs (B, C, H, H); this input is {H}x{W}: crop or pad it"
        )
    if min(H, W) < 4:
        raise ValueError(f"inputs of {H}x{W} pixels are too small to resample (need at least 4x4)")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")


def _resolve_out_action(out_action: str, y: torch.Tensor) -> str:
    if out_action == "auto":
        return "invariant" if y.ndim <= 2 else "same"
    if out_action not in ("invariant", "same"):
        raise ValueError(f"out_action must be 'auto', 'invariant' or 'same'; got {out_action!r}")
    return out_action


def lie_derivative(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    transform: str = "rotation",
    *,
    out_action: str = "auto",
    method: str = "jvp",
    eps: float = 1e-3,
) -> torch.Tensor:
    """The Lie derivative ``L f(x) = d/dt rho_out(t)^-1 f(rho_in(t) x)`` at ``t = 0``.

    ``x: (B, C, H, W)`` -> a tensor shaped like ``f(x)``. ``transform``: ``"rotation"`` (per
    radian), ``"translation_x"``/``"translation_y"`` (per pixel, cyclic). ``out_action``:
    ``"invariant"`` (nothing to undo, e.g. logits), ``"same"`` (undo the transform on a feature
    map) or ``"auto"`` (invariant for ``(B, K)`` outputs, same otherwise). ``method``: ``"jvp"``
    (forward-mode AD) or ``"fd"`` (central difference with step ``eps``).
    """
    _check_input(x, transform)
    in_size = x.shape[-1]
    with torch.no_grad():
        y0 = f(x)
    mode = _resolve_out_action(out_action, y0)

    def g(t: torch.Tensor) -> torch.Tensor:
        y = f(act(x, t, transform))
        return act(y, -t, transform, in_size) if mode == "same" else y

    t0 = torch.zeros((), dtype=x.dtype, device=x.device)
    if method == "jvp":
        _, d = torch.func.jvp(g, (t0,), (torch.ones_like(t0),))
        return d
    if method == "fd":
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        with torch.no_grad():
            return (g(t0 + eps) - g(t0 - eps)) / (2 * eps)
    raise ValueError(f"method must be 'jvp' or 'fd'; got {method!r}")


def _relative(d: torch.Tensor, y: torch.Tensor) -> float:
    d, y = d.detach(), y.detach()
    scale = y.norm()
    return float(d.norm() / scale) if scale > 0 else float(d.norm())


def lie_derivative_norm(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    transform: str = "rotation",
    **kwargs,
) -> float:
    """Relative size of the Lie derivative over a batch: ``|L f(X)|_F / |f(X)|_F``.

    ``transform`` may also be ``"translation"``: the root of the summed squares of the x and y
    terms. Other keyword arguments go to ``lie_derivative``. 0 means equivariant to first order.
    """
    with torch.no_grad():
        y = f(x)
    if transform == "translation":
        dx = lie_derivative(f, x, "translation_x", **kwargs)
        dy = lie_derivative(f, x, "translation_y", **kwargs)
        both = torch.sqrt(dx.detach().norm() ** 2 + dy.detach().norm() ** 2)
        return float(both / y.norm().clamp_min(1e-30))
    return _relative(lie_derivative(f, x, transform, **kwargs), y)


# --------------------------------------------------------------------------- per layer


def default_layers(model: nn.Module) -> list[str]:
    """Names of the layers to attribute: ``blocks.i`` and ``head`` of a block model
    (``equilib.models.BlockModel``: the zoo's and the partial G-CNN), or the children of an
    ``nn.Sequential``."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
        names = [f"blocks.{i}" for i in range(len(blocks))]
        if isinstance(getattr(model, "head", None), nn.Module):
            names.append("head")
        return names
    if isinstance(model, nn.Sequential) and len(model) > 0:
        return [name for name, _ in model.named_children()]
    raise ValueError(
        f"{type(model).__name__} has neither .blocks (an equilib model) nor is an nn.Sequential, "
        "so there are no default layers to attribute; pass layers=[...] with names from "
        "model.named_modules()"
    )


@dataclass
class LayerAttribution:
    """Per-layer terms of a Lie derivative; ``sum(terms) + residual == total``.

    ``terms[name]`` and ``total`` are shaped like the model's output; ``scale`` is |f(X)|_F.
    """

    transform: str
    names: list[str]
    terms: dict[str, torch.Tensor]
    total: torch.Tensor
    scale: float
    method: str = "jvp"
    extra: dict = field(default_factory=dict)

    @property
    def residual(self) -> torch.Tensor:
        """What the hooked layers do not account for (operations between them)."""
        return self.total - sum(self.terms.values())

    def norms(self) -> dict[str, float]:
        """Relative size ``|term|_F / |f(X)|_F`` of each layer's term."""
        s = self.scale if self.scale > 0 else 1.0
        return {n: float(self.terms[n].norm()) / s for n in self.names}

    def total_norm(self) -> float:
        """Relative size of the whole network's Lie derivative."""
        return float(self.total.norm()) / (self.scale if self.scale > 0 else 1.0)


def layer_lie_derivatives(
    model: nn.Module,
    x: torch.Tensor,
    transform: str = "rotation",
    layers: Sequence[str] | None = None,
) -> LayerAttribution:
    """Attribute the Lie derivative of ``model`` at ``x: (B, C, H, W)`` to its layers.

    ``layers``: module names (default ``default_layers(model)``). Each named module gets a
    forward pre-hook ``h -> rho(t_i) h`` and a forward hook ``y -> rho(t_i)^-1 y``; the term of
    layer ``i`` is ``d model(x) / d t_i`` at ``t = 0`` (one ``jvp`` per layer), which equals
    ``J_{after i} L f_i``. The hooked layers should be called in sequence, once each.
    """
    _check_input(x, transform)
    names = list(default_layers(model) if layers is None else layers)
    if not names:
        raise ValueError("layers is empty; give at least one module name to attribute")
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules or n == ""]
    if missing:
        valid = [n for n in modules if n]
        raise ValueError(f"no module named {missing} in {type(model).__name__}; valid: {valid}")
    in_size = x.shape[-1]
    state: dict = {"t": None, "calls": [0] * len(names)}

    def make_hooks(i: int, name: str):
        def pre(module, inputs):
            state["calls"][i] += 1
            if state["calls"][i] > 1:
                raise ValueError(f"layer {name!r} is called more than once per forward pass")
            if not inputs or not isinstance(inputs[0], torch.Tensor):
                raise ValueError(f"layer {name!r} does not take a tensor as first input")
            h = inputs[0]
            try:
                h = act(h, state["t"][i], transform, in_size)
            except ValueError as err:
                raise ValueError(f"layer {name!r}: input {tuple(h.shape)}: {err}") from None
            return (h, *inputs[1:])

        def post(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise ValueError(f"layer {name!r} does not return a single tensor")
            try:
                return act(output, -state["t"][i], transform, in_size)
            except ValueError as err:
                raise ValueError(f"layer {name!r}: output {tuple(output.shape)}: {err}") from None

        return pre, post

    def run(ts: torch.Tensor) -> torch.Tensor:
        state["t"] = ts
        state["calls"] = [0] * len(names)
        return model(x)

    handles = []
    try:
        for i, n in enumerate(names):
            pre, post = make_hooks(i, n)
            handles.append(modules[n].register_forward_pre_hook(pre))
            handles.append(modules[n].register_forward_hook(post))
        zeros = torch.zeros(len(names), dtype=x.dtype, device=x.device)
        with torch.no_grad():
            y = run(zeros)
        terms = {}
        for i, n in enumerate(names):
            tangent = torch.zeros_like(zeros)
            tangent[i] = 1
            _, d = torch.func.jvp(run, (zeros,), (tangent,))
            terms[n] = d.detach()
    finally:
        for h in handles:
            h.remove()
    total = lie_derivative(model, x, transform).detach()
    return LayerAttribution(transform, names, terms, total, float(y.norm()))


# --------------------------------------------------------------------------- discrete groups


def group_errors(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    groups: dict,
    out_action: str = "invariant",
    elements: dict | None = None,
) -> dict[str, float]:
    """Discrete equivariance errors of a trained model: ``{name: error}`` for each group.

    ``groups``: ``{name: equilib.groups.Group}``; ``out_action`` as in
    ``equilib.groups.equivariance_error`` (``"invariant"`` for logits); ``elements``: optional
    ``{name: [g, ...]}`` to test only some elements of a large group. Each error is
    ``max_g |f(g.x) - g.f(x)| / |f(x)|``.
    """
    from equilib.groups import Group, equivariance_error

    if not isinstance(groups, dict) or not groups:
        raise ValueError("groups must be a non-empty dict {name: equilib.groups.Group}")
    out = {}
    for name, group in groups.items():
        if not isinstance(group, Group):
            raise TypeError(f"groups[{name!r}] must be an equilib.groups.Group, got {group!r}")
        some = None if elements is None else elements.get(name)
        out[name] = equivariance_error(model, group, x, out_action=out_action, elements=some)
    return out


@torch.no_grad()
def transform_error_curve(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    transform: str,
    values: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """Invariance error ``|f(rho(t) x) - f(x)|_F / |f(x)|_F`` for each ``t`` in ``values``.

    ``x: (B, C, H, W)``; returns a tensor ``(len(values),)``. The slope at ``t = 0`` is the
    norm of the Lie derivative; exact group elements (quarter turns, integer shifts) show as
    dips to zero for a network equivariant to them.
    """
    _check_input(x, transform)
    y = f(x)
    scale = y.norm().clamp_min(1e-30)
    errs = [(f(act(x, float(t), transform)) - y).norm() / scale for t in values]
    return torch.stack(errs)
