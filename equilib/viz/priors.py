"""What the discovery figures show (pure functions) and how they are drawn (matplotlib).

The input is a result dict of :func:`equilib.discover.run`: ``layers`` (per block, per path:
prior precision and weight norm), ``layers_history`` (the same after every epoch) and
``history`` (losses, accuracies, log marginal likelihood per epoch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "path_names",
    "structure_arrays",
    "structure_over_epochs",
    "evidence_curve",
    "plot_structure",
    "plot_precision_history",
    "plot_evidence",
    "plot_losses",
    "output_ratio_array",
    "plot_output_ratios",
    "knockout_array",
    "plot_knockouts",
]

PATH_COLOURS = {"fc": "tab:orange", "conv": "tab:blue", "gconv": "tab:green"}


def path_names(layers: list[dict]) -> list[str]:
    """All path names that occur in any block, in first-seen order."""
    names: list[str] = []
    for layer in layers:
        for p in layer["paths"]:
            if p not in names:
                names.append(p)
    return names


def structure_arrays(layers: list[dict]) -> dict:
    """Per-block arrays of what the structure figure shows.

    Returns ``{"blocks": [names], "paths": [names], "prior_variance": (n_paths, n_blocks),
    "prior_precision": (n_paths, n_blocks), "weight_norm": (n_paths, n_blocks)}`` with NaN where a
    block lacks a path; ``prior_variance = 1 / prior_precision``.
    """
    paths = path_names(layers)
    prec = np.full((len(paths), len(layers)), np.nan)
    norm = np.full((len(paths), len(layers)), np.nan)
    for b, layer in enumerate(layers):
        for i, p in enumerate(paths):
            if p in layer["paths"]:
                prec[i, b] = layer["paths"][p]["prior_precision"]
                norm[i, b] = layer["paths"][p]["weight_norm"]
    return {
        "blocks": [layer["name"] for layer in layers],
        "paths": paths,
        "prior_precision": prec,
        "prior_variance": 1.0 / prec,
        "weight_norm": norm,
    }


def structure_over_epochs(result: dict, key: str = "prior_precision") -> dict:
    """``{path: (n_epochs, n_blocks) array}`` of ``key`` after every epoch (NaN where unknown)."""
    hist = result["layers_history"]
    known = [h for h in hist if h is not None]
    if not known:
        raise ValueError("this result has no per-epoch layer structure")
    paths = path_names(known[-1])
    n_blocks = len(known[-1])
    out = {p: np.full((len(hist), n_blocks), np.nan) for p in paths}
    for e, layers in enumerate(hist):
        if layers is None:
            continue
        for b, layer in enumerate(layers):
            for p, v in layer["paths"].items():
                out[p][e, b] = v[key]
    return out


def evidence_curve(result: dict) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and log marginal likelihood per datum at the epochs where it was computed."""
    h = result["history"]
    n = result["config"]["n_train"]
    pairs = [
        (e, v / n)
        for e, v in zip(h["epoch"], h["log_marglik"])
        if v is not None and not (isinstance(v, float) and math.isnan(v))
    ]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    e, v = zip(*pairs)
    return np.asarray(e), np.asarray(v)


def _title(result: dict) -> str:
    return (
        f"{result['task']}: {result['model']} by {result['objective']} "
        f"(test acc. {100 * result['test_accuracy']:.1f}%)"
    )


