"""KFAC factors from the (a, g) rows of every primitive layer.

Conventions (KFAC-expand, Eschenhagen et al. 2023): for a weight used on rows r (examples x
locations x stacked copies) the GGN block is approximated by ``B (x) A`` with

    A = (1 / #rows) sum_r a_r a_r^T,        B = sum_{r, k} g_rk g_rk^T,

(``(x)`` the Kronecker product in the order of ``weight.flatten()``, i.e. output index major).
For one example and one Linear layer this is the exact GGN block. A bias is its own block with
the single factor B (exact for a Linear layer, the same expand approximation for convolutions).
``equilib.nn.GroupedLinear`` gets one ``(A_g, B_g)`` pair per group; basis primitives use
``a = basis @ input``, so that the factor of u in ``W = u Psi`` is ``Psi A_W Psi^T``.
"""

from __future__ import annotations

import torch

from equilib.laplace.curvature import LayerInfo, layer_inputs, primitive_for
from equilib.nn.conv import BasisConv2d


def torus_conv(module: torch.nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Conv2d`` or ``equilib.nn.BasisConv2d`` whose patches tile
    the torus: circular padding of ``k // 2`` on each side of an odd ``k x k`` kernel, stride
    1 (and for ``nn.Conv2d`` no dilation, one group)."""
    if isinstance(module, BasisConv2d):
        plain = True
    elif isinstance(module, torch.nn.Conv2d):
        plain = tuple(module.dilation) == (1, 1) and module.groups == 1
    else:
        return False
    kh, kw = module.kernel_size
    return (
        plain
        and module.padding_mode == "circular"
        and kh % 2 == 1
        and kw % 2 == 1
        and tuple(module.stride) == (1, 1)
        and tuple(module.padding) == (kh // 2, kw // 2)
    )


def torus_patch_gram(x: torch.Tensor, kernel_size) -> torch.Tensor:
    """sum over examples and locations of p p^T for the patches p of a ``torus_conv``: (D, D).

    With circular padding, stride 1 and an odd kernel, every location's patch reads the torus
    around it, so the entry for offsets (i, j) and (i', j') of channels c and c' depends only on
    the difference: ``R_cc'(d) = sum_{n, u} x[n, c, u] x[n, c', u + d]`` with
    ``d = (i' - i, j' - j)``, u running over the torus. All (2 kh - 1)(2 kw - 1) of them are one
    convolution (channels as the batch, examples as the channels, the input itself as the
    filter): about ``4 / (kh kw)`` of the flops of the Gram of the unfolded patches, and no patch
    is formed. x: (B, C, H, W); D = C*kh*kw is ordered like ``weight.view(C', -1)``.
    """
    kh, kw = kernel_size
    C, H, W = x.shape[1:]
    xc = x.transpose(0, 1)  # (C, B, H, W)
    # the torus around xc, kh - 1 rows and kw - 1 columns on each side (any number of turns)
    rows = torch.arange(-(kh - 1), H + kh - 1, device=x.device) % H
    cols = torch.arange(-(kw - 1), W + kw - 1, device=x.device) % W
    wrapped = xc.index_select(2, rows).index_select(3, cols)
    # R[c', c, a, b] = R_cc'(a - (kh - 1), b - (kw - 1))
    R = torch.nn.functional.conv2d(wrapped, xc)
    ih = torch.arange(kh, device=x.device)
    iw = torch.arange(kw, device=x.device)
    di = ih[None, :] - ih[:, None] + kh - 1  # [i, i'] -> a
    dj = iw[None, :] - iw[:, None] + kw - 1  # [j, j'] -> b
    S = R[:, :, di[:, None, :, None], dj[None, :, None, :]]  # (c', c, i, j, i', j')
    return S.permute(1, 2, 3, 0, 4, 5).reshape(C * kh * kw, C * kh * kw)


class TorusPatches:
    """The input of one call of a ``torus_conv``, standing in for its unfolded patches (with
    the filter basis ``(M, kh*kw)`` of a ``BasisConv2d``, else None)."""

    def __init__(self, x: torch.Tensor, kernel_size, basis: torch.Tensor | None = None):
        self.x = x
        self.kernel_size = tuple(kernel_size)
        self.basis = basis

    def gram(self) -> torch.Tensor:
        """sum over examples and locations of a a^T: (1, D, D). For a basis conv the rows are
        ``a = (I_C (x) Psi) p``, so the sum is the patch Gram projected on both sides (the order
        of ``weight.view(C', -1)``, channel major): no basis-projected rows are formed."""
        S = torus_patch_gram(self.x, self.kernel_size)
        if self.basis is not None:
            C, K = self.x.shape[1], self.kernel_size[0] * self.kernel_size[1]
            Psi = self.basis.to(S.dtype)
            S = torch.einsum("mk,ckdl,nl->cmdn", Psi, S.view(C, K, C, K), Psi)
            S = S.reshape(C * Psi.shape[0], C * Psi.shape[0])
        return S.unsqueeze(0)


def kron_layer_inputs(layers: list[LayerInfo], batch: int) -> list[list]:
    """``layer_inputs`` for KFAC: a ``TorusPatches`` for every call of a ``torus_conv`` (whose
    input factor needs no rows), the rows (B, R, G, D_in) for the other layers."""
    inputs = []
    for layer in layers:
        m = layer.module
        patch_basis = primitive_for(m).patch_basis
        if patch_basis is not None and torus_conv(m):
            basis = patch_basis(m)
            inputs.append([TorusPatches(x, m.kernel_size, basis) for x, _, _ in layer.calls])
        else:
            inputs.append(layer_inputs([layer], batch)[0])
    return inputs


class GramSum:
    """Running sum S = sum_blocks M^T M of row blocks M: (G, rows, D), for a KFAC factor.

    While fewer than D rows have arrived the rows themselves are kept: then S = X^T X has the
    nonzero eigenvalues of the small Gram matrix X X^T (n x n), which is cheaper to form and to
    decompose (e.g. the first Linear after a flatten, with thousands of inputs and a thousand
    examples). Past D rows the D x D sum is accumulated as usual. Products are accumulated in
    place (``baddbmm_``: no D x D temporary); for wide factors (``D >= WIDE``) only the blocks on
    and above the diagonal are formed, about half the flops, and the lower blocks are filled in
    by symmetry when the matrix is read.
    """

    WIDE = 1024  # D from which only the upper blocks of S are accumulated
    BLOCK = 256  # their size

    def __init__(self):
        self.blocks: list[torch.Tensor] = []
        self.n = 0
        self.S: torch.Tensor | None = None

    def _accumulate(self, X: torch.Tensor) -> None:
        """S += X^T X for rows X: (G, n, D) (upper blocks only when D is wide)."""
        D = X.shape[2]
        if D < self.WIDE:
            self.S.baddbmm_(X.transpose(1, 2), X)
            return
        for i in range(0, D, self.BLOCK):
            j = min(i + self.BLOCK, D)
            self.S[:, i:j, i:].baddbmm_(X[:, :, i:j].transpose(1, 2), X[:, :, i:])

    def add(self, M: torch.Tensor) -> None:
        """Add the rows of M: (N, R, G, D), i.e. S_g += sum_{n, r} M[n, r, g] M[n, r, g]^T."""
        N, R, G, D = M.shape
        if self.S is None and self.n + N * R < D:
            self.blocks.append(M.reshape(N * R, G, D).transpose(0, 1))
            self.n += N * R
            return
        if self.S is None:
            self.S = M.new_zeros(G, D, D)
            for X in self.blocks:
                self._accumulate(X)
            self.blocks = []
        if R == 1:  # one row per item: a single (D x N)(N x D) product per group
            self._accumulate(M[:, 0].transpose(0, 1))  # (G, N, D)
            return
        Y = M.permute(0, 2, 3, 1)  # (N, G, D, R)
        if Y.is_contiguous() and R >= D and D < self.WIDE:
            # a conv's (N, D, L) layout: N products (D x R)(R x D) straight from memory
            self.S += (Y @ Y.transpose(-1, -2)).sum(0)
        else:
            # otherwise one copy into (G, N*R, D) rows and one product per group, far cheaper
            # than many small per-item products
            self._accumulate(M.permute(2, 0, 1, 3).reshape(G, N * R, D))

    def add_gram(self, S: torch.Tensor) -> None:
        """Add a ready sum of products ``S: (G, D, D)`` (symmetric)."""
        if self.S is None:
            self.S = S.new_zeros(S.shape)
            for X in self.blocks:
                self._accumulate(X)
            self.blocks = []
        self.S += S

    def empty(self) -> bool:
        return self.S is None and not self.blocks

    def finite(self) -> bool:
        """Whether every entry seen so far is finite (one host sync)."""
        parts = [self.S] if self.S is not None else self.blocks
        return bool(torch.stack([torch.isfinite(t).all() for t in parts]).all())

    def matrix(self) -> torch.Tensor:
        """S: (G, D, D), symmetric."""
        if self.S is not None:
            D = self.S.shape[-1]
            if D < self.WIDE:
                return self.S
            S = self.S.clone()
            for i in range(0, D, self.BLOCK):  # the lower blocks from the upper ones
                j = min(i + self.BLOCK, D)
                S[:, j:, i:j] = S[:, i:j, j:].transpose(1, 2)
            return S
        X = torch.cat(self.blocks, dim=1)
        return X.transpose(1, 2) @ X

    def eigenvalues(self, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
        """Eigenvalues of scale * S, clamped at 0, in ``dtype``: (G, D)."""
        if self.S is not None:
            if self.S.shape[-1] >= self.WIDE:  # the upper triangle is complete: read only it
                return (torch.linalg.eigvalsh(self.S.to(dtype), UPLO="U") * scale).clamp_min(0)
            S = self.S.to(dtype) * scale
            return torch.linalg.eigvalsh(0.5 * (S + S.transpose(-1, -2))).clamp_min(0)
        X = torch.cat(self.blocks, dim=1).to(dtype)  # (G, n, D), n < D
        small = torch.linalg.eigvalsh((X @ X.transpose(1, 2)) * scale).clamp_min(0)
        return torch.cat([small.new_zeros(X.shape[0], X.shape[2] - X.shape[1]), small], dim=1)


class KronFactors:
    """Running sums of the KFAC factors of every primitive layer over a data loader."""

    def __init__(self, layers: list[LayerInfo]):
        self.layers = layers
        self.A = [GramSum() for _ in layers]  # sums of a a^T: (G, D_in, D_in)
        self.B = [GramSum() for _ in layers]  # sums of g g^T: (G, D_out, D_out)
        self.rows: list[int] = [0] * len(layers)

    def update_inputs(self, inputs: list[list]) -> None:
        """Add the input rows of one batch: per layer, per call, a: (B, R, G, D_in), or a
        :class:`TorusPatches` for a ``torus_conv`` (its Gram matrix without the rows)."""
        for li, calls in enumerate(inputs):
            if self.layers[li].weight is None:
                continue
            for a in calls:
                if isinstance(a, TorusPatches):
                    self.A[li].add_gram(a.gram())
                    self.rows[li] += a.x.shape[0] * a.x.shape[2] * a.x.shape[3]
                    continue
                self.A[li].add(a)
                self.rows[li] += a.shape[0] * a.shape[1]

    def update_grads(self, grads: list[list[torch.Tensor]]) -> None:
        """Add backpropagated rows: per layer, per call, g: (k, B, R, G, D_out) (None: skip)."""
        for li, calls in enumerate(grads):
            for g in calls or ():
                self.B[li].add(g.flatten(0, 1))

    def _check(self, li: int) -> None:
        if self.B[li].empty():
            raise ValueError(
                f"module {self.layers[li].name!r} was never called during fit; every primitive "
                "with trainable parameters must be used in the forward pass"
            )

    def factors(self, li: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(A, B) of layer li: A (G, D_in, D_in) averaged over rows (None without weight),
        B (G, D_out, D_out) summed."""
        self._check(li)
        A = None if self.A[li].empty() else self.A[li].matrix() / self.rows[li]
        return A, self.B[li].matrix()

    def eigenvalues(self, li: int, dtype: torch.dtype) -> tuple:
        """Eigenvalues of the factors of layer li: (lA (G, D_in) or None, lB (G, D_out))."""
        self._check(li)
        lB = self.B[li].eigenvalues(dtype)
        if self.A[li].empty():
            return None, lB
        return self.A[li].eigenvalues(dtype, 1.0 / self.rows[li]), lB


def kron_eigenvalues(A: torch.Tensor | None, B: torch.Tensor, dtype: torch.dtype) -> tuple:
    """Eigenvalues of the factors, clamped at 0: (lA (G, D_in) or None, lB (G, D_out)).

    Symmetrised and computed in ``dtype`` (float64 recommended for the log-determinant).
    """
    lB = torch.linalg.eigvalsh(0.5 * (B + B.transpose(-1, -2)).to(dtype)).clamp_min(0)
    if A is None:
        return None, lB
    lA = torch.linalg.eigvalsh(0.5 * (A + A.transpose(-1, -2)).to(dtype)).clamp_min(0)
    return lA, lB


def kron_logdet(lA: torch.Tensor, lB: torch.Tensor, scale, delta) -> torch.Tensor:
    """log det(scale * B (x) A + delta I) = sum_ij log(scale * lB_i * lA_j + delta), summed over
    groups. lA: (G, D_in), lB: (G, D_out)."""
    return torch.log(scale * lB.unsqueeze(-1) * lA.unsqueeze(-2) + delta).sum()
