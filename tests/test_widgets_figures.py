"""The explorers of equilib.widgets draw into figures that pyplot does not keep.

A figure that pyplot keeps is shown again by the next ``plt.show()`` of any cell, so after an
explorer is built and its sliders moved, ``plt.get_fignums()`` must be empty, and every redraw
must still reach the explorer's output (``show_in``) with labelled axes.
"""

from __future__ import annotations

import matplotlib
import pytest
import torch

from equilib import nn as enn
from equilib.models import build

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

pytest.importorskip("ipywidgets")


@pytest.fixture
def shown(monkeypatch):
    """Every figure an explorer sends to its Output widget, in order."""
    from equilib.widgets import _figure

    figures = []
    real = _figure.show_in

    def record(out, fig):
        figures.append(fig)
        real(out, fig)

    monkeypatch.setattr(_figure, "show_in", record)
    for name in ("connectivity", "marglik", "measure", "priors", "transform"):
        module = __import__(f"equilib.widgets.{name}", fromlist=["show_in"])
        monkeypatch.setattr(module, "show_in", record)
    plt.close("all")
    yield figures
    plt.close("all")


def _sliders(box):
    """Every value widget inside a box, depth first."""
    children = getattr(box, "children", None)
    if children is None:
        return [box] if hasattr(box, "value") else []
    return [w for c in children for w in _sliders(c)]


def _move_first_slider(box):
    slider = next(w for w in _sliders(box) if hasattr(w, "max") and w.max > w.min)
    slider.value = slider.max


def _check(shown, n_before):
    assert plt.get_fignums() == [], "pyplot keeps an explorer's figure; plt.show() would repeat it"
    assert len(shown) > n_before, "moving a slider must redraw the explorer"
    fig = shown[-1]
    assert fig.axes, "the explorer drew nothing"


def test_connectivity_and_feature_map_explorers(shown):
    from equilib.widgets import connectivity as wc

    box = wc.connectivity_explorer({"conv": (enn.conv2d(1, 2, 3), (1, 6, 6))})
    n = len(shown)
    _move_first_slider(box)
    _check(shown, n)
    box = wc.feature_map_explorer(
        {"conv": build("conv", (1, 16, 16), width=4)}, torch.randn(2, 1, 16, 16)
    )
    n = len(shown)
    _move_first_slider(box)
    _check(shown, n)


def test_transform_explorer(shown):
    from equilib.widgets.transform import transform_explorer

    box = transform_explorer(torch.rand(3, 1, 12, 12), {"sigmoid": torch.sigmoid})
    n = len(shown)
    _move_first_slider(box)
    _check(shown, n)


def test_evidence_explorer(shown):
    from equilib.widgets.marglik import evidence_explorer

    x = torch.linspace(-1, 1, 12, dtype=torch.float64)
    box = evidence_explorer(x, x**3, sigma_noise=0.1, max_degree=4)
    n = len(shown)
    _move_first_slider(box)
    _check(shown, n)
    assert shown[-1].axes[0].get_xlabel() == "x"


def _prior_result(epochs, v=1.0):
    layers = [
        {
            "name": "block0",
            "paths": {
                "fc": {"prior_precision": v, "weight_norm": 1.0},
                "conv": {"prior_precision": 1.0, "weight_norm": 2.0},
            },
        }
    ]
    return {
        "task": "digits",
        "model": "f-fc+conv",
        "objective": "marglik",
        "config": {"n_train": 10},
        "history": {
            "epoch": list(epochs),
            "test_acc": [0.5] * len(epochs),
            "log_marglik": [-9.0] * len(epochs),
        },
        "layers_history": [layers] * len(epochs),
    }


def test_prior_explorer(shown):
    from equilib.widgets import priors as wp

    result = _prior_result([1, 2])
    result["layers_history"][1] = _prior_result([2], v=10.0)["layers_history"][0]
    box = wp.prior_explorer({"digits": result})
    n = len(shown)
    box.children[0].children[1].value = 1
    _check(shown, n)


def test_rotation_explorer(shown, capsys):
    from equilib.widgets.measure import rotation_explorer

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    assert rotation_explorer({"linear": model}, torch.rand(2, 1, 8, 8)) is None
    assert len(shown) == 1
    assert plt.get_fignums() == []
    assert shown[0].axes[1].get_ylabel() == "probability"


def test_explorers_refuse_what_they_cannot_show_before_building_a_slider():
    pytest.importorskip("ipywidgets")
    from equilib.widgets.connectivity import feature_map_explorer
    from equilib.widgets.measure import rotation_explorer
    from equilib.widgets.transform import transform_explorer

    x = torch.rand(3, 1, 16, 16)
    model = build("conv", (1, 16, 16), width=2).eval()
    cases = [
        (lambda: rotation_explorer({}, x), "at least one model"),
        (lambda: rotation_explorer({"conv": model}, x[0]), r"\(N, C, H, W\), got \(1, 16, 16\)"),
        (lambda: rotation_explorer({"conv": model}, x[:0]), "non-empty batch"),
        (lambda: transform_explorer(x[:0], {"id": lambda t: t}), "non-empty batch"),
        (lambda: transform_explorer(x, {}), "at least one function"),
        (lambda: feature_map_explorer({}, x), "at least one model"),
        (lambda: feature_map_explorer({"seq": torch.nn.Flatten()}, x), "have no blocks"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message):
            make()


def test_one_move_of_the_reader_is_one_redraw(shown, monkeypatch):
    from equilib.widgets import connectivity as wc
    from equilib.widgets import priors as wp

    # runs whose epochs do not overlap: the slider's range moves past its old maximum and back
    box = wp.prior_explorer(
        {"late": _prior_result(range(40, 44)), "early": _prior_result(range(1, 4))}
    )
    pick, epoch = box.children[0].children
    for run, last in (("early", 3), ("late", 43), ("early", 3)):
        n = len(shown)
        pick.value = run
        assert (epoch.min, epoch.max, epoch.value) == (1 if run == "early" else 40, last, last)
        assert len(shown) == n + 1
    n = len(shown)
    epoch.value = 2
    assert len(shown) == n + 1

    # a smaller layer clamps the unit sliders: still one redraw
    box = wc.connectivity_explorer(
        {"big": (enn.conv2d(1, 3, 3), (1, 8, 8)), "small": (enn.conv2d(1, 1, 3), (1, 4, 4))}
    )
    pick, ch = box.children[0].children
    row, col = box.children[1].children
    ch.value, row.value, col.value = 2, 7, 7
    n = len(shown)
    pick.value = "small"
    assert (ch.value, row.value, col.value) == (0, 3, 3) and len(shown) == n + 1

    # a model with fewer blocks clamps the block slider: one response computed, one redraw
    calls = []
    real = wc.feature_map_response
    monkeypatch.setattr(
        wc, "feature_map_response", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    box = wc.feature_map_explorer(
        {
            "deep": build("conv", (1, 16, 16), width=4),
            "shallow": build("conv", (1, 16, 16), width=4, depth=1),
        },
        torch.randn(2, 1, 16, 16),
    )
    pick = box.children[0].children[0]
    block = box.children[2].children[0]
    block.value = block.max
    calls.clear()
    n = len(shown)
    pick.value = "shallow"
    assert block.value == block.max == 0
    assert len(calls) == 1 and len(shown) == n + 1
