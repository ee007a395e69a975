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

from equilib.laplace.curvature import LayerInfo


class KronFactors:
    """Running sums of the KFAC factors of every primitive layer over a data loader."""

    def __init__(self, layers: list[LayerInfo]):
        self.layers = layers
        self.A: list[torch.Tensor | None] = [None] * len(layers)  # (G, D_in, D_in) sums
        self.B: list[torch.Tensor | None] = [None] * len(layers)  # (G, D_out, D_out) sums
        self.rows: list[int] = [0] * len(layers)

    def update(self, pairs_per_layer: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        """Add one batch: per layer, a list over its calls of (a (B,R,G,Din), g (K,B,R,G,Dout))."""
        for li, pairs in enumerate(pairs_per_layer):
            layer = self.layers[li]
            for a, g in pairs:
                if layer.weight is not None:
                    A = torch.einsum("brgi,brgj->gij", a, a)
                    self.A[li] = A if self.A[li] is None else self.A[li] + A
                    self.rows[li] += a.shape[0] * a.shape[1]
                B = torch.einsum("kbrgi,kbrgj->gij", g, g)
                self.B[li] = B if self.B[li] is None else self.B[li] + B

    def factors(self, li: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(A, B) of layer li: A (G, D_in, D_in) averaged over rows (None without weight),
        B (G, D_out, D_out) summed."""
        if self.B[li] is None:
            raise ValueError(
                f"module {self.layers[li].name!r} was never called during fit; every primitive "
                "with trainable parameters must be used in the forward pass"
            )
        A = None if self.A[li] is None else self.A[li] / self.rows[li]
        return A, self.B[li]


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
