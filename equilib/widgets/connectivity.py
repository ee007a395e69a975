"""Connectivity and feature-map explorers (chapters 02-04).

* ``connectivity_explorer``: pick a layer and an output unit; see the weights with which that
  unit reads every input position (a row of the layer's matrix as an image). A conv shows the
  same local patch sliding with the unit; an FC layer shows a different, global pattern.
* ``feature_map_explorer``: transform the input (shift or rotation) and compare each block's
  feature maps of ``g.x`` with the transformed feature maps of ``x``.

Values come from ``equilib.viz.connectivity``; matplotlib and ipywidgets are imported inside.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from equilib.groups import CyclicShifts, Rotations
from equilib.viz.connectivity import feature_map_response, layer_matrix, unit_weights
from equilib.widgets._figure import (
    OneDraw,
    check_inputs,
    set_slider,
    show_in,
    widget_figure,
    wire_picker,
)

__all__ = [
    "draw_unit_weights",
    "connectivity_explorer",
    "draw_feature_maps",
    "feature_map_explorer",
]


def draw_unit_weights(
    weights: torch.Tensor,
    out_pos: tuple[int, int] | None = None,
    ax=None,
    title: str = "",
    in_channel: int | None = None,
):
    """Draw the weights ``(C, H, W)`` of one output unit as an image over input positions.

    Channels are summed unless ``in_channel`` picks one; ``out_pos`` (row, col in input
    coordinates) marks where the output unit sits.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    img = weights.detach().float().cpu()
    img = img.sum(0) if in_channel is None else img[in_channel]
    m = max(float(img.abs().max()), 1e-12)
    ax.imshow(img.numpy(), cmap="RdBu_r", vmin=-m, vmax=m)
    if out_pos is not None:
        ax.plot(
            [out_pos[1]],
            [out_pos[0]],
            marker="s",
            markersize=10,
            markerfacecolor="none",
            markeredgecolor="k",
            markeredgewidth=1.5,
        )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return ax


def connectivity_explorer(layers: Mapping[str, tuple[torch.nn.Module, tuple[int, int, int]]]):
    """An ipywidgets explorer of layers as matrices: ``layers`` maps a name to ``(layer, in_shape)``.

    Sliders pick the output channel and position; the figure shows that unit's weights over the
    input (summed over input channels) and, beside it, the whole layer matrix with the unit's
    row highlighted. Returns the widget.
    """
    import ipywidgets as widgets

    if not layers:
        raise ValueError("layers must map at least one name to (layer, in_shape)")
    cache = {}

    def info(name):
        if name not in cache:
            layer, in_shape = layers[name]
            M = layer_matrix(layer, in_shape).detach().cpu()
            out = layer(torch.zeros(1, *in_shape, dtype=M.dtype)).shape[1:]
            cache[name] = (M, tuple(in_shape), tuple(out))
        return cache[name]

    pick = widgets.Dropdown(options=list(layers), description="layer")
    ch = widgets.IntSlider(0, 0, 1, description="out channel")
    row = widgets.IntSlider(0, 0, 1, description="out row")
    col = widgets.IntSlider(0, 0, 1, description="out col")
    out = widgets.Output()
    fig = widget_figure((9, 3.4))

    def set_ranges():
        _, _, (Co, Ho, Wo) = info(pick.value)
        for w, n in ((ch, Co), (row, Ho), (col, Wo)):
            set_slider(w, 0, n - 1, min(w.value, n - 1))

    def update(*_):
        M, (C, H, W), (Co, Ho, Wo) = info(pick.value)
        unit = (ch.value * Ho + row.value) * Wo + col.value
        s = H // Ho
        fig.clf()
        ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
        draw_unit_weights(
            unit_weights(M, (C, H, W), unit),
            (row.value * s, col.value * s),
            ax1,
            f"{pick.value}: weights of unit {(ch.value, row.value, col.value)}",
        )
        fig.colorbar(ax1.images[0], ax=ax1, shrink=0.8, label="weight (own scale)")
        m = max(float(M.abs().max()), 1e-12)
        im = ax2.imshow(
            M.numpy(), cmap="RdBu_r", vmin=-m, vmax=m, aspect="auto", interpolation="nearest"
        )
        fig.colorbar(im, ax=ax2, label="weight")
        ax2.axhline(unit, color="k", lw=0.8)
        # a pointer beside the matrix too: the line alone hides under the frame at row 0
        ax2.plot([-0.5], [unit], marker=">", color="k", markersize=7, clip_on=False)
        ax2.set_title(f"layer matrix {tuple(M.shape)} (row {unit} marked)", fontsize=9)
        ax2.set_xlabel("input unit (c, y, x)")
        ax2.set_ylabel("output unit (c', y', x')")
        fig.tight_layout()
        show_in(out, fig)

    wire_picker(pick, [ch, row, col], set_ranges, update)
    return widgets.VBox([widgets.HBox([pick, ch]), widgets.HBox([row, col]), out])


