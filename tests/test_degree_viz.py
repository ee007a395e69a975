"""What the degree figures show (pure functions), and that the drawing and widget code runs."""

import math

import matplotlib
import pytest

matplotlib.use("Agg")

from equilib.viz.degree import (  # noqa: E402
    draw_lambdas,
    entropy_table,
    plot_entropies,
    plot_lambdas,
    polar_points,
)


def _result(data="rotated"):
    lams = [
        {"lift": [1.0, 1.0, 1.0, 1.0], "gconv1": [1.0, 1.0, 1.0, 1.0]},
        {"lift": [2.5, 0.5, 0.5, 0.5], "gconv1": [1.0, 1.0, 1.0, 1.0]},
    ]
    ents = [[1.0, 1.0], [0.8, 1.0]]
    return {
        "data": data,
        "lambdas": lams,
        "entropies": ents,
        "layers": [{"name": "lift", "entropy": 0.8}, {"name": "gconv1", "entropy": 1.0}],
    }


def test_polar_points_rotations_and_flips():
    pts = polar_points([1.0, 2.0, 0.5, 0.5])
    assert [round(t, 6) for t, _ in pts["rotations"]] == [
        0,
        round(math.pi / 2, 6),
        round(math.pi, 6),
        round(3 * math.pi / 2, 6),
    ]
    assert [r for _, r in pts["rotations"]] == [1.0, 2.0, 0.5, 0.5] and "flips" not in pts
    d4 = polar_points([1, 1, 1, 1, 2, 0, 0, 2], N=4)
    assert [r for _, r in d4["flips"]] == [2, 0, 0, 2]
    with pytest.raises(ValueError, match="non-negative"):
        polar_points([1.0, -1.0])
    with pytest.raises(ValueError, match="4 or 8 values"):
        polar_points([1.0] * 5, N=4)


def test_entropy_table_means():
    table = entropy_table({"a": _result(), "fc": {"layers": []}})
    assert table["a"] == {"lift": 0.8, "gconv1": 1.0, "mean": pytest.approx(0.9)}
    assert table["fc"] == {}


def test_drawing_runs():
    import matplotlib.pyplot as plt

    fig = draw_lambdas({"lift": [1, 2, 0.5, 0.5], "g": [1, 1, 1, 1, 1, 1, 1, 1]}, N=None)
    assert len(fig.axes) == 2
    plt.close(fig)
    fig = plot_lambdas(_result(), epoch=0)
    assert len(fig.axes) == 2
    plt.close(fig)
    ax = plot_entropies({"rotated": _result(), "upright": _result("upright")})
    assert len(ax.patches) == 4
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="no lambda"):
        plot_lambdas({"lambdas": [{}], "entropies": [[]]})


def test_widget_builds():
    pytest.importorskip("ipywidgets")
    from equilib.widgets.degree import lambda_explorer

    w = lambda_explorer({"rotated": _result(), "upright": _result("upright")})
    pick, epoch = w.children[0].children
    assert epoch.max == 1 and epoch.value == 1
    epoch.value = 0
    pick.value = "upright"
    assert epoch.value == 1
    with pytest.raises(ValueError, match="at least one run"):
        lambda_explorer({"fc": {"lambdas": [{}]}})


def test_bars_of_the_elements_in_the_data_are_blue_and_the_others_grey():
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    res = {**_result("partial"), "data_elements": [0, 2]}
    fig = plot_lambdas(res)
    bars = [p for p in fig.axes[0].patches]
    assert len(bars) == 4
    blue, grey = to_rgba("C0", 0.85), to_rgba("0.6", 0.85)
    assert [b.get_facecolor() for b in bars] == [blue, grey, blue, grey]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["in the data", "not in the data"]
    assert "partial data" in fig._suptitle.get_text()
    plt.close(fig)


def test_widget_leaves_no_figure_for_the_next_show():
    pytest.importorskip("ipywidgets")
    import matplotlib.pyplot as plt

    from equilib.widgets.degree import lambda_explorer

    plt.close("all")
    w = lambda_explorer({"rotated": _result(), "upright": _result("upright")})
    w.children[0].children[1].value = 0  # redraw
    assert plt.get_fignums() == []


