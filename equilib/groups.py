"""Groups acting on images and feature maps, and a numerical test of equivariance.

An image is a tensor ``x: (..., H, W)``; a feature map with a group axis is ``x: (..., |G|, H, W)``.
Every group here is finite (SO(2) is represented by a grid of angles) so that an equivariance
test can visit every element.

Conventions
-----------
* ``compose(a, b)`` is "first b, then a": ``act(compose(a, b), x) == act(a, act(b, x))``.
* Rotation by ``k`` steps of C_N turns the image counter-clockwise by ``2*pi*k/N``, matching
  ``torch.rot90(x, k, dims=(-2, -1))`` for quarter turns.
* On a feature map with a group axis the *regular representation* acts:
  ``(g.f)[g h] = g.(f[h])``: the spatial part is transformed and the group axis permuted.

Rotations by multiples of 90 degrees are exact permutations of pixels. Any other angle needs
interpolation on the pixel grid: a bilinear rotation is a low-pass filter that also cuts the
corners of the image, so rotating by ``theta`` and back does not return the input. Chapter 01
measures that error; ``rotation_roundtrip_error`` computes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from equilib._checks import is_int

__all__ = [
    "Group",
    "CyclicShifts",
    "Rotations",
    "Dihedral",
    "SO2Grid",
    "Trivial",
    "ROTATE_MODES",
    "cubic_kernel",
    "rotate",
    "shift",
    "flip",
    "rotation_roundtrip_error",
    "equivariance_error",
    "invariance_error",
]


def _check_image(x: torch.Tensor, square: bool = False, what: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{what} must be a torch.Tensor of shape (..., H, W), got {type(x).__name__}"
        )
    if x.ndim < 2:
        raise ValueError(
            f"{what} must have shape (..., H, W) with at least 2 dims, got {tuple(x.shape)}"
        )
    if square and x.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"rotations need square images (..., H, H); got {what} of shape {tuple(x.shape)}"
        )


# --------------------------------------------------------------------------- transforms


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Cyclically shift images down by ``dy`` and right by ``dx`` pixels. ``x: (..., H, W)``."""
    _check_image(x)
    for name, d in (("dy", dy), ("dx", dx)):
        if isinstance(d, bool) or int(d) != d:
            raise ValueError(
                f"{name} must be a whole number of pixels, got {d!r} (sub-pixel shifts: "
                "equilib.measure.translate interpolates)"
            )
    return torch.roll(x, shifts=(int(dy), int(dx)), dims=(-2, -1))


def flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror images left-right (about the vertical axis). ``x: (..., H, W)``."""
    _check_image(x)
    return torch.flip(x, dims=(-1,))


#: The interpolation ``rotate`` offers for angles off the pixel grid.
ROTATE_MODES = ("bilinear", "nearest", "cubic")


def cubic_kernel(s: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel: 1 at 0, 0 at other integers, C^1, support (-2, 2).

    ``k(s) = (a+2)|s|^3 - (a+3)|s|^2 + 1`` for ``|s| <= 1``,
    ``a|s|^3 - 5a|s|^2 + 8a|s| - 4a`` for ``1 < |s| < 2``, else 0.
    """
    s = s.abs()
    s2 = s * s
    s3 = s2 * s
    near = (a + 2) * s3 - (a + 3) * s2 + 1
    far = a * s3 - 5 * a * s2 + 8 * a * s - 4 * a
    inner = (s <= 1).to(s.dtype)
    outer = (s < 2).to(s.dtype) - inner
    return near * inner + far * outer


def _cubic_taps(src: torch.Tensor, n: int) -> torch.Tensor:
    """Weights ``k(src - j)`` of the taps ``j = 0..n-1`` (zeros beyond the axis): ``(...) -> (..., n)``."""
    taps = torch.arange(n, dtype=src.dtype, device=src.device)
    return cubic_kernel(src.unsqueeze(-1) - taps)


