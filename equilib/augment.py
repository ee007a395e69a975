"""Learned augmentation (Augerino) as a baseline for learned equivariance.

Augerino (Benton et al. 2020) learns invariance of the *output*: the network sees inputs
transformed by ``rho(theta)`` with ``theta ~ U(-w/2, w/2)`` per transformation, written as
``theta = w * eps, eps ~ U(-1/2, 1/2)`` so that gradients reach the width ``w``
(reparameterisation). Training minimises ``CE - strength * |w|``: the regulariser pushes every
width up, and the data push back only where a transformation changes the label. At test time
the prediction averages the logits of ``n_samples`` transformed copies.

The alternative (van der Wilk et al. 2018; Immer et al. 2022) learns ``w`` by the marginal
likelihood instead of a hand-set regulariser. ``augmentation_log_marglik`` is the Laplace
evidence of the *last linear layer* of the averaged model, differentiable in ``w`` through
the averaged features: with ``phi_n`` the features (plus a 1 for the bias) averaged over the
sampled transforms of ``x_n`` and ``Lambda_n = diag(p_n) - p_n p_n^T``,

    log p(D | w, delta) ~ -sum_n CE_n - delta/2 |theta|^2
                          - 1/2 log det(sum_n Lambda_n (x) phi_n phi_n^T + delta I)
                          + P/2 log delta,

where ``theta`` holds the head's weight and bias (``P`` numbers) at their current values.
Averaging logits (not probabilities) keeps the averaged model linear in its last layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from equilib import measure
from equilib._checks import check_positive_int
from equilib.groups import rotate
from equilib.train import TrainingDiverged

__all__ = [
    "TRANSFORMS",
    "Augerino",
    "width_penalty",
    "augmentation_log_marglik",
    "train_augmentation",
]

TRANSFORMS = measure.TRANSFORMS  # ("rotation", "translation_x", "translation_y")


def _check_positive_ints(**values) -> None:
    for name, value in values.items():
        check_positive_int(name, value)


def _inverse_softplus(v: float) -> float:
    return v + math.log(-math.expm1(-v))


class Augerino(nn.Module):
    """A model behind a learned uniform distribution over transformations of its input.

    ``model``: maps ``(B, C, H, W)`` to logits ``(B, K)``. ``transforms``: names from
    ``TRANSFORMS`` (rotation in radians, translations in pixels, cyclic). ``init_width``: the
    starting width ``w`` of each (a float or one per transform); ``w = softplus(raw)`` stays
    positive. ``n_samples``: transformed copies per input in training, ``n_eval`` at test time.
    ``forward(x)`` returns the mean logits over the copies: ``(B, K)``.
    """

    def __init__(
        self,
        model: nn.Module,
        transforms: Sequence[str] = ("rotation",),
        init_width: float | Sequence[float] = 0.1,
        n_samples: int = 1,
        n_eval: int = 8,
    ):
        super().__init__()
        if isinstance(transforms, str):
            transforms = (transforms,)
        transforms = tuple(transforms)
        bad = [t for t in transforms if t not in TRANSFORMS]
        if bad or not transforms or len(set(transforms)) != len(transforms):
            raise ValueError(
                f"transforms must be distinct names from {list(TRANSFORMS)}; got {list(transforms)}"
            )
        widths = (
            [init_width] * len(transforms) if isinstance(init_width, int | float) else init_width
        )
        widths = [float(w) for w in widths]
        if len(widths) != len(transforms) or any(not w > 0 for w in widths):
            raise ValueError(
                f"init_width must be one positive float or one per transform "
                f"({len(transforms)}); got {init_width!r}"
            )
        _check_positive_ints(n_samples=n_samples, n_eval=n_eval)
        self.model = model
        self.transforms = transforms
        self.n_samples, self.n_eval = n_samples, n_eval
        self.raw_width = nn.Parameter(torch.tensor([_inverse_softplus(w) for w in widths]))

    @property
    def width(self) -> torch.Tensor:
        """Widths ``w`` (one per transform), ``(T,)``: theta ~ U(-w/2, w/2)."""
        return F.softplus(self.raw_width)

    def widths(self) -> dict[str, float]:
        """The current widths by transform name (floats)."""
        return {t: float(w) for t, w in zip(self.transforms, self.width.detach())}

    def augment(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """Transform each image by ``theta = w * eps``: ``x: (B, C, H, W)``, ``eps: (B, T)``.

        ``eps`` defaults to fresh draws from U(-1/2, 1/2). Differentiable in ``w``.
        """
        if x.ndim != 4:
            raise ValueError(f"Augerino expects images (B, C, H, W); got {tuple(x.shape)}")
        if "rotation" in self.transforms and x.shape[-1] != x.shape[-2]:
            raise ValueError(f"a learned rotation needs square images; got {tuple(x.shape)}")
        T = len(self.transforms)
        if eps is None:
            eps = torch.rand(x.shape[0], T, dtype=x.dtype, device=x.device) - 0.5
        elif eps.shape != (x.shape[0], T):
            raise ValueError(f"eps must have shape ({x.shape[0]}, {T}); got {tuple(eps.shape)}")
        theta = eps * self.width.to(x.dtype)
        zero = torch.zeros_like(theta[:, 0])
        dy, dx = zero, zero
        for i, name in enumerate(self.transforms):
            if name == "translation_x":
                dx = theta[:, i]
            elif name == "translation_y":
                dy = theta[:, i]
        if "translation_x" in self.transforms or "translation_y" in self.transforms:
            x = measure.translate(x, dy, dx)
        if "rotation" in self.transforms:
            x = rotate(x, theta[:, self.transforms.index("rotation")], mode="cubic")
        return x

    def averaged(
        self, x: torch.Tensor, n: int, fn=None, eps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean over ``n`` random transforms of ``fn(augment(x))`` (default ``fn = model``).

        ``eps: (n, B, T)`` fixes the samples (the same average for every call), else fresh draws.
        """
        fn = self.model if fn is None else fn
        rep = x.repeat(n, 1, 1, 1)
        if eps is not None:
            if eps.shape != (n, x.shape[0], len(self.transforms)):
                raise ValueError(
                    f"eps must have shape ({n}, {x.shape[0]}, {len(self.transforms)}); "
                    f"got {tuple(eps.shape)}"
                )
            eps = eps.reshape(n * x.shape[0], -1)
        out = fn(self.augment(rep, eps))
        return out.view(n, x.shape[0], *out.shape[1:]).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.averaged(x, self.n_samples if self.training else self.n_eval)


