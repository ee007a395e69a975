"""Figures of chapter 09: per-layer Lie derivatives, error curves, learned widths.

What a figure shows is computed by ``equilib.measure`` / ``equilib.augment``; the functions
here only draw (matplotlib is imported inside them) and return the figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = [
    "attribution_table",
    "attribution_labels",
    "draw_attribution",
    "draw_error_curves",
    "draw_widths",
]


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


def attribution_labels(table: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The x-axis labels of ``draw_attribution``: every layer of every model, in order of first
    appearance, then "other" and "total" (models with different layer names share one axis)."""
    labels: list[str] = []
    for row in table.values():
        labels += [k for k in row if k not in labels and k not in ("other", "total")]
    return labels + ["other", "total"]


def draw_attribution(results: Mapping[str, object], title: str = "", ax=None):
    """Grouped bars: each model's per-layer Lie derivative terms (relative to |f(x)|).

    Each bar sits above the label of its own layer (``attribution_labels``); a model without a
    layer of that name has no bar there; an exact zero is marked "0".
    """
    import matplotlib.pyplot as plt

    table = attribution_table(results)
    labels = attribution_labels(table)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 3.4))
    n = len(table)
    width = 0.8 / max(n, 1)
    for k, (model, row) in enumerate(table.items()):
        xs = [labels.index(lab) - 0.4 + (k + 0.5) * width for lab in row]
        ax.bar(xs, list(row.values()), width=width, label=model)
        for xpos, value in zip(xs, row.values()):
            if value == 0.0:  # an exact zero has no bar to see: say so
                ax.annotate(
                    "0",
                    (xpos, 0.0),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=8)
    ax.set_xlabel("layer (hooked module); other: between the layers; total: whole network")
    ax.set_ylabel("|layer term| / |f(x)|")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def draw_error_curves(
    values: Sequence[float],
    curves: Mapping[str, torch.Tensor],
    xlabel: str,
    ax=None,
    marks: Sequence[float] = (),
):
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
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"learned {transform} width")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure
