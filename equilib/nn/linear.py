"""Fully-connected layers on images: plain FC, grouped linear maps, and the factored FC (F-FC).

An image layer maps ``x: (B, C, H, W)`` to ``y: (B, C', H', W')``. Write ``X = H*W`` and
``Y = H'*W'``. A plain FC layer has a weight ``W[c', y, c, x]`` with ``C'Y * CX`` entries; the
factored layer (F-FC) keeps one rank-one spatial map per channel pair,
``W[c', y, c, x] = V[c', c, y] * U[c', c, x]``, i.e. ``C'C(X + Y)`` weights, and never builds
the full ``C'CXY`` tensor.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GroupedLinear", "ImageLinear", "FactoredLinear", "check_shape"]


def check_shape(shape, what: str = "shape", n: int = 3) -> tuple[int, ...]:
    """Validate a tuple of ``n`` positive ints (e.g. ``(C, H, W)``) and return it as a tuple."""
    try:
        t = tuple(int(s) for s in shape)
        ok = len(t) == n and all(s >= 1 for s in t) and all(int(s) == s for s in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        names = "(C, H, W)" if n == 3 else f"{n} positive ints"
        raise ValueError(f"{what} must be {names} with positive ints, got {shape!r}")
    return t


class GroupedLinear(nn.Module):
    """``G`` independent linear maps applied to the ``G`` slices of the input, optionally on a basis.

    ``x: (..., G, in) -> y: (..., G, out)`` with
    ``y[..., g, o] = sum_i W[g, o, i] x[..., g, i] + bias[g, o]`` and ``W = weight @ basis``
    (``weight: (G, out, M)``, ``basis: (M, in)`` a fixed buffer) or ``W = weight``
    (``weight: (G, out, in)``) when no basis is given.
    """

    def __init__(
        self,
        groups: int,
        in_features: int,
        out_features: int,
        bias: bool = True,
        basis: torch.Tensor | None = None,
        init_std: float | None = None,
    ):
        super().__init__()
        for name, v in (
            ("groups", groups),
            ("in_features", in_features),
            ("out_features", out_features),
        ):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"GroupedLinear needs a positive int {name}, got {v!r}")
        self.groups, self.in_features, self.out_features = groups, in_features, out_features
        if basis is not None:
            if (
                not isinstance(basis, torch.Tensor)
                or basis.ndim != 2
                or basis.shape[1] != in_features
            ):
                got = (
                    tuple(basis.shape) if isinstance(basis, torch.Tensor) else type(basis).__name__
                )
                raise ValueError(
                    f"basis must be a tensor (M, in_features={in_features}), got {got}"
                )
            if basis.shape[0] < 1:
                raise ValueError("basis must have at least one row (M >= 1)")
            self.register_buffer("basis", basis.detach().clone().float())
            m = basis.shape[0]
        else:
            self.register_buffer("basis", None)
            m = in_features
        self.weight = nn.Parameter(torch.empty(groups, out_features, m))
        self.bias = nn.Parameter(torch.zeros(groups, out_features)) if bias else None
        std = init_std if init_std is not None else 1.0 / math.sqrt(in_features)
        with torch.no_grad():
            if basis is None:
                self.weight.normal_(0.0, std)
            else:
                # least-squares weights whose effective W has i.i.d.-like entries of size std
                target = torch.randn(groups, out_features, in_features) * std
                sol = torch.linalg.lstsq(
                    self.basis.T.double(), target.reshape(-1, in_features).T.double()
                ).solution
                self.weight.copy_(sol.T.reshape(groups, out_features, m).float())

    def effective_weight(self) -> torch.Tensor:
        """The weight acting on the input: ``(G, out, in)``."""
        return self.weight if self.basis is None else self.weight @ self.basis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[-2:] != (self.groups, self.in_features):
            raise ValueError(
                f"GroupedLinear expects input (..., G={self.groups}, in={self.in_features}), "
                f"got {tuple(x.shape)}"
            )
        y = torch.einsum("goi,...gi->...go", self.effective_weight(), x)
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        m = "" if self.basis is None else f", basis=({self.basis.shape[0]}, {self.in_features})"
        return (
            f"groups={self.groups}, in_features={self.in_features}, "
            f"out_features={self.out_features}, bias={self.bias is not None}{m}"
        )


class ImageLinear(nn.Module):
    """A fully-connected layer between images (the FC path): ``(B, C, H, W) -> (B, C', H', W')``.

    ``y = reshape(linear(flatten(x)))`` with one ``nn.Linear(C*H*W, C'*H'*W')``; He-normal
    weights, zero bias.
    """

    def __init__(self, in_shape, out_shape, bias: bool = True):
        super().__init__()
        self.in_shape = check_shape(in_shape, "in_shape")
        self.out_shape = check_shape(out_shape, "out_shape")
        self.linear = nn.Linear(math.prod(self.in_shape), math.prod(self.out_shape), bias=bias)
        nn.init.kaiming_normal_(self.linear.weight, nonlinearity="relu")  # std sqrt(2 / CX)
        if bias:
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_shape, type(self).__name__)
        return self.linear(x.flatten(1)).view(x.shape[0], *self.out_shape)

    def effective_weight(self) -> torch.Tensor:
        """The weight as a ``(C', H', W', C, H, W)`` tensor."""
        return self.linear.weight.view(*self.out_shape, *self.in_shape)

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}"


def _check_input(x: torch.Tensor, in_shape: tuple[int, ...], who: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != in_shape:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{who} expects input (B, {', '.join(map(str, in_shape))}), got {got}")


class FactoredLinear(nn.Module):
    """Factored FC (F-FC): ``W[c', y, c, x] = V[c', c, y] U[c', c, x]``, computed by two einsums.

    ``x: (B, C, H, W) -> y: (B, C', H', W')`` with
    ``h[b, c', c] = sum_x U[c', c, x] x[b, c, x]`` and
    ``y[b, c', y] = sum_c V[c', c, y] h[b, c', c] + bias[c', y]``.
    Stored as two ``GroupedLinear``: ``u`` (groups C, in X, out C') and ``v`` (groups C', in C,
    out Y). Weights: ``C'C(X + Y)``. Optional fixed bases make the sparsified S-FC:
    ``basis_in: (M_x, X)`` gives ``U = u @ basis_in``; ``basis_out: (M_y, Y)`` gives
    ``V = v @ basis_out`` (``v`` then has ``M_y`` outputs, interpolated to ``Y`` positions).
    """

    def __init__(
        self,
        in_shape,
        out_shape,
        bias: bool = True,
        basis_in: torch.Tensor | None = None,
        basis_out: torch.Tensor | None = None,
    ):
        super().__init__()
        self.in_shape = check_shape(in_shape, "in_shape")
        self.out_shape = check_shape(out_shape, "out_shape")
        C, H, W = self.in_shape
        Co, Ho, Wo = self.out_shape
        X, Y = H * W, Ho * Wo
        if basis_out is not None:
            if (
                not isinstance(basis_out, torch.Tensor)
                or basis_out.ndim != 2
                or basis_out.shape[1] != Y
                or basis_out.shape[0] < 1
            ):
                got = tuple(basis_out.shape) if isinstance(basis_out, torch.Tensor) else basis_out
                raise ValueError(f"basis_out must be a tensor (M_y, Y={Y}), got {got}")
            self.register_buffer("basis_out", basis_out.detach().clone().float())
        else:
            self.register_buffer("basis_out", None)
        n_out = Y if basis_out is None else basis_out.shape[0]
        # U entries ~ 1/sqrt(X), V entries ~ sqrt(2/C): the effective W has He-like scale
        self.u = GroupedLinear(C, X, Co, bias=False, basis=basis_in, init_std=1 / math.sqrt(X))
        self.v = GroupedLinear(Co, C, n_out, bias=bias, init_std=math.sqrt(2 / C))
        if basis_out is not None:
            with torch.no_grad():  # make the effective V (not v) have entries of size sqrt(2/C)
                target = torch.randn(Co, Y, C) * math.sqrt(2 / C)
                sol = torch.linalg.lstsq(
                    self.basis_out.T.double(), target.permute(1, 0, 2).reshape(Y, -1).double()
                ).solution
                self.v.weight.copy_(sol.reshape(n_out, Co, C).permute(1, 0, 2).float())

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The effective factors ``U: (C', C, X)`` and ``V: (C', C, Y)``."""
        U = self.u.effective_weight().permute(1, 0, 2)  # (C, C', X) -> (C', C, X)
        V = self.v.effective_weight()  # (C', n_out, C)
        if self.basis_out is not None:
            V = torch.einsum("dmc,my->dyc", V, self.basis_out)
        return U, V.permute(0, 2, 1)

    @torch.no_grad()
    def scale_into_v_(self) -> None:
        """Give every row ``u[c, c', :]`` unit norm and multiply ``V[c', c, :]`` by its old norm.

        ``W = V * U`` is unchanged by ``U -> U / s``, ``V -> V s`` per channel pair, so the
        function stays the same and the whole scale of the path lives in ``V``.
        """
        norm = self.u.weight.norm(dim=2).clamp_min(1e-12)  # (C, C'): |u[c, c', :]|
        self.u.weight.div_(norm[:, :, None])
        self.v.weight.mul_(norm.T[:, None, :])

    @torch.no_grad()
    def balance_(self) -> None:
        """Give the layer the smallest-norm weights of the same function.

        ``W = V * U`` is unchanged by ``u[c, c', :] -> u[c, c', :] / s``,
        ``v[c', :, c] -> v[c', :, c] s`` per channel pair, and ``|u|^2 + |v|^2`` is smallest
        when the two have equal norms: ``s = sqrt(|u[c, c', :]| / |v[c', :, c]|)`` (the stored
        weights: coefficients on the bases for S-FC).
        """
        nu = self.u.weight.norm(dim=2)  # (C, C'): |u[c, c', :]|
        nv = self.v.weight.norm(dim=1).T  # (C', C) -> (C, C'): |v[c', :, c]|
        s = (nu / nv.clamp_min(1e-12)).clamp_min(1e-12).sqrt()  # u / s and v * s: equal norms
        self.u.weight.div_(s[:, :, None])
        self.v.weight.mul_(s.T[:, None, :])

    @torch.no_grad()
    def project_u_grad_(self) -> None:
        """Remove from ``u``'s gradient its component along each (unit-norm) row.

        With the rows of ``u`` on the unit sphere, a step along the radial direction changes
        nothing but the scale that :meth:`retract_u_` removes again; left in, it feeds the
        optimiser's moment estimates with a direction it cannot move in.
        """
        g = self.u.weight.grad
        if g is not None:
            w = self.u.weight
            g.sub_(w * (g * w).sum(dim=2, keepdim=True))

    @torch.no_grad()
    def retract_u_(self) -> None:
        """Put every row of ``u`` back on the unit sphere after an optimiser step.

        Unlike :meth:`scale_into_v_` this does not hand the norm to ``V``: a step of size
        ``eps`` tangent to the sphere lengthens a row to ``sqrt(1 + eps^2)``, and passing that
        factor on to ``V`` after every step would make ``V`` grow geometrically with the number
        of steps, whatever the data say. Dropping it changes the function only at second order
        in the step (projected gradient descent on the sphere).
        """
        self.u.weight.div_(self.u.weight.norm(dim=2, keepdim=True).clamp_min(1e-12))

    def effective_weight(self) -> torch.Tensor:
        """The full weight ``W = V * U``: ``(C', H', W', C, H, W)`` (small layers, tests)."""
        U, V = self.factors()
        Wd = torch.einsum("dcy,dcx->dycx", V, U)
        return Wd.reshape(*self.out_shape, *self.in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_shape, type(self).__name__)
        B = x.shape[0]
        h = self.u(x.flatten(2))  # (B, C, C')
        y = self.v(h.transpose(1, 2))  # (B, C', Y or M_y)
        if self.basis_out is not None:
            y = torch.einsum("bdm,my->bdy", y, self.basis_out)
        return y.reshape(B, *self.out_shape)

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}"