def width_penalty(aug: Augerino, strength: float) -> torch.Tensor:
    """Augerino's regulariser, added to the loss: ``-strength * |w|_2`` (rewards wide widths)."""
    return -strength * aug.width.norm()


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = (name, m)
    if last is None:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer; the last-layer marginal likelihood "
            "needs the logits to be a linear map of features"
        )
    return last


def _check_data(X: torch.Tensor, y: torch.Tensor) -> None:
    if X.ndim != 4 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"need X (N, C, H, W) and y (N,); got {tuple(X.shape)}, {tuple(y.shape)}")
    if len(X) == 0:
        raise ValueError("X and y hold no examples")
    if not torch.isfinite(X).all():
        raise ValueError("X contains NaN or inf")


def augmentation_log_marglik(
    aug: Augerino, X: torch.Tensor, y: torch.Tensor, prior_precision: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """Last-layer Laplace log marginal likelihood of the averaged model (module docstring).

    ``X: (N, C, H, W)``, ``y: (N,)`` class indices. Differentiable in ``aug.width`` and in
    ``prior_precision``; the network's weights enter at their current values. The output layer
    must be the model's last ``nn.Linear`` and must produce the logits.
    """
    _check_data(X, y)
    delta = torch.as_tensor(prior_precision)
    if delta.numel() != 1 or not bool(torch.isfinite(delta)) or not bool(delta > 0):
        raise ValueError(
            f"prior_precision must be a positive finite number, got {prior_precision!r}"
        )
    _, head = _last_linear(aug.model)
    feats: dict = {}
    handle = head.register_forward_hook(lambda m, inp, out: feats.__setitem__("phi", inp[0]))
    try:
        n = aug.n_samples
        rep = X.repeat(n, 1, 1, 1)
        logits_all = aug.model(aug.augment(rep))
    finally:
        handle.remove()
    phi = feats["phi"]
    if phi.ndim != 2 or logits_all.shape != (len(rep), head.out_features):
        raise ValueError("the last nn.Linear must map (B, D) features straight to the logits")
    N = len(X)
    phi = phi.view(n, N, -1).mean(0)
    logits = logits_all.view(n, N, -1).mean(0)
    phi1 = torch.cat([phi, torch.ones_like(phi[:, :1])], 1)  # (N, D+1)
    K, D1 = logits.shape[1], phi1.shape[1]
    p = logits.softmax(-1)
    lam = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)  # (N, K, K)
    H = torch.einsum("nij,na,nb->iajb", lam, phi1, phi1).reshape(K * D1, K * D1)
    delta = torch.as_tensor(prior_precision, dtype=H.dtype, device=H.device)
    theta = torch.cat([head.weight, head.bias.unsqueeze(1)], 1) if head.bias is not None else None
    if theta is None:
        raise ValueError("the last nn.Linear needs a bias (bias=True)")
    P = theta.numel()
    log_lik = -F.cross_entropy(logits, y, reduction="sum")
    eye = torch.eye(K * D1, dtype=H.dtype, device=H.device)
    logdet = torch.linalg.slogdet(H + delta * eye)[1]
    return log_lik - 0.5 * delta * theta.pow(2).sum() - 0.5 * logdet + 0.5 * P * torch.log(delta)


