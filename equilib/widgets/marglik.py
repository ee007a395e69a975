"""Evidence explorer (chapter 05): pick a polynomial degree and a prior precision, see the
posterior mean and its error band, and the evidence split into data fit and Occam factor.

What it shows is computed by the pure function ``evidence_explorer_state``; matplotlib and
ipywidgets are imported inside ``evidence_explorer``.
"""

from __future__ import annotations

import numpy as np
import torch

from equilib.laplace.linear import blr_posterior, evidence_terms, polynomial_features
from equilib.widgets._figure import show_in, widget_figure

__all__ = ["evidence_explorer_state", "evidence_explorer"]


def evidence_explorer_state(
    x, y, degree: int, log_delta: float, sigma_noise: float = 0.1, n_grid: int = 200
) -> dict:
    """Posterior mean / std on a grid and the evidence terms of one (degree, delta) choice."""
    delta = float(np.exp(log_delta))
    Phi = polynomial_features(x, degree)
    m, P = blr_posterior(Phi, y, delta, sigma_noise)
    grid = torch.linspace(float(x.min()), float(x.max()), n_grid, dtype=x.dtype)
    G = polynomial_features(grid, degree)
    var = (G @ torch.linalg.solve(P, G.T)).diagonal() + sigma_noise**2
    terms = {k: float(v) for k, v in evidence_terms(Phi, y, delta, sigma_noise).items()}
    return {"grid": grid.numpy(), "mean": (G @ m).numpy(), "std": var.sqrt().numpy(), **terms}


def evidence_explorer(x, y, sigma_noise: float = 0.1, max_degree: int = 10):
    """Sliders for the degree and the natural log of the prior precision; returns the widget box."""
    import ipywidgets as widgets

    degree = widgets.IntSlider(value=3, min=0, max=max_degree, description="degree")
    log_delta = widgets.FloatSlider(value=0.0, min=-4, max=4, step=0.25, description="log delta")
    out = widgets.Output()
    fig = widget_figure((6, 3.5))

    def draw(*_):
        s = evidence_explorer_state(x, y, degree.value, log_delta.value, sigma_noise)
        fig.clf()
        ax = fig.subplots()
        ax.fill_between(
            s["grid"],
            s["mean"] - 2 * s["std"],
            s["mean"] + 2 * s["std"],
            alpha=0.2,
            label="predictive mean +- 2 std",
        )
        ax.plot(s["grid"], s["mean"], label="posterior mean")
        ax.plot(np.asarray(x), np.asarray(y), "k.", label="data")
        ax.set_ylim(float(y.min()) - 1, float(y.max()) + 1)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(
            f"log evidence {s['log_evidence']:.1f} = data fit {s['data_fit']:.1f}"
            f" + log Occam {s['occam']:.1f}   (gamma = {s['effective_dimensions']:.1f})",
            fontsize=9,
        )
        fig.tight_layout()
        show_in(out, fig)

    degree.observe(draw, "value")
    log_delta.observe(draw, "value")
    draw()
    return widgets.VBox([widgets.HBox([degree, log_delta]), out])