def test_presence_gaps():
    from equilib.viz.degree import presence_gaps

    res = {**_result("partial"), "data_elements": [0, 2]}
    res["lambdas"][-1] = {"lift": [1.6, 0.3, 1.5, 0.6], "gconv1": [2.0, 0.5, 0.4, 1.1]}
    gaps = presence_gaps(res)
    assert gaps == {"lift": pytest.approx(1.5 - 0.6), "gconv1": pytest.approx(0.4 - 1.1)}
    assert presence_gaps(res, epoch=0) == {"lift": 0.0, "gconv1": 0.0}
    assert presence_gaps({**res, "data_elements": [0, 1, 2, 3]}) == {}
    assert presence_gaps(_result()) == {}


def test_a_dihedral_run_is_drawn_as_four_turns_and_their_mirror_images():
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    res = {
        "data": "partial",
        "config": {"group": "D4"},
        "lambdas": [{"lift": [1.0] * 8}, {"lift": [1.6, 0.3, 1.5, 0.6, 1.0, 1.0, 1.0, 1.0]}],
        "entropies": [[1.0], [0.9]],
        "data_elements": [0, 2],
    }
    fig = plot_lambdas(res)
    bars = fig.axes[0].patches
    assert len(bars) == 8  # four turns and four flips, not eight turns of 45 degrees
    turns = [b.get_facecolor() for b in bars[:4]]
    assert turns == [to_rgba("C0", 0.85), to_rgba("0.6", 0.85)] * 2
    assert all(b.get_facecolor() == to_rgba("C1", 0.8) for b in bars[4:])
    assert "flip" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][1] == "90\N{DEGREE SIGN}"
    plt.close(fig)


def test_an_epoch_the_run_does_not_have_is_refused_by_name():
    from equilib.viz.degree import presence_gaps

    res = {**_result("partial"), "data_elements": [0, 2]}
    for epoch in (2, -3):
        with pytest.raises(ValueError, match="epoch must be an integer between -2 and 1"):
            plot_lambdas(res, epoch=epoch)
        with pytest.raises(ValueError, match="epoch must be an integer between -2 and 1"):
            presence_gaps(res, epoch=epoch)
    with pytest.raises(ValueError, match="finite and non-negative"):
        polar_points([float("nan"), 1.0, 1.0, 1.0])


def test_entropy_bars_cover_the_layers_of_every_run():
    import matplotlib.pyplot as plt

    ax = plot_entropies(
        {
            "per layer": {
                "layers": [{"name": "lift", "entropy": 0.9}, {"name": "gconv1", "entropy": 0.8}]
            },
            "shared": {"layers": [{"name": "shared", "entropy": 0.5}]},
        }
    )
    assert [t.get_text() for t in ax.get_xticklabels()] == ["lift", "gconv1", "shared"]
    heights = [b.get_height() for b in ax.patches]
    assert sorted(h for h in heights if h == h) == [0.5, 0.8, 0.9]  # every entropy drawn
    plt.close(ax.figure)


def test_elements_in_the_data_must_be_elements_of_the_group():
    from equilib.viz.degree import presence_gaps

    for present in ([0, 7], [-1]):
        with pytest.raises(ValueError, match="indices of rotations between 0 and 3"):
            draw_lambdas({"lift": [1.0, 1.0, 1.0, 1.0]}, present=present)
    with pytest.raises(ValueError, match="data_elements is empty"):
        presence_gaps({**_result("partial"), "data_elements": []})


def test_the_lambda_explorer_draws_once_per_move(monkeypatch):
    pytest.importorskip("ipywidgets")
    import matplotlib.pyplot as plt

    import equilib.viz.degree as vd
    from equilib.widgets.degree import lambda_explorer

    draws = []
    real = vd.plot_lambdas
    monkeypatch.setattr(
        vd, "plot_lambdas", lambda *a, **k: draws.append(k["epoch"]) or real(*a, **k)
    )
    box = lambda_explorer({"rotated": _result(), "upright": _result("upright")})
    pick, epoch = box.children[0].children
    epoch.value = 0
    draws.clear()
    pick.value = "upright"
    assert draws == [1]  # the new run at its last epoch, drawn once
    plt.close("all")
