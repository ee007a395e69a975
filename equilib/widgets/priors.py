"""Explorers of learned layer-wise structure (chapter 07).

* ``prior_explorer``: pick a run and an epoch; per block, bars of the prior variance ``1/delta``
  and of the weight norm of each path. On ``digits`` the reader watches the FC paths of the early
  blocks being pruned (their prior variance collapses, then their weights follow), on
  ``quadrant`` not.
* ``trained_connectivity_explorer``: the connectivity explorer of ``equilib.widgets.connectivity``
  applied to every path (and the sum of paths) of every block of a trained model.

What they show is computed by the pure functions ``prior_explorer_state`` and
``trained_layer_maps``; matplotlib and ipywidgets are imported inside the widget functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from equilib.widgets._figure import set_slider, show_in, widget_figure, wire_picker

__all__ = [
    "prior_explorer_state",
    "prior_explorer",
    "rebuild_model",
    "block_input_shapes",
    "trained_layer_maps",
    "trained_connectivity_explorer",
]


def prior_explorer_state(result: dict, epoch: int) -> dict:
    """What the prior explorer shows for one run after ``epoch`` (1-based).

    Returns ``{"blocks", "paths", "prior_variance": (n_paths, n_blocks), "weight_norm":
    (n_paths, n_blocks), "test_acc", "log_marglik_epochs", "log_marglik"}`` (evidence per datum at
    the refits up to ``epoch``). Raises ``ValueError`` for an epoch the run did not record.
    """
    from equilib.viz.priors import structure_arrays

    epochs = result["history"]["epoch"]
    if epoch not in epochs:
        raise ValueError(
            f"epoch {epoch} was not recorded; this run has epochs {epochs[0]}..{epochs[-1]}"
        )
    i = epochs.index(epoch)
    layers = result["layers_history"][i]
    if layers is None:
        raise ValueError(f"epoch {epoch} was trained before a resume; its weights were not kept")
    s = structure_arrays(layers)
    n = result["config"]["n_train"]
    ml = [
        (e, v / n)
        for e, v in zip(epochs[: i + 1], result["history"]["log_marglik"][: i + 1])
        if v is not None and not (isinstance(v, float) and math.isnan(v))
    ]
    return {
        "blocks": s["blocks"],
        "paths": s["paths"],
        "prior_variance": s["prior_variance"],
        "weight_norm": s["weight_norm"],
        "test_acc": result["history"]["test_acc"][i],
        "log_marglik_epochs": [e for e, _ in ml],
        "log_marglik": [v for _, v in ml],
    }


def _draw_state(fig, state: dict, title: str, ylim_var=None, ylim_norm=None) -> None:
    from equilib.viz.priors import PATH_COLOURS

    fig.clf()
    ax1, ax2 = fig.subplots(1, 2)
    x = np.arange(len(state["blocks"]))
    w = 0.8 / max(len(state["paths"]), 1)
    for i, p in enumerate(state["paths"]):
        off = (i - (len(state["paths"]) - 1) / 2) * w
        ax1.bar(x + off, state["prior_variance"][i], w, label=p, color=PATH_COLOURS.get(p))
        ax2.bar(x + off, state["weight_norm"][i], w, label=p, color=PATH_COLOURS.get(p))
    ax1.set_yscale("log")
    ax1.set_ylabel("prior variance 1/delta")
    ax2.set_ylabel("weight norm")
    if ylim_var is not None:
        ax1.set_ylim(*ylim_var)
    if ylim_norm is not None:
        ax2.set_ylim(*ylim_norm)
    for ax in (ax1, ax2):
        ax.set_xticks(x, state["blocks"])
        ax.legend(frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)


def _limits(result: dict) -> tuple:
    known = [h for h in result["layers_history"] if h is not None]
    var = [1 / v["prior_precision"] for h in known for layer in h for v in layer["paths"].values()]
    norm = [v["weight_norm"] for h in known for layer in h for v in layer["paths"].values()]
    return (min(var) / 2, max(var) * 2), (0, max(norm) * 1.1)


def prior_explorer(results: Mapping[str, dict]):
    """An ipywidgets explorer: a run picker and an epoch slider over per-block prior bars.

    ``results`` maps a label (e.g. ``"digits"``) to a result of :func:`equilib.discover.run`.
    Returns the widget.
    """
    import ipywidgets as widgets

    if not results:
        raise ValueError("results must map at least one label to a discover result")
    pick = widgets.Dropdown(options=list(results), description="run")
    epoch = widgets.IntSlider(1, 1, 1, description="epoch", continuous_update=False)
    out = widgets.Output()
    fig = widget_figure((9, 3.2))

    def set_range():
        r = results[pick.value]
        known = [e for e, h in zip(r["history"]["epoch"], r["layers_history"]) if h is not None]
        set_slider(epoch, known[0], known[-1], known[-1])

    def update(*_):
        r = results[pick.value]
        s = prior_explorer_state(r, epoch.value)
        ml = f", log p(D)/N {s['log_marglik'][-1]:.3f}" if s["log_marglik"] else ""
        title = (
            f"{pick.value}: {r['model']} by {r['objective']}, epoch {epoch.value}: "
            f"test acc. {100 * s['test_acc']:.1f}%{ml}"
        )
        _draw_state(fig, s, title, *_limits(r))
        fig.tight_layout()
        show_in(out, fig)

    wire_picker(pick, [epoch], set_range, update)
    return widgets.VBox([widgets.HBox([pick, epoch]), out])


def rebuild_model(result: dict) -> torch.nn.Module:
    """The trained model of a discovery result kept with ``keep_model=True``: an alias of
    ``equilib.discover.trained_model``, where rebuilding lives (chapter 07 imports it here)."""
    from equilib.discover import trained_model

    return trained_model(result)


@torch.no_grad()
def block_input_shapes(model: torch.nn.Module) -> list[tuple[int, ...]]:
    """The input shape ``(C, H, W)`` of every block of a model built by ``equilib.models``."""
    p = next(model.parameters())
    h = torch.zeros(1, *model.in_shape, dtype=p.dtype, device=p.device)
    shapes = []
    for block in model.blocks:
        shapes.append(tuple(h.shape[1:]))
        h = block(h)
    return shapes


def trained_layer_maps(model: torch.nn.Module) -> dict:
    """``{name: (linear map, in_shape)}`` for every path of every block, and each block's sum.

    A path is the module itself (a conv at full resolution, an FC path at the strided output
    size); ``"blockB: sum"`` is ``(1/P) sum_p path_p(x)`` with full-resolution paths subsampled
    at phase (0, 0), the linear part of the block before its ReLU.
    """
    maps = {}
    for b, (block, shape) in enumerate(zip(model.blocks, block_input_shapes(model))):
        for name, path in block.paths.items():
            maps[f"block{b}: {name}"] = (path, shape)
        if len(block.paths) > 1:
            s = block.stride
            paths = list(block.paths.values())
            H = shape[-1]

            def total(x, paths=paths, s=s, H=H):
                outs = [pth(x) for pth in paths]
                outs = [y[..., ::s, ::s] if y.shape[-1] == H else y for y in outs]
                return sum(outs) / len(outs)

            maps[f"block{b}: sum"] = (total, shape)
    return maps


def trained_connectivity_explorer(result_or_model):
    """The connectivity explorer on a trained model (or a result kept with its weights)."""
    from equilib.widgets.connectivity import connectivity_explorer

    model = result_or_model
    if isinstance(result_or_model, dict):
        model = rebuild_model(result_or_model)
    return connectivity_explorer(trained_layer_maps(model))
