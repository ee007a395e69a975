"""What the marginal-likelihood figures show (pure functions) and how they are drawn (matplotlib).

Chapters 05 and 06: the evidence of polynomial models as data fit plus Occam factor, the
evidence of FC vs CONV linear maps as the data grow, and the per-layer prior precisions and
effective numbers of parameters of a network. matplotlib is imported inside the plot functions.
"""

from __future__ import annotations

import numpy as np
import torch

from equilib.laplace.linear import evidence_terms, linear_model_evidence, polynomial_features

__all__ = [
    "degree_scan",
    "precision_scan",
    "evidence_vs_n",
    "layer_table",
    "plot_degree_scan",
    "plot_fits",
    "plot_evidence_vs_n",
    "plot_layer_table",
    "plot_kron_vs_dense",
]


def degree_scan(x, y, degrees, prior_precision=1.0, sigma_noise=0.1) -> dict:
    """Evidence, data fit and Occam term of polynomial models: arrays over ``degrees``."""
    degrees = list(degrees)  # a generator is read once
    if not degrees:
        raise ValueError("degrees must hold at least one polynomial degree")
    out = {"degree": np.asarray(degrees)}
    rows = [
        evidence_terms(polynomial_features(x, int(d)), y, prior_precision, sigma_noise)
        for d in degrees
    ]
    for key in rows[0]:
        out[key] = np.array([float(r[key]) for r in rows])
    return out


def precision_scan(Phi, y, log_deltas, sigma_noise=0.1) -> dict:
    """Evidence terms over a grid of log prior precisions: arrays over ``log_deltas``."""
    log_deltas = list(log_deltas)  # a generator is read once
    if not log_deltas:
        raise ValueError("log_deltas must hold at least one log prior precision")
    rows = [evidence_terms(Phi, y, float(np.exp(ld)), sigma_noise) for ld in log_deltas]
    out = {"log_delta": np.asarray(log_deltas, dtype=float)}
    for key in rows[0]:
        out[key] = np.array([float(r[key]) for r in rows])
    return out


def evidence_vs_n(X, Y, ns, prior_precision=1.0, sigma_noise=0.3) -> dict:
    """Log evidence per datum of the ``fc`` and ``conv`` linear maps on the first n examples."""
    ns = list(ns)
    bad = [
        n
        for n in ns
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= len(X)
    ]
    if not ns or bad:
        raise ValueError(
            f"ns must be numbers of examples between 1 and the {len(X)} given, got {ns}"
        )
    out = {"n": np.asarray(ns), "fc": [], "conv": []}
    for n in ns:
        for model in ("fc", "conv"):
            ev = linear_model_evidence(X[:n], Y[:n], model, prior_precision, sigma_noise)
            out[model].append(float(ev["log_evidence"]) / (n * X.shape[1]))
    out["fc"], out["conv"] = np.array(out["fc"]), np.array(out["conv"])
    return out


def layer_table(la) -> dict:
    """Per parameter tensor of a fitted Laplace object: names, sizes, prior precisions,
    effective dimensions (effective numbers of parameters) and squared norms (numpy arrays)."""
    with torch.no_grad():
        return {
            "name": list(la.param_names),
            "numel": np.array(la.numels),
            "prior_precision": la.prior_precision.detach().double().cpu().numpy(),
            "effective_dimensions": la.effective_dimensions().detach().double().cpu().numpy(),
            "sqnorm": la._sqnorm.detach().double().cpu().numpy(),
        }


def plot_degree_scan(scan: dict, ax=None):
    """Evidence = data fit + Occam term, against the polynomial degree."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5, 3.5))[1]
    d = scan["degree"]
    ax.plot(d, scan["data_fit"], "s--", label="data fit  log p(y | m)")
    ax.plot(d, scan["occam"], "^--", label="log Occam factor")
    ax.plot(d, scan["log_evidence"], "o-", lw=2, label="log evidence")
    best = int(np.argmax(scan["log_evidence"]))
    ax.axvline(d[best], color="k", lw=0.5)
    ax.set_xlabel("polynomial degree")
    ax.set_ylabel("nats")
    ax.legend(fontsize=8)
    return ax


def plot_fits(x, y, fits: dict, ax=None):
    """Data points and posterior-mean curves: ``fits`` maps a label to (x_grid, mean)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5, 3.5))[1]
    ax.plot(np.asarray(x), np.asarray(y), "k.", label="data")
    for label, (xg, mean) in fits.items():
        ax.plot(np.asarray(xg), np.asarray(mean), label=label)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8)
    return ax


def plot_evidence_vs_n(curves: dict, title: str = "", ax=None):
    """Log evidence per datum of FC and CONV linear maps against the number of examples."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5, 3.5))[1]
    ax.plot(curves["n"], curves["fc"], "o-", color="tab:orange", label="FC ($n^2$ weights)")
    ax.plot(curves["n"], curves["conv"], "s-", color="tab:blue", label="CONV ($n$ weights)")
    ax.set_xscale("log")
    ns = [int(n) for n in curves["n"]]
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("training examples (log scale)")
    ax.set_ylabel("log evidence per datum")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax


def plot_layer_table(table: dict, axes=None):
    """Bars per parameter tensor: prior precision (log scale) and effective parameters / size."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    names = table["name"]
    pos = np.arange(len(names))
    axes[0].bar(pos, table["prior_precision"], color="tab:purple")
    axes[0].set_yscale("log")
    axes[0].set_title(r"prior precision $\delta_l$ (log scale)")
    axes[0].set_ylabel(r"$\delta_l$")
    axes[1].bar(pos, table["effective_dimensions"] / table["numel"], color="tab:green")
    axes[1].set_ylim(0, 1)
    axes[1].set_title(r"fraction of the tensor's weights the data determine, $\gamma_l / n_l$")
    axes[1].set_ylabel(r"$\gamma_l / n_l$")
    for ax in axes:
        ax.set_xticks(pos)
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_xlabel("parameter tensor")
    return axes


def plot_kron_vs_dense(dense, kron, title: str = "", axes=None):
    """Side-by-side heat maps of an exact GGN block and its Kronecker approximation."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(9, 3.8), layout="constrained")
    dense = np.asarray(dense.detach().cpu())
    kron = np.asarray(kron.detach().cpu())
    vmax = max(float(np.abs(dense).max()), float(np.abs(kron).max())) or 1.0
    for ax, mat, name in (
        (axes[0], dense, "exact GGN block"),
        (axes[1], kron, r"KFAC $B \otimes A$"),
    ):
        im = ax.imshow(mat, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(f"{name} {title}", fontsize=9)
        ax.set_xlabel("weight index")
        ax.set_ylabel("weight index")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].figure.colorbar(im, ax=list(axes), label="curvature (one colour scale)", shrink=0.9)
    return axes