def train_augmentation(
    aug: Augerino,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    objective: str = "augerino",
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-3,
    width_lr: float = 0.05,
    strength: float = 0.05,
    prior_precision: float = 1.0,
    marglik_every: int = 5,
    marglik_subset: int = 256,
    seed: int = 0,
) -> dict[str, list]:
    """Train a model and its augmentation widths; return per-epoch ``width``/``loss`` lists.

    ``objective="augerino"``: minimise ``CE - strength * |w|`` jointly (Adam; ``width_lr`` for
    ``w``). ``objective="marglik"``: MAP steps on the network (width fixed, L2 from
    ``prior_precision``), and every ``marglik_every`` steps one Adam step on ``w`` and on
    ``log delta`` of ``-log p(D | w, delta) / N`` on ``marglik_subset`` training points.
    ``X: (N, C, H, W)``, ``y: (N,)``.
    """
    if objective not in ("augerino", "marglik"):
        raise ValueError(f"objective must be 'augerino' or 'marglik'; got {objective!r}")
    _check_data(X, y)
    _check_positive_ints(
        epochs=epochs,
        batch_size=batch_size,
        marglik_every=marglik_every,
        marglik_subset=marglik_subset,
    )
    for name, value in (("lr", lr), ("width_lr", width_lr), ("prior_precision", prior_precision)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    device = next(aug.model.parameters()).device
    X, y = X.to(device), y.to(device)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net_params = list(aug.model.parameters())
    opt = torch.optim.Adam(net_params, lr=lr)
    log_delta = torch.tensor(math.log(prior_precision), device=device, requires_grad=True)
    hyper = [aug.raw_width] + ([log_delta] if objective == "marglik" else [])
    opt_w = torch.optim.Adam(hyper, lr=width_lr)
    N = len(X)
    hist: dict[str, list] = {"width": [], "loss": [], "prior_precision": []}
    step = 0
    aug.train()
    for _ in range(epochs):
        perm = torch.randperm(N, generator=g).to(device)
        total = 0.0
        for i in range(0, N, batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(aug(X[idx]), y[idx])
            if objective == "augerino":
                loss = loss + width_penalty(aug, strength)
                opt.zero_grad()
                opt_w.zero_grad()
                loss.backward()
                opt.step()
                opt_w.step()
            else:
                delta = log_delta.detach().exp()
                l2 = sum(p.pow(2).sum() for p in net_params)
                loss = loss + 0.5 * delta * l2 / N
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                if step % marglik_every == 0:
                    sub = torch.randperm(N, generator=g)[:marglik_subset].to(device)
                    opt_w.zero_grad()
                    neg = -augmentation_log_marglik(aug, X[sub], y[sub], log_delta.exp()) / len(sub)
                    neg.backward()
                    opt_w.step()
            total += float(loss.detach()) * len(idx)
        widths = aug.widths()
        if not (math.isfinite(total) and all(math.isfinite(w) for w in widths.values())):
            raise TrainingDiverged(
                f"training diverged in epoch {len(hist['loss']) + 1}: loss {total / N:.4g}, "
                f"widths {widths}; lower the learning rates"
            )
        hist["width"].append(widths)
        hist["loss"].append(total / N)
        hist["prior_precision"].append(float(log_delta.detach().exp()))
    aug.eval()
    return hist
