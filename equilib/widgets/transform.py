"""Transform explorer (chapter 01): transform a digit, compare f(g.x) with g.f(x) side by side.

``draw_response`` draws what ``equilib.viz.transform.response`` computes; ``transform_explorer``
wraps it in ipywidgets controls. matplotlib and ipywidgets are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from equilib.viz.transform import D4_LABELS, make_transform, response, transform_label
from equilib.widgets._figure import check_inputs, show_in, widget_figure

__all__ = ["draw_response", "transform_explorer"]

_PANELS = [
    ("x", "x"),
    ("gx", "g.x"),
    ("f_gx", "f(g.x)"),
    ("g_fx", "g.f(x)"),
    ("diff", "difference"),
]


def _first_image(t: torch.Tensor):
    """The first image of a batch ``(B, C, H, W)`` as an ``(H, W)`` array (channels averaged)."""
    return t[0].detach().float().cpu().mean(0).numpy()


def draw_response(resp: Mapping[str, Any], fig=None, title: str = ""):
    """Draw a ``response`` dict as five panels: x, g.x, f(g.x), g.f(x), f(g.x) - g.f(x).

    Image outputs are drawn as images on a shared grey scale (the difference in red/blue);
    vector outputs (one row per example) as bar charts of the first example.
    """
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(12, 2.8))
    fig.clf()
    axes = fig.subplots(1, len(_PANELS))
    image_out = resp["fx"].ndim == resp["x"].ndim
    out_max = float(torch.stack([resp["f_gx"].abs().max(), resp["g_fx"].abs().max()]).max())
    out_max = max(out_max, 1e-12)
    # the outputs f(g.x) and g.f(x) on one scale, from min(0, their lowest value) to out_max
    out_min = min(0.0, float(resp["f_gx"].min()), float(resp["g_fx"].min()))
    for ax, (key, name) in zip(axes, _PANELS):
        value = resp[key]
        if key in ("x", "gx"):
            ax.imshow(_first_image(value), cmap="gray_r", vmin=0, vmax=float(resp["x"].max()))
        elif image_out:
            img = _first_image(value)
            if key == "diff":
                im = ax.imshow(img, cmap="RdBu_r", vmin=-out_max, vmax=out_max)
                bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
                bar.ax.tick_params(labelsize=7)
            else:
                ax.imshow(img, cmap="gray_r", vmin=out_min, vmax=out_max)
        else:
            vec = value[0].detach().float().cpu().reshape(-1)
            colors = "tab:red" if key == "diff" else "tab:blue"
            ax.bar(range(len(vec)), vec.numpy(), color=colors)
            # the difference symmetric about 0 (it has either sign)
            low = -out_max if key == "diff" else out_min
            ax.set_ylim(low * 1.05, out_max * 1.05)
            ax.axhline(0.0, color="0.5", lw=0.6)
            ax.set_xticks(range(len(vec)))
            ax.tick_params(labelsize=7)
        ax.set_title(name)
        if key in ("x", "gx") or image_out:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{title}   relative error |f(g.x) - g.f(x)| / |f(x)| = {resp['error']:.2e}")
    fig.tight_layout()
    return fig


def transform_explorer(
    x: torch.Tensor,
    functions: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    out_transforms: Mapping[str, Any] | None = None,
    max_shift: int | None = None,
):
    """An ipywidgets explorer: pick a function, a transform and its parameter; see the response.

    ``x: (N, C, H, W)`` digits (a slider picks one); ``functions`` maps names to batch functions;
    ``out_transforms`` optionally maps a name to its ``out_transform`` (see ``response``).
    Returns the widget (display it as a cell's last expression).
    """
    import ipywidgets as widgets

    check_inputs(x, functions, "function")
    out_transforms = dict(out_transforms or {})
    H = x.shape[-2]
    max_shift = H // 2 if max_shift is None else max_shift

    f_box = widgets.Dropdown(options=list(functions), description="function")
    kind_box = widgets.Dropdown(
        options=[("rotation (angle)", "rotation"), ("D4 element", "d4"), ("cyclic shift", "shift")],
        description="transform",
    )
    angle = widgets.FloatSlider(value=45.0, min=-180.0, max=180.0, step=5.0, description="angle")
    element = widgets.Dropdown(
        options=[(label, g) for g, label in D4_LABELS.items()], value=(1, 0), description="D4"
    )
    dy = widgets.IntSlider(value=0, min=-max_shift, max=max_shift, description="dy")
    dx = widgets.IntSlider(value=2, min=-max_shift, max=max_shift, description="dx")
    index = widgets.IntSlider(value=0, min=0, max=len(x) - 1, description="digit")
    out = widgets.Output()
    fig = widget_figure((12, 2.8))

    def update(*_):
        kind = kind_box.value
        angle.layout.display = "" if kind == "rotation" else "none"
        element.layout.display = "" if kind == "d4" else "none"
        dy.layout.display = dx.layout.display = "" if kind == "shift" else "none"
        params = {"angle": angle.value, "element": element.value, "dy": dy.value, "dx": dx.value}
        name = f_box.value
        resp = response(
            functions[name],
            x[index.value : index.value + 1],
            make_transform(kind, **params),
            out_transforms.get(name, "auto"),
        )
        draw_response(resp, fig=fig, title=f"f = {name},  g = {transform_label(kind, **params)}")
        show_in(out, fig)

    for w in (f_box, kind_box, angle, element, dy, dx, index):
        w.observe(update, names="value")
    update()
    controls = widgets.HBox(
        [widgets.VBox([f_box, kind_box, index]), widgets.VBox([angle, element, dy, dx])]
    )
    return widgets.VBox([controls, out])