def draw_feature_maps(resp: dict, block: int, channel: int = 0, fig=None, title: str = ""):
    """Draw ``feature_map_response`` for one block and channel: x, g.x, f(x), f(g.x), g.f(x).

    Group feature maps ``(C, n, H, W)`` show their first group slice. The two inputs share one
    colour scale, and so do the three feature maps (with a colour bar), so that equal panels
    look equal.
    """
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(12, 2.6))
    fig.clf()
    axes = fig.subplots(1, 5)

    def img(t):
        t = t[0, channel].detach().float().cpu()
        return t[0] if t.ndim == 3 else t

    panels = [
        ("x", resp["x"][0].mean(0)),
        ("g.x", resp["gx"][0].mean(0)),
        ("f(x)", img(resp["f_x"][block])),
        ("f(g.x)", img(resp["f_gx"][block])),
        ("g.f(x)", img(resp["g_fx"][block])),
    ]
    inputs = torch.stack([t.detach().float().cpu() for _, t in panels[:2]])
    features = torch.stack([t.detach().float().cpu() for _, t in panels[2:]])
    for i, (ax, (name, t)) in enumerate(zip(axes, panels)):
        scale = inputs if i < 2 else features
        lo, hi = float(scale.min()), float(scale.max())
        if hi - lo < 1e-12:  # a constant map (e.g. a dead channel): one flat colour for all
            lo, hi = lo - 1.0, hi + 1.0
        im = ax.imshow(t.detach().cpu().numpy(), cmap="viridis", vmin=lo, vmax=hi)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"{title}  block {block}, channel {channel}: relative error {resp['errors'][block]:.2e}"
    )
    fig.tight_layout()
    fig.colorbar(im, ax=list(axes[2:]), shrink=0.8, label="feature value")
    return fig


def feature_map_explorer(models: Mapping[str, torch.nn.Module], x: torch.Tensor):
    """An ipywidgets explorer: pick a model, a block, a shift or quarter turn; compare features.

    ``models`` maps names to ``equilib.models`` models; ``x: (N, C, H, W)`` (a slider picks one
    image). Returns the widget.
    """
    import ipywidgets as widgets

    check_inputs(x, models, "model")
    no_blocks = [name for name, m in models.items() if not hasattr(m, "blocks")]
    if no_blocks:
        raise ValueError(
            f"models {no_blocks} have no blocks: the explorer shows the feature maps of the "
            "blocks of equilib.models.build's models"
        )
    H, W = x.shape[-2:]
    pick = widgets.Dropdown(options=list(models), description="model")
    kind = widgets.Dropdown(options=["shift", "rotation"], description="transform")
    dy = widgets.IntSlider(1, 0, H - 1, description="dy")
    dx = widgets.IntSlider(0, 0, W - 1, description="dx")
    k = widgets.IntSlider(1, 0, 3, description="quarter turns")
    block = widgets.IntSlider(0, 0, 0, description="block")
    channel = widgets.IntSlider(0, 0, 0, description="channel")
    index = widgets.IntSlider(0, 0, len(x) - 1, description="image")
    out = widgets.Output()
    fig = widget_figure((12, 2.6))

    def update(*_):
        model = models[pick.value]
        block.max = len(model.blocks) - 1
        is_shift = kind.value == "shift"
        dy.layout.display = dx.layout.display = "" if is_shift else "none"
        k.layout.display = "none" if is_shift else ""
        group, g = (
            (CyclicShifts(H, W), (dy.value, dx.value)) if is_shift else (Rotations(4), k.value)
        )
        fmap = getattr(model, "N", 1) > 1 and not is_shift
        resp = feature_map_response(model, x[index.value : index.value + 1], group, g, fmap=fmap)
        channel.max = resp["sizes"][block.value][0] - 1
        draw_feature_maps(resp, block.value, channel.value, fig, title=pick.value)
        show_in(out, fig)

    # update sets the block and channel ranges itself: a value they clamp draws nothing twice
    once = OneDraw()
    for w in (pick, kind, dy, dx, k, block, channel, index):
        w.observe(once(update), names="value")
    update()
    return widgets.VBox(
        [
            widgets.HBox([pick, kind, index]),
            widgets.HBox([dy, dx, k]),
            widgets.HBox([block, channel]),
            out,
        ]
    )