def _rotate_cubic(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """``rotate`` with Keys' cubic kernel, as two einsums. ``x: (..., H, H)``, ``angle``: () or (B,)."""
    H, W = x.shape[-2:]
    c0 = (H - 1) / 2
    coord = torch.arange(H, dtype=x.dtype, device=x.device) - c0
    yo = coord.view(H, 1).expand(H, W).reshape(-1)  # (P,)
    xo = coord.view(1, W).expand(H, W).reshape(-1)
    cos, sin = torch.cos(angle).unsqueeze(-1), torch.sin(angle).unsqueeze(-1)  # (1,) or (B, 1)
    wy = _cubic_taps(c0 + cos * yo + sin * xo, H)  # (P, H) or (B, P, H)
    wx = _cubic_taps(c0 - sin * yo + cos * xo, W)  # (P, W) or (B, P, W)
    flat = x.reshape(x.shape[0] if x.ndim > 2 else 1, -1, H, W)
    if angle.ndim == 0:
        tmp = torch.einsum("bchw,pw->bchp", flat, wx)
        out = torch.einsum("bchp,ph->bcp", tmp, wy)
    else:
        tmp = torch.einsum("bchw,bpw->bchp", flat, wx)
        out = torch.einsum("bchp,bph->bcp", tmp, wy)
    return out.reshape(x.shape)


def rotate(x: torch.Tensor, angle: float | torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Rotate square images counter-clockwise by ``angle`` radians about their centre.

    ``x: (..., H, H)`` -> same shape; ``angle``: a scalar, or ``(B,)`` with one angle per image
    of the leading axis ``B = x.shape[0]``. Output pixel at centred coordinates ``(y, x)`` (row
    down, column right) reads the input at ``(cos t y + sin t x, -sin t y + cos t x)``, zeros
    outside the image, so quarter turns agree with ``torch.rot90(x, k, dims=(-2, -1))`` up to
    float rounding. ``mode`` (one of ``ROTATE_MODES``): ``"bilinear"`` or ``"nearest"``
    (``grid_sample``), or ``"cubic"``: Keys' kernel (``cubic_kernel``) in plain torch operations,
    smooth in ``angle`` and differentiable in forward mode too (``torch.func.jvp``), which
    ``grid_sample`` is not; ``equilib.measure`` uses it for Lie derivatives. Differentiable in
    ``x`` and ``angle`` in every mode.
    """
    _check_image(x, square=True)
    if mode not in ROTATE_MODES:
        raise ValueError(f"unknown rotation mode {mode!r}; expected one of {list(ROTATE_MODES)}")
    if not x.is_floating_point():
        raise TypeError(f"rotate interpolates, so x must be a floating-point tensor; got {x.dtype}")
    lead = x.shape[:-2]
    H, W = x.shape[-2:]
    angle_t = torch.as_tensor(angle, dtype=x.dtype, device=x.device)
    if not (
        angle_t.ndim == 0 or (angle_t.ndim == 1 and len(lead) >= 1 and angle_t.shape[0] == lead[0])
    ):
        raise ValueError(
            f"angle must be a scalar or a 1-D tensor of length {lead[0] if lead else 1} "
            f"(one per image), got shape {tuple(angle_t.shape)}"
        )
    if mode == "cubic":
        return _rotate_cubic(x, angle_t)
    flat = x.reshape(-1, 1, H, W)
    if angle_t.ndim == 0:
        angle_t = angle_t.expand(flat.shape[0])
    else:
        angle_t = angle_t.repeat_interleave(flat.shape[0] // lead[0])
    c, s = torch.cos(angle_t), torch.sin(angle_t)
    # affine_grid maps output coordinates (x right, y down) to input coordinates. A
    # counter-clockwise turn of the picture samples the input at the clockwise-turned point.
    zero = torch.zeros_like(c)
    theta = torch.stack(
        [torch.stack([c, -s, zero], -1), torch.stack([s, c, zero], -1)], dim=-2
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    out = F.grid_sample(flat, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out.reshape(x.shape)


def _quarter_turns(angle: float) -> int | None:
    """Number of quarter turns if ``angle`` is a multiple of pi/2 (to 1e-9), else None."""
    q = angle / (math.pi / 2)
    r = round(q)
    return r % 4 if abs(q - r) < 1e-9 else None


def rotate_exact_or_interp(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate by ``angle`` radians: exact ``rot90`` for quarter turns, bilinear otherwise."""
    _check_image(x, square=True)
    q = _quarter_turns(float(angle))
    if q is not None:
        return torch.rot90(x, q, dims=(-2, -1))
    return rotate(x, float(angle))


def rotation_roundtrip_error(x: torch.Tensor, angle: float) -> float:
    """Relative error of rotating by ``angle`` and back: |R(-a) R(a) x - x| / |x|.

    Zero for quarter turns (exact permutations of pixels); positive for other angles, where
    bilinear interpolation blurs the image and the corners leave the canvas.
    """
    back = rotate_exact_or_interp(rotate_exact_or_interp(x, angle), -angle)
    return float((back - x).norm() / x.norm().clamp_min(1e-30))


# --------------------------------------------------------------------------- groups


class Group:
    """A finite group acting on images ``(..., H, W)`` and on feature maps ``(..., |G|, H, W)``.

    Subclasses define ``elements``, ``compose``, ``inverse`` and ``act``; the regular action on
    feature maps (``act_fmap``) follows from those.
    """

    name = "group"

    def __init__(self, elements: Sequence[Any]):
        self._elements = list(elements)
        if len(self._elements) < 1:
            raise ValueError(f"{type(self).__name__} needs at least one element")
        self._index = {g: i for i, g in enumerate(self._elements)}

    @property
    def elements(self) -> list:
        """All elements, identity first."""
        return list(self._elements)

    @property
    def identity(self) -> Any:
        return self._elements[0]

    @property
    def order(self) -> int:
        return len(self._elements)

    def __len__(self) -> int:
        return self.order

    def __iter__(self):
        return iter(self._elements)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order})"

    def index(self, g: Any) -> int:
        """Position of element ``g`` in ``elements`` (and on a feature map's group axis)."""
        self._check_element(g)
        return self._index[g]

    def _check_element(self, g: Any) -> None:
        try:
            known = g in self._index
        except TypeError:  # unhashable, e.g. a list instead of a tuple
            known = False
        if not known:
            raise ValueError(f"{g!r} is not an element of {self!r}; elements are {self._elements}")

    def compose(self, a: Any, b: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, a: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def act(self, g: Any, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def permutation(self, g: Any) -> list[int]:
        """Indices ``p`` with ``(g.f)[..., i, :, :] = g.(f[..., p[i], :, :])`` (regular rep).

        ``(g.f)[g h] = g.(f[h])``, so the entry at ``i = index(g h)`` reads ``index(h)``, i.e.
        ``p[i] = index(g^-1 elements[i])``.
        """
        g_inv = self.inverse(g)
        return [self.index(self.compose(g_inv, h)) for h in self._elements]

    def act_fmap(self, g: Any, x: torch.Tensor) -> torch.Tensor:
        """Regular representation on a feature map ``x: (..., |G|, H, W)``."""
        self._check_element(g)
        if x.ndim < 3 or x.shape[-3] != self.order:
            raise ValueError(
                f"act_fmap expects a feature map (..., {self.order}, H, W) with a group axis of "
                f"size |G|={self.order}; got shape {tuple(x.shape)}"
            )
        perm = torch.as_tensor(self.permutation(g), device=x.device)
        return self.act(g, x.index_select(-3, perm))

    def sample(self, n: int, generator: torch.Generator | None = None) -> list:
        """``n`` elements drawn uniformly with replacement."""
        idx = torch.randint(self.order, (n,), generator=generator).tolist()
        return [self._elements[i] for i in idx]


class Trivial(Group):
    """The one-element group: every function is equivariant to it."""

    name = "trivial"

    def __init__(self):
        super().__init__([0])

    def compose(self, a, b):
        return 0

    def inverse(self, a):
        return 0

    def act(self, g, x):
        _check_image(x)
        return x


class CyclicShifts(Group):
    """Cyclic translations of ``H x W`` images; elements ``(dy, dx)``, action ``torch.roll``.

    The group Z_H x Z_W: exact on the pixel grid, the symmetry a circular convolution respects.
    """

    name = "shifts"

    def __init__(self, H: int, W: int | None = None):
        W = H if W is None else W
        for n, v in (("H", H), ("W", W)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"CyclicShifts needs positive integer sizes, got {n}={v!r}")
        self.H, self.W = H, W
        super().__init__([(dy, dx) for dy in range(H) for dx in range(W)])

    def compose(self, a, b):
        return ((a[0] + b[0]) % self.H, (a[1] + b[1]) % self.W)

    def inverse(self, a):
        return ((-a[0]) % self.H, (-a[1]) % self.W)

    def act(self, g, x):
        self._check_element(g)
        _check_image(x)
        if x.shape[-2:] != (self.H, self.W):
            raise ValueError(
                f"{self!r} acts on images (..., {self.H}, {self.W}); got shape {tuple(x.shape)}"
            )
        return shift(x, g[0], g[1])

    def act_fmap(self, g, x):
        """Translations act on every channel alike; there is no group axis to permute."""
        return self.act(g, x)

    def __repr__(self) -> str:
        return f"CyclicShifts(H={self.H}, W={self.W})"


class Rotations(Group):
    """C_N: rotations by multiples of ``2*pi/N``; element ``k`` turns by ``2*pi*k/N``.

    Exact (``rot90``) when ``k*360/N`` is a multiple of 90 degrees, bilinear otherwise.
    """

    name = "rotations"

    def __init__(self, N: int):
        if not is_int(N) or N < 1:
            raise ValueError(f"the order N of C_N must be a positive integer, got {N!r}")
        self.N = N
        super().__init__(list(range(N)))

    def angle(self, k: int) -> float:
        """The rotation angle of element ``k`` in radians."""
        self._check_element(k)
        return 2 * math.pi * k / self.N

    def is_exact(self, k: int) -> bool:
        """Whether element ``k`` acts by an exact permutation of pixels."""
        return (4 * k) % self.N == 0

    def compose(self, a, b):
        return (a + b) % self.N

    def inverse(self, a):
        return (-a) % self.N

    def act(self, g, x):
        self._check_element(g)
        _check_image(x, square=True)
        if self.is_exact(g):
            return torch.rot90(x, (4 * g) // self.N, dims=(-2, -1))
        return rotate(x, self.angle(g))

    def act_fmap(self, g, x):
        self._check_element(g)
        if x.ndim < 3 or x.shape[-3] != self.N:
            raise ValueError(
                f"act_fmap expects a feature map (..., {self.N}, H, W); got shape {tuple(x.shape)}"
            )
        return self.act(g, torch.roll(x, shifts=g, dims=-3))

    def __repr__(self) -> str:
        return f"Rotations(N={self.N})"


class SO2Grid(Rotations):
    """SO(2) discretised on ``N`` equally spaced angles (C_N, used as a grid over SO(2))."""

    name = "so2"

    def __repr__(self) -> str:
        return f"SO2Grid(N={self.N})"


class Dihedral(Group):
    """D_N: N rotations and N reflections; element ``(k, f)`` = first flip if f, then rotate k.

    ``(k1, f1)(k2, f2) = (k1 + (-1)^f1 k2, f1 xor f2)`` since a flip reverses rotations.
    """

    name = "dihedral"

    def __init__(self, N: int):
        if not is_int(N) or N < 1:
            raise ValueError(f"the order N of D_N must be a positive integer, got {N!r}")
        self.N = N
        self._rot = Rotations(N)
        super().__init__([(k, f) for f in (0, 1) for k in range(N)])

    def compose(self, a, b):
        (k1, f1), (k2, f2) = a, b
        return ((k1 + (-1) ** f1 * k2) % self.N, f1 ^ f2)

    def inverse(self, a):
        k, f = a
        return ((-k) % self.N, 0) if f == 0 else (k, 1)

    def act(self, g, x):
        self._check_element(g)
        _check_image(x, square=True)
        k, f = g
        return self._rot.act(k, flip(x) if f else x)

    def __repr__(self) -> str:
        return f"Dihedral(N={self.N})"


# --------------------------------------------------------------------------- equivariance


Action = Callable[[Any, torch.Tensor], torch.Tensor]


def _resolve_action(action: Action | str | None, group: Group, default: Action) -> Action:
    if action is None:
        return default
    if callable(action):
        return action
    table = {
        "invariant": lambda g, y: y,
        "trivial": lambda g, y: y,
        "image": group.act,
        "fmap": group.act_fmap,
    }
    if action not in table:
        raise ValueError(
            f"unknown action {action!r}; expected a callable or one of {sorted(table)}"
        )
    return table[action]


@torch.no_grad()
def equivariance_error(
    f: Callable[[torch.Tensor], torch.Tensor],
    group: Group,
    x: torch.Tensor,
    in_action: Action | str | None = None,
    out_action: Action | str | None = None,
    elements: Iterable[Any] | None = None,
) -> float:
    """Largest relative equivariance error ``max_g |f(g.x) - g.f(x)| / |f(x)|``.

    ``f`` maps a batch to a batch; ``in_action`` and ``out_action`` default to ``group.act``
    (pass ``"fmap"`` for outputs with a group axis, ``"invariant"`` to test invariance, or any
    callable ``(g, y) -> y'``). ``elements`` restricts the test to some elements (all by default).
    Norms are taken over the whole batch; 0 means exactly equivariant. NaN or inf in ``f(x)``
    or in any ``f(g.x)`` raises a ``ValueError`` (never a misleading 0).
    """
    if not isinstance(group, Group):
        raise TypeError(f"group must be an equilib.groups.Group, got {type(group).__name__}")
    act_in = _resolve_action(in_action, group, group.act)
    act_out = _resolve_action(out_action, group, group.act)
    fx = f(x)
    if out_action in (None, "image", "fmap") and fx.ndim <= 2 < x.ndim:
        raise ValueError(
            f"f(x) has shape {tuple(fx.shape)} for x of shape {tuple(x.shape)}: a batch of "
            f"vectors, no image axes for {group!r} to act on. For "
            "the outputs of a classifier, test invariance: out_action='invariant' (or "
            "invariance_error)"
        )
    scale = fx.norm()
    if not torch.isfinite(scale):
        raise ValueError("f(x) contains NaN or inf; cannot measure equivariance")
    if scale == 0:
        scale = torch.ones_like(scale)
    elements = list(group.elements if elements is None else elements)
    if not elements:
        raise ValueError("elements is empty: no group element to test")
    worst = 0.0
    for g in elements:
        err = float((f(act_in(g, x)) - act_out(g, fx)).norm() / scale)
        if not math.isfinite(err):  # max(0.0, nan) would be 0.0: "exactly equivariant"
            raise ValueError(
                f"f(g.x) contains NaN or inf for the group element g = {g!r}; "
                "cannot measure equivariance"
            )
        worst = max(worst, err)
    return worst


def invariance_error(f, group: Group, x: torch.Tensor, in_action=None, elements=None) -> float:
    """Largest relative invariance error ``max_g |f(g.x) - f(x)| / |f(x)|``."""
    return equivariance_error(f, group, x, in_action, "invariant", elements)
