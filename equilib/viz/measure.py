"""Figures of chapter 09: per-layer Lie derivatives, error curves, learned widths.

What a figure shows is computed by ``equilib.measure`` / ``equilib.augment``; the functions
here only draw (matplotlib is imported inside them) and return the figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["attribution_table", "draw_attribution", "draw_error_curves", "draw_widths"]


def attribution_table(results: Mapping[str, object]) -> dict[str, dict[str, float]]:
    """``{model: {layer: relative term, ..., "other": residual, "total": total}}``.

    ``results`` maps a model name to an ``equilib.measure.LayerAttribution``; "other" is what
    happens between the hooked layers (pooling, functional non-linearities).
    """
    table = {}
    for name, att in results.items():
        row = dict(att.norms())
        s = att.scale if att.scale > 0 else 1.0
        row["other"] = float(att.residual.norm()) / s
        row["total"] = att.total_norm()
        table[name] = row
    return table


def draw_attribution(results: Mapping[str, object], title: str = "", ax=None):
    """Grouped bars: each model's per-layer Lie derivative terms (relative to |f(x)|)."""
    import matplotlib.pyplot as plt

    table = attribution_table(results)
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.2))
    n = len(table)
    width = 0.8 / max(n, 1)
    for k, (model, row) in enumerate(table.items()):
        labels = list(row)
        xs = [i + k * width for i in range(len(labels))]
        ax.bar(xs, [row[lab] for lab in labels], width=width, label=model)
        if k == 0:
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))])
            ax.set_xticklabels(labels, rotation=20, fontsize=8)
    ax.set_ylabel("|layer term| / |f(x)|")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def draw_error_curves(values: Sequence[float], curves: Mapping[str, torch.Tensor], xlabel: str,
                      ax=None, marks: Sequence[float] = ()):
    """Lines of invariance error against the transformation parameter, one per model."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    xs = [float(v) for v in values]
    for name, c in curves.items():
        ax.plot(xs, c.detach().cpu().numpy(), label=name)
    for m in marks:
        ax.axvline(m, color="grey", lw=0.6, ls=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("|f(rho(t) x) - f(x)| / |f(x)|")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def draw_widths(histories: Mapping[str, Mapping[str, list]], transform: str = "rotation", ax=None):
    """Learned augmentation width per epoch for each run (``train_augmentation`` histories)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    for name, h in histories.items():
        ax.plot(range(1, len(h["width"]) + 1), [w[transform] for w in h["width"]], "o-", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"learned {transform} width")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure
