"""Figures owned by a widget, not by pyplot.

An explorer keeps one figure and redraws it on every slider move. If pyplot kept that figure
too, the next ``plt.show()`` anywhere in the notebook (in an unrelated cell) would display it a
second time. ``widget_figure`` therefore closes the figure in pyplot right after creating it:
the ``Figure`` object stays fully usable for drawing and for ``display``, pyplot just forgets
it. ``show_in`` replaces the contents of an ``ipywidgets.Output`` by the figure.
"""

from __future__ import annotations

__all__ = ["widget_figure", "show_in"]


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
