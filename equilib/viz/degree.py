"""What the degree-of-equivariance figures show: lambda per layer on a circle, entropies per run.

Pure functions (``polar_points``, ``entropy_table``) compute the numbers; ``draw_lambdas``,
``plot_lambdas`` and ``plot_entropies`` draw them with matplotlib (imported inside).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch

from equilib._checks import is_int

__all__ = [
    "polar_points",
    "entropy_table",
    "presence_gaps",
    "draw_lambdas",
    "plot_lambdas",
    "plot_entropies",
]


def polar_points(values: Sequence[float], N: int | None = None) -> dict[str, list]:
    """Angles and radii of lambda(h) for a polar plot, one series per coset (rotations, flips).

    values: (|H|,) lambda on the grid in element order (``f * N + k`` when there are flips, so
    |H| = 2N). Returns ``{"rotations": [(theta, r), ...], "flips": [...]}`` (flips only for
    D_N / O(2)); theta = 2 pi k / N. ``N`` (the number of rotations) defaults to |H| (no flips).
    """
    v = [float(x) for x in values]
    if not all(math.isfinite(x) and x >= 0 for x in v):
        raise ValueError(f"lambda values must be finite and non-negative, got {v}")
    n = len(v) if N is None else N
    if len(v) not in (n, 2 * n):
        raise ValueError(f"expected {n} or {2 * n} values for {n} rotations, got {len(v)}")
    out = {"rotations": [(2 * math.pi * k / n, v[k]) for k in range(n)]}
    if len(v) == 2 * n:
        out["flips"] = [(2 * math.pi * k / n, v[n + k]) for k in range(n)]
    return out


def entropy_table(results: Mapping[str, Mapping]) -> dict[str, dict[str, float]]:
    """{run name: {layer name: entropy, ..., "mean": mean entropy}} from run results' ``layers``."""
    table = {}
    for name, res in results.items():
        layers = res["layers"]
        row = {d["name"]: float(d["entropy"]) for d in layers}
        if row:
            row["mean"] = sum(row.values()) / len(row)
        table[name] = row
    return table


def _epoch_index(lambdas: Sequence, epoch: int) -> int:
    """``epoch`` (negative: from the end) as an index into a run's lambdas, or a clear error."""
    n = len(lambdas)
    if not is_int(epoch) or not -n <= epoch < n:
        raise ValueError(
            f"epoch must be an integer between {-n} and {n - 1} (0: the initialisation, "
            f"-1: the last epoch), got {epoch!r}"
        )
    return epoch if epoch >= 0 else n + epoch


def presence_gaps(result: Mapping, epoch: int = -1) -> dict[str, float]:
    """Per layer: the smallest lambda on the group elements the data contain minus the largest
    on those they do not (``result["data_elements"]``), at ``epoch`` (-1 = the last).

    Positive when every element in the data weighs more than every element missing from it;
    {} when the data contain all elements or the result records none.
    """
    present = result.get("data_elements")
    if present is None:
        return {}
    if not present:
        raise ValueError("data_elements is empty: the data contain at least the identity")
    out = {}
    for name, values in result["lambdas"][_epoch_index(result["lambdas"], epoch)].items():
        absent = [float(v) for k, v in enumerate(values) if k not in present]
        if absent:
            out[name] = min(float(values[k]) for k in present) - max(absent)
    return out


