"""Rotation explorer (chapter 09): turn a digit continuously and watch each model's output move.

The turns come from ``equilib.groups.rotate(x, t, mode="cubic")``; ipywidgets and matplotlib
are imported inside.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from equilib.groups import rotate
from equilib.widgets._figure import check_inputs, show_in, widget_figure

__all__ = ["rotation_responses", "rotation_explorer"]


@torch.no_grad()
def rotation_responses(models: Mapping[str, Callable], x: torch.Tensor, degrees: float):
    """Class probabilities of each model for ``x: (1, C, H, H)`` turned by ``degrees``.

    Returns ``(turned image (H, H), {name: probabilities (K,)})``.
    """
    turned = rotate(x, math.radians(degrees), mode="cubic")
    probs = {name: m(turned).softmax(-1)[0] for name, m in models.items()}
    return turned[0].mean(0), probs


def rotation_explorer(models: Mapping[str, Callable], X: torch.Tensor):
    """Sliders for the digit and the angle; panels: the turned digit and each model's output."""
    import ipywidgets as widgets
    from IPython.display import display

    check_inputs(X, models, "model")
    angle = widgets.FloatSlider(value=0.0, min=-180.0, max=180.0, step=5.0, description="angle")
    index = widgets.IntSlider(value=0, min=0, max=len(X) - 1, description="digit")
    out = widgets.Output()
    fig = widget_figure((3 + 3 * len(models), 2.6))

    def update(_=None):
        img, probs = rotation_responses(models, X[index.value : index.value + 1], angle.value)
        fig.clf()
        axes = fig.subplots(1, 1 + len(probs))
        axes[0].imshow(img.cpu().numpy(), cmap="gray_r")
        axes[0].set_title(f"turned by {angle.value:.0f} deg")
        axes[0].axis("off")
        for ax, (name, p) in zip(axes[1:], probs.items()):
            ax.bar(range(len(p)), p.cpu().numpy())
            ax.set_ylim(0, 1)
            ax.set_xticks(range(len(p)))
            ax.set_xlabel("class", fontsize=8)
            ax.set_title(f"{name}: class {int(p.argmax())}", fontsize=9)
        axes[1].set_ylabel("probability", fontsize=8)
        fig.tight_layout()
        show_in(out, fig)

    angle.observe(update, names="value")
    index.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([index, angle]), out])
    display(box)
    return None
