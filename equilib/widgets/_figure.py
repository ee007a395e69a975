"""Figures owned by a widget, not by pyplot.

An explorer keeps one figure and redraws it on every slider move. If pyplot kept that figure
too, the next ``plt.show()`` anywhere in the notebook (in an unrelated cell) would display it a
second time. ``widget_figure`` therefore closes the figure in pyplot right after creating it:
the ``Figure`` object stays fully usable for drawing and for ``display``, pyplot just forgets
it. ``show_in`` replaces the contents of an ``ipywidgets.Output`` by the figure.

One move of the reader is one redraw: an explorer that sets a slider's range when another
widget changes (lowering a maximum clamps the value, which notifies again) wraps its handlers
with one :class:`OneDraw`, so the changes it makes itself while handling a move draw nothing
of their own; ``set_slider`` gives a slider a new range without passing through max < min,
which ipywidgets refuses.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "widget_figure",
    "show_in",
    "check_inputs",
    "OneDraw",
    "set_slider",
    "wire_picker",
]


def widget_figure(figsize: tuple[float, float]):
    """A new matplotlib figure of ``figsize`` inches that pyplot does not keep (see module doc)."""
    import matplotlib.pyplot as plt

    with plt.ioff():  # no interactive window or inline display on creation
        fig = plt.figure(figsize=figsize)
    plt.close(fig)
    return fig


def show_in(out, fig) -> None:
    """Show ``fig`` as the only output of the ``ipywidgets.Output`` ``out``."""
    from IPython.display import display

    with out:
        out.clear_output(wait=True)
        display(fig)


def check_inputs(x, named: Mapping, what: str) -> None:
    """Refuse what an explorer cannot show, before it builds a slider: ``x`` must be a
    non-empty batch of images ``(N, C, H, W)`` and ``named`` must name at least one ``what``."""
    import torch

    if not isinstance(x, torch.Tensor) or x.ndim != 4 or len(x) == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a non-empty batch of images (N, C, H, W), got {shape}")
    if not isinstance(named, Mapping) or not named:
        raise ValueError(f"pass at least one {what}, as {{name: {what}}}")


class OneDraw:
    """Wraps an explorer's handlers so that one change by the reader runs one handler: a
    handler that notifications of its own changes (a clamped slider, a new range) would call
    again while it runs is skipped, since the running one draws the final state."""

    def __init__(self) -> None:
        self.busy = False

    def __call__(self, handler):
        def guarded(*args):
            if self.busy:
                return
            self.busy = True
            try:
                handler(*args)
            finally:
                self.busy = False

        return guarded


def set_slider(slider, low: int, high: int, value: int) -> None:
    """Give ``slider`` the range ``[low, high]`` and then ``value``, in the order that never
    has max < min (ipywidgets raises on that)."""
    if low > slider.max:
        slider.max, slider.min = high, low
    else:
        slider.min, slider.max = low, high
    slider.value = value


def wire_picker(pick, sliders, set_ranges, draw) -> None:
    """Connect a picker (of a run, a layer) and the ``sliders`` that move within what it picked:
    a new pick calls ``set_ranges()`` and then ``draw()``, a moved slider ``draw()``, each move
    drawing once (:class:`OneDraw`). Draws the first state."""

    def new_pick(*_):
        set_ranges()
        draw()

    once = OneDraw()
    pick.observe(once(new_pick), names="value")
    for slider in sliders:
        slider.observe(once(draw), names="value")
    new_pick()