def draw_lambdas(
    lambdas: Mapping[str, Sequence[float]],
    fig=None,
    title: str = "",
    N: int | None = None,
    rmax: float | None = None,
    present: Sequence[int] | None = None,
):
    """Polar plots of lambda(h) per layer: bars at the group's angles, the uniform density dashed.

    ``lambdas``: {layer name: (|H|,) values}. Draws into ``fig`` (a new figure if None).
    ``present``: indices of the group elements the data contain; their bars are drawn in blue,
    the others in grey, with a legend (None: all blue, no legend). ``N``: the number of
    rotations, as in ``polar_points``. Angles are labelled in degrees.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = list(lambdas)
    if not names:
        raise ValueError("lambdas must hold at least one layer")
    if present is not None:
        n_rot = N or min(len(v) for v in lambdas.values())
        if not all(isinstance(k, numbers.Integral) and 0 <= k < n_rot for k in present):
            raise ValueError(
                f"present must list indices of rotations between 0 and {n_rot - 1}, got "
                f"{list(present)}"
            )
    if fig is None:
        fig = plt.figure(figsize=(2.6 * len(names), 3.2))
    fig.clf()
    top = rmax or max(2.0, max(max(float(x) for x in v) for v in lambdas.values()) * 1.1)
    circle = torch.linspace(0, 2 * math.pi, 100)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1, projection="polar")
        values = [float(x) for x in lambdas[name]]
        pts = polar_points(values, N)
        n = len(pts["rotations"])
        width = 2 * math.pi / n * (0.4 if "flips" in pts else 0.8)
        th, r = zip(*pts["rotations"])
        colours = ["C0" if present is None or k in present else "0.6" for k in range(n)]
        ax.bar(th, r, width=width, color=colours, alpha=0.85)
        if "flips" in pts:
            th2, r2 = zip(*pts["flips"])
            ax.bar([t + width for t in th2], r2, width=width, color="C1", alpha=0.8)
        ax.plot(circle.numpy(), [1.0] * len(circle), "k--", lw=0.8)
        ax.set_ylim(0, top)
        ax.set_yticklabels([])
        ax.set_xticks([2 * math.pi * k / n for k in range(n)] if n <= 8 else ax.get_xticks())
        if n <= 8:
            ax.set_xticklabels(
                [f"{round(360 * k / n)}\N{DEGREE SIGN}" for k in range(n)], fontsize=7
            )
        ax.tick_params(pad=0)
        ax.set_title(name, fontsize=9)
    handles = []
    if present is not None:
        handles += [
            Patch(color="C0", label="in the data"),
            Patch(color="0.6", label="not in the data"),
        ]
    if N is not None and any(len(v) == 2 * N for v in lambdas.values()):
        handles.append(Patch(color="C1", label="flip"))
    handles.append(plt.Line2D([], [], color="k", ls="--", lw=0.8, label="uniform (lambda = 1)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot_lambdas(result: Mapping, epoch: int = -1, fig=None):
    """``draw_lambdas`` for a run result (``run_experiment``) at ``epoch`` (-1 = the last).

    The group elements in the result's ``data_elements`` (when it has them) are drawn in blue.
    """
    from equilib.degree.density import group_angles_flips
    from equilib.degree.layers import make_group

    lams = result["lambdas"]
    if not lams or not lams[0]:
        raise ValueError("this result has no lambda (a model without partial layers)")
    ep = _epoch_index(lams, epoch)
    ents = result["entropies"][ep]
    names = list(lams[ep])
    labelled = {f"{n} (H={h:.2f})": lams[ep][n] for n, h in zip(names, ents)}
    when = "at initialisation" if ep == 0 else f"after epoch {ep}"
    title = f"{result.get('data', '')} data: lambda per layer {when}"
    # a group with flips has 2N values per layer: N turns, then N mirrored turns
    group = result.get("config", {}).get("group", "C4")
    n_rot = group_angles_flips(make_group(group) if isinstance(group, str) else group)[2]
    return draw_lambdas(
        labelled, fig=fig, title=title, N=n_rot, present=result.get("data_elements")
    )


def plot_entropies(results: Mapping[str, Mapping], ax=None):
    """Grouped bars: normalised entropy of lambda per layer (x) for every run (colour)."""
    import matplotlib.pyplot as plt

    table = entropy_table(results)
    runs = [k for k, v in table.items() if v]
    if not runs:
        raise ValueError("no run with lambda to plot")
    # every run's layers, in the order they first appear (runs may differ: a shared lambda)
    layers = list(dict.fromkeys(k for run in runs for k in table[run] if k != "mean"))
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    w = 0.8 / len(runs)
    for i, run in enumerate(runs):
        xs = [j + (i - (len(runs) - 1) / 2) * w for j in range(len(layers))]
        ax.bar(xs, [table[run].get(layer, float("nan")) for layer in layers], width=w, label=run)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers)
    ax.set_xlabel("layer (input side first)")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_ylabel("H(lambda) / log|H|")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return ax