def plot_structure(result: dict, axes=None):
    """Two panels per run: prior variance 1/delta per block and path (log scale), weight norms.

    Without ``axes`` a new figure is made and titled with the run; with ``axes`` (a row of a
    larger figure, one row per run) each panel carries the run in its own title, so that every
    row of the figure says which run it shows. Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    s = structure_arrays(result["layers"])
    own = axes is None
    if own:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), constrained_layout=True)
    else:
        fig = axes[0].figure
    x = np.arange(len(s["blocks"]))
    w = 0.8 / max(len(s["paths"]), 1)
    for i, p in enumerate(s["paths"]):
        colour = PATH_COLOURS.get(p)
        axes[0].bar(
            x + (i - (len(s["paths"]) - 1) / 2) * w,
            s["prior_variance"][i],
            w,
            label=p,
            color=colour,
        )
        axes[1].bar(
            x + (i - (len(s["paths"]) - 1) / 2) * w, s["weight_norm"][i], w, label=p, color=colour
        )
    values = np.asarray(s["prior_variance"], dtype=float)
    if values.size and np.nanmin(values) == np.nanmax(
        values
    ):  # one value (MAP): a decade around it
        axes[0].set_ylim(values.flat[0] / 10, values.flat[0] * 10)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("prior variance 1/delta")
    axes[1].set_ylabel("weight norm |theta|")
    for ax in axes:
        ax.set_xticks(x, s["blocks"])
        ax.legend(frameon=False)
    if own:
        fig.suptitle(_title(result), fontsize=10)
    else:
        axes[0].set_title(f"{_title(result)}\nprior variance per path", fontsize=9)
        axes[1].set_title("weight norm per path", fontsize=9)
    return fig


def plot_losses(results: dict, ax=None):
    """Training loss per epoch (log scale) of every run in ``{label: result}``.

    The loss is what the optimiser minimised: the mean cross-entropy plus the prior term
    ``1/2 sum_l delta_l |theta_l|^2 / N``. Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
    for label, r in results.items():
        h = r["history"]
        ax.plot(h["epoch"], h["train_loss"], label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (cross-entropy + prior term)")
    ax.legend(frameon=False, fontsize=7)
    return ax.figure


def plot_precision_history(result: dict, ax=None):
    """Prior precision of every path of every block over the epochs (log scale)."""
    import matplotlib.pyplot as plt

    curves = structure_over_epochs(result, "prior_precision")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
    epochs = np.asarray(result["history"]["epoch"])
    styles = ["-", "--", ":", "-."]
    for p, arr in curves.items():
        for b in range(arr.shape[1]):
            ax.plot(
                epochs,
                arr[:, b],
                styles[b % len(styles)],
                color=PATH_COLOURS.get(p),
                label=f"{p}, block{b}",
            )
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("prior precision delta")
    ax.legend(frameon=False, fontsize=7, ncol=2)
    ax.set_title(_title(result), fontsize=9)
    return ax.figure


def plot_evidence(result: dict, ax=None):
    """Log marginal likelihood per datum (left axis) and test accuracy (right axis) per epoch."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
    e, v = evidence_curve(result)
    ax.plot(e, v, "o-", color="black", label="log p(D|delta)/N")
    ax.set_xlabel("epoch")
    ax.set_ylabel("log marginal likelihood / N")
    ax2 = ax.twinx()
    h = result["history"]
    ax2.plot(h["epoch"], h["test_acc"], color="tab:red", alpha=0.7, label="test accuracy")
    ax2.set_ylabel("test accuracy", color="tab:red")
    ax.set_title(_title(result), fontsize=9)
    return ax.figure


def _block_array(rows: list[list]) -> np.ndarray:
    """``(runs, blocks)`` from one list of per-block values per run, None and gaps as NaN."""
    n = max((len(row) for row in rows), default=0)
    out = np.full((len(rows), n), np.nan)
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            if v is not None:
                out[i, j] = v
    return out


def output_ratio_array(results: list[dict], a: str = "fc", b: str = "conv") -> np.ndarray:
    """``(runs, blocks)``: per run and block, the ratio of path ``a``'s output precision to path
    ``b``'s (``equilib.discover.output_precisions``); NaN where a block or run lacks it."""
    from equilib.discover import precision_ratios

    return _block_array(
        [precision_ratios(r["layers"], a, b, key="output_precision") for r in results]
    )


def knockout_array(results: list[dict], path: str = "fc") -> np.ndarray:
    """``(runs, blocks)``: the test accuracy each run loses, in points, when ``path`` is silenced
    in one block (``equilib.discover.knockout_accuracies``); NaN where a block lacks it."""
    rows = []
    for r in results:
        row = []
        for layer in r["layers"]:
            v = layer["paths"].get(path, {}).get("knockout_accuracy")
            row.append(None if v is None else 100 * (r["test_accuracy"] - v))
        rows.append(row)
    return _block_array(rows)


def _group_arrays(groups, to_array, what: str) -> dict:
    """``{label: to_array(results)}`` for ``groups = {label: [result, ...]}``, refusing a group
    that is not a list of run results (one result instead of a list, say) and a figure with
    nothing to show."""
    if not isinstance(groups, Mapping) or not groups:
        raise ValueError("groups must map at least one label to a list of run results")
    for label, results in groups.items():
        if (
            isinstance(results, Mapping)
            or not isinstance(results, Sequence)
            or not results
            or not all(isinstance(r, Mapping) and "layers" in r for r in results)
        ):
            raise ValueError(
                f"groups[{label!r}] must be a non-empty list of run results (one per seed), "
                f"got {type(results).__name__}"
            )
    arrays = {label: to_array(results) for label, results in groups.items()}
    if not any(np.isfinite(a).any() for a in arrays.values()):
        raise ValueError(f"no run here has {what} to plot (a model with a single path per block?)")
    return arrays


def _dots_per_block(ax, arrays: dict) -> None:
    """One marker per run and block for each ``{label: (runs, blocks) array}``, the labels side
    by side within each block, and the blocks named on the x axis."""
    width = 0.7 / max(len(arrays), 1)
    n_blocks = max((a.shape[1] for a in arrays.values()), default=0)
    for g, (label, arr) in enumerate(arrays.items()):
        x = np.arange(arr.shape[1]) + (g - (len(arrays) - 1) / 2) * width
        for i, row in enumerate(arr):
            ax.plot(x, row, "o", color=f"C{g}", alpha=0.8, label=label if i == 0 else None)
    ax.set_xticks(range(n_blocks), [f"block {i}" for i in range(n_blocks)])


def plot_output_ratios(groups: dict, ax=None, a: str = "fc", b: str = "conv"):
    """Per block, the fc/conv ratio of the paths' output precisions, one marker per run.

    ``groups``: ``{label: [result, ...]}`` (for example one label per task and objective, one
    result per seed). Log scale, with the line where both paths have the same prior output
    variance: above it the prior holds path ``a`` nearer to zero than path ``b``. Returns the
    matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    arrays = _group_arrays(
        groups, lambda rs: output_ratio_array(rs, a, b), f"{a} and {b} output precisions"
    )
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
    _dots_per_block(ax, arrays)
    ax.axhline(1.0, color="0.4", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_ylabel(f"output precision {a} / {b}")
    ax.text(
        0.005,
        1.0,
        f" above: {a} held nearer zero than {b}",
        transform=ax.get_yaxis_transform(),
        va="bottom",
        fontsize=7,
        color="0.3",
    )
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax.figure


def plot_knockouts(groups: dict, ax=None, path: str = "fc"):
    """Per block, the test accuracy lost when ``path`` is silenced there, one marker per run.

    ``groups``: ``{label: [result, ...]}`` as for :func:`plot_output_ratios`. The axis is
    linear up to one point and logarithmic above (a path the network does not use costs
    nothing, one it relies on can cost most of the accuracy). Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    arrays = _group_arrays(groups, lambda rs: knockout_array(rs, path), f"a silenced {path} path")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
    _dots_per_block(ax, arrays)
    lowest = min([0.0] + [float(np.nanmin(a)) for a in arrays.values() if np.isfinite(a).any()])
    ax.axhline(0.0, color="0.4", lw=0.8, ls="--")
    ax.set_yscale("symlog", linthresh=1.0, linscale=0.5)
    # at most every point of accuracy can be lost; below zero, silencing the path helped
    ax.set_ylim(min(-0.5, 1.5 * lowest), 110)
    ax.set_yticks([t for t in (-10, -1, 0, 1, 10, 100) if t >= 1.5 * lowest or t >= -0.5])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel(f"accuracy lost without {path} (points)")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax.figure
