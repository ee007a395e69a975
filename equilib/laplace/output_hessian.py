"""The loss in the network output: summed negative log likelihoods, square roots of their Hessian
in the output (exact GGN, Monte-Carlo and empirical Fisher), and checks of outputs and targets
(per batch in ``check_targets``; over a whole pass in ``FitChecks``).

The GGN's columns are pushed backwards from the outputs (``equilib.laplace.backprop``) as the
columns of a root ``L`` with ``L L^T = Lambda``, the output Hessian of one example.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LIKELIHOODS = ("classification", "regression")
HESSIANS = ("ggn", "mc", "ef")


def nll_sum(f: torch.Tensor, y: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Summed negative log likelihood with unit noise (regression: 0.5 * squared error).

    f: (B, C) logits or means; y: (B,) class indices or (B, C) targets.
    """
    if likelihood == "classification":
        return F.cross_entropy(f, y, reduction="sum")
    return 0.5 * (f - y).pow(2).sum()


def check_likelihood_and_hessian(likelihood: str, hessian: str = "ggn") -> None:
    """Refuse a likelihood or an output Hessian this module does not know, naming the known."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if hessian not in HESSIANS:
        raise ValueError(f"hessian must be one of {HESSIANS}, got {hessian!r}")


def output_hessian_sqrt(
    f: torch.Tensor,
    y: torch.Tensor,
    likelihood: str,
    hessian: str = "ggn",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A square root L of the loss Hessian in the outputs, per example: (B, C, K), L L^T ~ H_f.

    ``hessian='ggn'``: exact. Classification: H_f = diag(p) - p p^T, from the root with columns
    L[:, c] = sqrt(p_c) (e_c - p) reduced to K = C - 1 columns (H_f 1 = 0, see
    ``_drop_null_direction``); regression (unit noise): L = I, K = C.
    ``'mc'``: one sampled label, K = 1, E[L L^T] = H_f (L = p - e_yhat, yhat ~ Cat(p);
    regression: L = eps, eps ~ N(0, I)). ``'ef'``: empirical Fisher, K = 1, L = dloss/df at the
    observed label (p - e_y; regression f - y).
    """
    check_likelihood_and_hessian(likelihood, hessian)
    f = f.detach()
    B, C = f.shape
    if likelihood == "classification":
        p = torch.softmax(f, dim=-1)
        if hessian == "ggn":
            eye = torch.eye(C, device=f.device, dtype=f.dtype)
            L = (eye.unsqueeze(0) - p.unsqueeze(2)) * p.sqrt().unsqueeze(1)
            return L if C < 3 else _drop_null_direction(L)
        if hessian == "mc":
            yhat = torch.multinomial(p, 1, generator=generator).squeeze(1)
            return (p - F.one_hot(yhat, C).to(f.dtype)).unsqueeze(-1)
        return (p - F.one_hot(y, C).to(f.dtype)).unsqueeze(-1)
    if hessian == "ggn":
        eye = torch.eye(C, device=f.device, dtype=f.dtype)
        return eye.expand(B, C, C)
    if hessian == "mc":
        eps = torch.randn(f.shape, device=f.device, dtype=f.dtype, generator=generator)
        return eps.unsqueeze(-1)
    return (f - y).unsqueeze(-1)


def _drop_null_direction(L: torch.Tensor) -> torch.Tensor:
    """An exact (B, C, C-1) root of L L^T = diag(p) - p p^T, whose null vector is 1.

    With Q (C, C-1) an orthonormal basis of the complement of 1, H = Q (Q^T H Q) Q^T; the QR
    decomposition (Q^T L)^T = Q' R gives Q^T H Q = R^T R, so L' = Q R^T. One backward pass
    fewer per batch than the C columns of L.
    """
    C = L.shape[1]
    centre = torch.eye(C, device=L.device, dtype=L.dtype) - 1.0 / C
    Q = torch.linalg.qr(centre[:, : C - 1])[0]  # (C, C-1), orthogonal to 1
    R = torch.linalg.qr((Q.transpose(0, 1) @ L).transpose(1, 2), mode="r")[1]  # (B, C-1, C-1)
    return Q @ R.transpose(1, 2)


