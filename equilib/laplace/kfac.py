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

    def update_inputs(self, inputs: list[list[torch.Tensor]]) -> None:
        """Add the input rows of one batch: per layer, per call, a: (B, R, G, D_in)."""
        for li, calls in enumerate(inputs):
            if self.layers[li].weight is None:
                continue
            for a in calls:
                a2 = a.reshape(-1, a.shape[-2], a.shape[-1]).transpose(0, 1)  # (G, rows, D)
                A = a2.transpose(1, 2) @ a2
                self.A[li] = A if self.A[li] is None else self.A[li] + A
                self.rows[li] += a.shape[0] * a.shape[1]

    def update_grads(self, grads: list[list[torch.Tensor]]) -> None:
        """Add backpropagated rows: per layer, per call, g: (k, B, R, G, D_out) (None: skip)."""
        for li, calls in enumerate(grads):
            for g in calls or ():
                g2 = g.reshape(-1, g.shape[-2], g.shape[-1]).transpose(0, 1)  # (G, rows, D)
                B = g2.transpose(1, 2) @ g2
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
