"""Learning lambda by the Laplace marginal likelihood instead of the KL regularisers.

The partial layer's effective kernel is linear in the free kernel: ``W = P_lambda K`` with
``P_lambda = sum_h w(h) T_h``. With the Gaussian prior ``K ~ N(0, I / delta)`` the Laplace
approximation of the evidence at the trained weights is

    log p(D | lambda) ~ log p(D | K*, lambda) - 1/2 log det(P^T H_W P + delta I) + |K|/2 log delta
                        - delta/2 |K*|^2,

where ``H_W`` is the GGN with respect to the effective kernel. The maths allows this because
of one structural fact: for C_N and D_N the actions ``T_h`` permute the kernel's entries in
*free orbits* of size |H| (every orbit meets each group-axis index once). ``P`` maps every orbit
to itself, acting on it as the |H| x |H| matrix ``C[a, b] = w(a b^-1)`` (a circulant for C_N).
With a diagonal GGN ``H_W = diag(d)`` the curvature in K-space is therefore block diagonal over
orbits and the log-determinant is exact and cheap:

    log det(P^T diag(d) P + delta I) = sum_orbits log det(C^T diag(d_orbit) C + delta I_|H|).

Uniform lambda makes ``C`` the rank-one averaging matrix (one direction per orbit: the Occam
factor of an equivariant layer); lambda at the identity makes ``C = I`` (|H| directions). The
data term pulls the other way. ``d`` is a Monte-Carlo estimate of the GGN diagonal (one label
sampled from the model per example, per-example gradients with ``torch.func``) on a subset,
scaled to the full data set; it is held fixed during the hyper-steps, as in Immer et al. (2021).
Only exact actions qualify (rot90 for C4 / D4); interpolated rotations are not permutations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from equilib._checks import check_positive_int
from equilib.degree.layers import PartialGroupConv, PartialLiftingConv

__all__ = ["orbit_structure", "orbit_logdet", "MarglikLambda", "diag_ggn_effective"]


def orbit_structure(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """Free orbits of the kernel entries under the group action, and the block pattern.

    Returns ``orbits (n_orbits, |H|)`` (flat indices ``T_a(i_0)`` of each orbit's members, a in
    element order) and ``M (|H|, |H|, |H|)`` with ``C = einsum('h,hab->ab', w, M)`` the action of
    ``P_w`` on every orbit. Raises ValueError when the action is not a free permutation.
    """
    G = layer.group.order
    n = layer.weight.numel()
    ids = torch.arange(n, dtype=torch.float64).reshape(layer.weight.shape)
    with torch.no_grad():
        src = layer.transformed_kernels(ids).reshape(G, n)  # (T_h K)[j] = K[src[h, j]]
    src_i = src.round().long()
    if not torch.equal(src_i.double(), src) or not all(
        torch.equal(torch.sort(src_i[h]).values, torch.arange(n)) for h in range(G)
    ):
        raise ValueError(
            f"the action of {layer.group!r} on this kernel is not a permutation of its entries "
            "(interpolated rotations); the Laplace marginal likelihood over lambda needs an exact group"
        )
    pos = torch.empty_like(src_i)  # pos[h, i] = T_h(i): where entry i lands
    pos.scatter_(1, src_i, torch.arange(n).expand(G, n))
    orbit_id = pos.min(0).values  # canonical representative of each entry's orbit
    reps = torch.unique(orbit_id)
    orbits = pos[:, reps].T  # (n_orbits, G): member a = T_a(rep)
    if orbits.shape[0] * G != n or len(torch.unique(orbits)) != n:
        raise ValueError("the group action on the kernel has orbits of size < |H| (not free)")
    # P acts as (P K)[o_a] = sum_h w_h K[src_h(o_a)]; src_h(o_a) = o_b defines M[h, a, b] = 1
    M = torch.zeros(G, G, G, dtype=torch.float64)
    first = orbits[0]
    where = {int(j): b for b, j in enumerate(first)}
    for h in range(G):
        for a in range(G):
            M[h, a, where[int(src_i[h, first[a]])]] = 1.0
    # the same pattern must hold on every orbit
    check = src_i[:, orbits]  # (G, n_orbits, G): src_h(o_a)
    expected = torch.einsum("hab,ob->hoa", M.long(), orbits)
    if not torch.equal(check, expected):
        raise ValueError("orbits of the kernel entries do not share one block pattern")
    return orbits, M


def orbit_logdet(
    w: torch.Tensor, M: torch.Tensor, d_orbits: torch.Tensor, delta: float
) -> torch.Tensor:
    """sum_orbits log det(C^T diag(d_o) C + delta I) with C = sum_h w_h M_h.

    w: (|H|,) averaging weights; M: (|H|, |H|, |H|); d_orbits: (n_orbits, |H|) >= 0.
    """
    C = torch.einsum("h,hab->ab", w.to(M.dtype), M)
    A = torch.einsum("ab,oa,ac->obc", C, d_orbits.to(M.dtype), C)
    A = A + delta * torch.eye(C.shape[0], dtype=M.dtype, device=M.device)
    return torch.linalg.cholesky(A).diagonal(dim1=-2, dim2=-1).log().sum() * 2


def _partial_layers(model):
    return [m for m in model.modules() if isinstance(m, (PartialLiftingConv, PartialGroupConv))]


def diag_ggn_effective(
    model, X: torch.Tensor, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """MC estimate of the GGN diagonal w.r.t. every partial layer's effective kernel, summed over X.

    One label per example is sampled from the model's softmax; d = sum_n (grad_W log p(y~_n|x_n))^2.
    Returns one tensor per partial layer, shaped like its ``weight``.
    """
    from torch.func import grad, vmap

    layers = _partial_layers(model)
    with torch.no_grad():
        kernels = [layer.effective_weight().detach() for layer in layers]
        probs = torch.softmax(model(X), -1)
        y = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(X.device)

    def loss(ks, x, t):
        for layer, k in zip(layers, ks):
            layer._kernel_override = k
        try:
            out = model(x.unsqueeze(0))
        finally:
            for layer in layers:
                layer._kernel_override = None
        return F.cross_entropy(out, t.unsqueeze(0))

    out = [torch.zeros_like(k) for k in kernels]
    for start in range(0, len(X), 64):
        g = vmap(grad(loss), in_dims=(None, 0, 0))(
            kernels, X[start : start + 64], y[start : start + 64]
        )
        for acc, gi in zip(out, g):
            acc += gi.detach().square().sum(0)
    return out


class MarglikLambda:
    """After every epoch: re-estimate the GGN diagonal, then Adam steps on the lambda coefficients.

    Objective per step (divided by N): N * mean CE on a subset (weights fixed) + 1/2 sum over
    layers of the orbit log-determinants (``orbit_logdet``) + the alignment term (weight 5).
    ``log`` records the objective's parts after every update: ``nll`` (N times the mean CE on the
    subset), ``complexity`` (the penalty above) and, as in chapter 05, ``log_occam`` = -complexity
    (the log Occam factor, <= 0) and ``log_marglik`` = -nll + log_occam.
    """

    def __init__(
        self,
        model,
        train_loader,
        n_data: int,
        subset: int = 256,
        steps: int = 10,
        lr: float = 0.05,
        prior_precision: float = 1.0,
        align: float = 5.0,
        seed: int = 0,
    ):
        for name, value in (("n_data", n_data), ("subset", subset), ("steps", steps)):
            check_positive_int(name, value)
        if not (isinstance(prior_precision, (int, float)) and prior_precision > 0):
            raise ValueError(f"prior_precision must be a positive number, got {prior_precision!r}")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        self.model, self.loader, self.n = model, train_loader, n_data
        self.steps, self.delta, self.align = steps, float(prior_precision), align
        self.layers = _partial_layers(model)
        if not self.layers:
            raise ValueError("model has no partial group-conv layers")
        self.structure = [orbit_structure(layer) for layer in self.layers]
        self.densities = list({id(layer.density): layer.density for layer in self.layers}.values())
        # a density whose coefficients are frozen (a G-CNN's uniform lambda) stays as it is:
        # it enters the evidence, but only the others are learned
        self.learned = [d for d in self.densities if d.coefficients.requires_grad]
        if not self.learned:
            raise ValueError("every lambda of the model is frozen: there is nothing to learn")
        self.opt = torch.optim.Adam([d.coefficients for d in self.learned], lr=lr)
        xs, ys = [], []
        for x, y in train_loader:
            xs.append(x)
            ys.append(y)
            if sum(len(v) for v in ys) >= subset:
                break
        self.X, self.y = torch.cat(xs)[:subset], torch.cat(ys)[:subset]
        self.generator = torch.Generator().manual_seed(seed)
        self.log: list[dict] = []

    def freeze(self) -> None:
        """Take the coefficients out of the MAP optimiser (``fit`` trains requires_grad params)."""
        for d in self.learned:
            d.coefficients.requires_grad_(False)

    def unfreeze(self) -> None:
        """Give the learned coefficients back their gradients (the frozen stay frozen)."""
        for d in self.learned:
            d.coefficients.requires_grad_(True)

    def complexity(self, ggn: list[torch.Tensor]) -> torch.Tensor:
        """1/2 sum_l [log det(P^T H_W P + delta I) - |K_l| log delta] with H_W = diag(ggn)."""
        total = 0.0
        for layer, (orbits, M), d in zip(self.layers, self.structure, ggn):
            M = M.to(d.device)
            d_orb = d.flatten()[orbits.to(d.device)]
            ld = orbit_logdet(layer.density.weights(), M, d_orb, self.delta)
            total = total + 0.5 * (ld - orbits.numel() * math.log(self.delta))
        return total

    def update(self) -> dict:
        model = self.model
        dev = next(model.parameters()).device
        X, y = self.X.to(dev), self.y.to(dev)
        was = model.training
        model.eval()
        scale = self.n / len(X)
        ggn = [g * scale for g in diag_ggn_effective(model, X, self.generator)]
        self.unfreeze()
        kernels = [p for n_, p in model.named_parameters() if not n_.endswith("coefficients")]
        flags = [p.requires_grad for p in kernels]
        for p in kernels:
            p.requires_grad_(False)
        try:
            for _ in range(self.steps):
                self.opt.zero_grad(set_to_none=True)
                nll = F.cross_entropy(model(X), y) * self.n
                comp = self.complexity(ggn)
                align = sum(d.alignment() for d in self.densities)
                loss = (nll + comp + self.align * align) / self.n
                loss.backward()
                self.opt.step()
        finally:
            for p, f in zip(kernels, flags):
                p.requires_grad_(f)
            self.freeze()
            model.train(was)
        nll, comp = float(nll.detach()), float(comp.detach())
        # chapter 05's split: log evidence = data fit + log Occam factor, the latter <= 0
        entry = {"nll": nll, "complexity": comp, "log_occam": -comp, "log_marglik": -(nll + comp)}
        self.log.append(entry)
        return entry
