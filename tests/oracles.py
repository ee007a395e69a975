"""Oracles shared by the test modules: the dense GGN from ``torch.func`` Jacobians, the Laplace
evidence written out with dense matrices, and the tiny models and images of the zoo tests.

Test modules import them (``from oracles import dense_ggn``) instead of importing each other.
A plain module, not ``conftest.py``: ``exercises/tests/conftest.py`` takes the module name
``conftest`` when both test folders are collected in one run, as ``course.py test`` does."""

import math

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from equilib.models import build

DT = torch.float64


# ------------------------------------------------------------------------------- oracles ----
def trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def dense_jacobian(model, X):
    """Per-example Jacobians of the outputs in all trainable parameters: (N, C, P)."""
    names = [n for n, _ in trainable(model)]
    params = {n: p.detach() for n, p in trainable(model)}

    def f(p, x):
        return functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)

    J = vmap(jacrev(f), in_dims=(None, 0))(params, X)
    N = X.shape[0]
    C = J[names[0]].shape[1]
    return torch.cat([J[n].reshape(N, C, -1) for n in names], dim=-1)


def dense_ggn(model, X, y, likelihood):
    """H = sum_n J_n^T Lambda_n J_n with the exact output Hessian (unit noise)."""
    J = dense_jacobian(model, X)
    with torch.no_grad():
        f = model(X)
    if likelihood == "classification":
        p = torch.softmax(f, -1)
        Lam = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    else:
        Lam = torch.eye(f.shape[-1], dtype=f.dtype).expand(f.shape[0], -1, -1)
    return torch.einsum("ncp,ncd,ndq->pq", J, Lam, J)


def dense_log_marglik(model, X, y, likelihood, delta, sigma=1.0, temperature=1.0, H=None):
    """The Laplace formula with dense matrices, written out from scratch."""
    if H is None:
        H = dense_ggn(model, X, y, likelihood)
    params = trainable(model)
    numels = [p.numel() for _, p in params]
    d = torch.as_tensor(delta, dtype=DT).expand(len(params))
    prior_diag = torch.repeat_interleave(d, torch.tensor(numels))
    with torch.no_grad():
        f = model(X)
    fac = 1.0 / (sigma**2 * temperature)
    if likelihood == "classification":
        loglik = -fac * nn.functional.cross_entropy(f, y, reduction="sum")
    else:
        yy = y.reshape(f.shape)
        loglik = -fac * 0.5 * ((f - yy) ** 2).sum() - f.numel() * math.log(
            sigma * math.sqrt(2 * math.pi)
        )
    theta = torch.cat([p.detach().reshape(-1) for _, p in params])
    P = fac * H + torch.diag(prior_diag)
    logdet_p = torch.linalg.slogdet(P)[1]
    logdet_0 = torch.log(prior_diag).sum()
    scatter = (prior_diag * theta**2).sum()
    return loglik - 0.5 * (logdet_p - logdet_0 + scatter)


def exact_blocks(model, H):
    blocks, start = {}, 0
    for n, p in trainable(model):
        blocks[n] = H[start : start + p.numel(), start : start + p.numel()]
        start += p.numel()
    return blocks


def tiny(name):
    """A small float64 model of the zoo, seeded."""
    torch.manual_seed(0)
    return build(name, in_shape=(1, 8, 8), n_classes=3, width=2, hidden=4).to(DT)


def images(n=6, seed=0, c=3):
    """n float64 images (n, 1, 8, 8) and labels in range(c)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=DT), torch.randint(0, c, (n,), generator=g)


# ------------------------------------------------------------------------ the course script ----
def load_course():
    """``course.py`` imported as a module (it is a script at the repository's top)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "course_under_test", Path(__file__).resolve().parent.parent / "course.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
