"""Lambda explorer (chapter 08): lambda(h) per layer on polar plots, with an epoch slider.

Pick a run (a data variant) and an epoch; the figure shows every layer's density over the group
as bars at the group's angles, the uniform density (fully equivariant) as a dashed circle, and
the normalised entropy in each title. Values come from ``equilib.viz.degree``.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["lambda_explorer"]


def lambda_explorer(results: Mapping[str, Mapping]):
    """An ipywidgets explorer of learned lambdas: ``results`` maps a run name to a run result.

    Each result is a ``run_experiment`` dict (``lambdas`` and ``entropies`` per epoch, epoch 0 =
    initialisation). Returns the widget.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    from equilib.viz.degree import plot_lambdas
    from equilib.widgets._figure import set_slider, wire_picker

    runs = {k: v for k, v in results.items() if v.get("lambdas") and v["lambdas"][0]}
    if not runs:
        raise ValueError("results must hold at least one run with lambda per epoch")
    pick = widgets.Dropdown(options=list(runs), description="data")
    epoch = widgets.IntSlider(0, 0, 1, description="epoch")
    out = widgets.Output()
    n_layers = len(next(iter(runs.values()))["lambdas"][0])
    fig = plt.figure(figsize=(2.6 * n_layers, 3.2))
    plt.close(fig)  # drawn into ``out`` only: no later plt.show() shows it again

    def set_range():
        n = len(runs[pick.value]["lambdas"]) - 1
        set_slider(epoch, 0, n, n)

    def update(*_):
        plot_lambdas(runs[pick.value], epoch=epoch.value, fig=fig)
        with out:
            out.clear_output(wait=True)
            display(fig)

    wire_picker(pick, [epoch], set_range, update)
    return widgets.VBox([widgets.HBox([pick, epoch]), out])