def check_targets(f: torch.Tensor, y: torch.Tensor, likelihood: str) -> tuple:
    """Validate model output f and targets y; regression with f: (B,) is seen as (B, 1)."""
    if not isinstance(f, torch.Tensor):
        raise TypeError(
            f"the model must return one tensor of outputs, (B, C), got {type(f).__name__}"
        )
    if likelihood == "regression":
        if f.dim() == 1:
            f = f.unsqueeze(-1)
        if y.dim() == 1 and f.shape[-1] == 1:
            y = y.unsqueeze(-1)
        if f.dim() != 2 or y.shape != f.shape:
            raise ValueError(
                f"regression expects outputs (B, D) and targets of the same shape, got outputs "
                f"{tuple(f.shape)} and targets {tuple(y.shape)}"
            )
        return f, y.to(f.dtype)
    if f.dim() != 2 or y.dim() != 1 or y.shape[0] != f.shape[0]:
        raise ValueError(
            f"classification expects logits (B, C) and integer labels (B,), got outputs "
            f"{tuple(f.shape)} and labels {tuple(y.shape)}"
        )
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"classification labels must be integers, got dtype {y.dtype}")
    return f, y.long()


class FitChecks:
    """What ``fit`` checks of the outputs and targets of every batch, raised after the pass.

    ``add`` keeps running flags on the device (no synchronisation per batch); ``raise_problems``
    reads them once. Classification labels must lie in ``[0, C)``: an ignore index such as -100
    would drop an example from the likelihood but not from the curvature. Regression targets
    and the outputs must be finite.
    """

    def __init__(self, likelihood: str, device: torch.device):
        self.likelihood = likelihood
        self.bad_output = torch.zeros((), device=device, dtype=torch.bool)
        self.bad_target = torch.zeros((), device=device, dtype=torch.bool)
        self.y_lo = self.y_hi = None
        self.n_data, self.n_outputs, self.n_batches = 0, None, 0

    def add(self, f: torch.Tensor, y: torch.Tensor, n: int) -> None:
        """One batch of ``n`` examples: outputs f (B, C) and targets y as ``check_targets``
        returns them. A number of outputs unlike the earlier batches' raises at once."""
        if self.n_outputs is not None and f.shape[1] != self.n_outputs:
            raise ValueError(f"the model returned {f.shape[1]} outputs, earlier {self.n_outputs}")
        self.n_outputs = f.shape[1]
        if self.likelihood == "classification" and y.numel():
            self.y_lo = y.min() if self.y_lo is None else torch.minimum(self.y_lo, y.min())
            self.y_hi = y.max() if self.y_hi is None else torch.maximum(self.y_hi, y.max())
        elif self.likelihood == "regression":
            self.bad_target |= ~torch.isfinite(y).all()
        self.bad_output |= ~torch.isfinite(f).all()
        self.n_data += n
        self.n_batches += 1

    def raise_problems(self, where_nonfinite: Callable[[], str]) -> None:
        """Raise a ValueError for an empty pass, labels out of range, non-finite targets or
        outputs (``where_nonfinite()`` says where the latter arise)."""
        if self.n_batches == 0 or self.n_data == 0:
            raise ValueError("the loader is empty: fit needs at least one (X, y) batch")
        lo, hi = (0, 0) if self.y_lo is None else torch.stack([self.y_lo, self.y_hi]).tolist()
        if lo < 0 or hi >= self.n_outputs:
            raise ValueError(
                f"classification labels must lie in [0, {self.n_outputs - 1}] (the model has "
                f"{self.n_outputs} outputs), found values from {lo} to {hi}; an ignore index such "
                "as -100 is not supported: drop those examples from the loader"
            )
        if self.likelihood == "regression" and bool(self.bad_target):
            raise ValueError(
                "the regression targets contain NaN or inf; drop or fix those "
                "examples (the evidence would be NaN)"
            )
        if bool(self.bad_output):
            raise ValueError(
                "the model's outputs contain NaN or inf at the fitted parameters; "
                + where_nonfinite()
            )
