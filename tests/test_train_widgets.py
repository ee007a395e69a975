"""Tests of equilib.widgets.priors: what the prior and connectivity explorers show."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from equilib.models import build
from equilib.viz.connectivity import layer_matrix
from equilib.widgets import priors as wp


def _result():
    def layers(v_fc, n_fc):
        return [
            {
                "name": "block0",
                "paths": {
                    "fc": {"prior_precision": v_fc, "weight_norm": n_fc},
                    "conv": {"prior_precision": 1.0, "weight_norm": 2.0},
                },
            }
        ]

    return {
        "task": "digits",
        "model": "f-fc+conv",
        "objective": "marglik",
        "config": {"n_train": 100},
        "history": {
            "epoch": [1, 2, 3],
            "test_acc": [0.2, 0.5, 0.7],
            "log_marglik": [None, -150.0, -120.0],
        },
        "layers_history": [None, layers(10.0, 1.0), layers(1000.0, 0.01)],
    }


def test_prior_explorer_state_reads_the_epoch():
    r = _result()
    s = wp.prior_explorer_state(r, 3)
    np.testing.assert_allclose(s["prior_variance"], [[1e-3], [1.0]])
    np.testing.assert_allclose(s["weight_norm"], [[0.01], [2.0]])
    assert s["test_acc"] == 0.7
    assert s["log_marglik_epochs"] == [2, 3] and s["log_marglik"] == [-1.5, -1.2]
    assert wp.prior_explorer_state(r, 2)["log_marglik"] == [-1.5]
    with pytest.raises(ValueError, match="before a resume"):
        wp.prior_explorer_state(r, 1)
    with pytest.raises(ValueError, match="1..3"):
        wp.prior_explorer_state(r, 7)


def test_prior_explorer_builds():
    pytest.importorskip("ipywidgets")
    import matplotlib

    matplotlib.use("Agg")
    w = wp.prior_explorer({"digits": _result()})
    slider = w.children[0].children[1]
    assert (slider.min, slider.max, slider.value) == (2, 3, 3)
    slider.value = 2  # redraws without error


def test_trained_layer_maps_sum_is_the_mean_of_the_subsampled_paths():
    torch.manual_seed(0)
    m = build("f-fc+conv", in_shape=(1, 8, 8), n_classes=10, width=2)
    assert wp.block_input_shapes(m) == [(1, 8, 8), (2, 4, 4), (2, 2, 2)]
    maps = wp.trained_layer_maps(m)
    assert set(maps) == {f"block{b}: {p}" for b in range(3) for p in ("fc", "conv", "sum")}
    f_sum, shape = maps["block0: sum"]
    M_sum = layer_matrix(f_sum, shape)
    M_fc = layer_matrix(maps["block0: fc"][0], shape)  # (2*4*4, 64)
    M_conv = layer_matrix(maps["block0: conv"][0], shape).view(2, 8, 8, 64)  # full resolution
    expect = 0.5 * (M_fc + M_conv[:, ::2, ::2].reshape(32, 64))
    torch.testing.assert_close(M_sum, expect)


def test_rebuild_model_roundtrip():
    from equilib import discover

    torch.manual_seed(0)
    config = discover.default_config(model="fc+conv", task="quadrant", width=2, strides=(2, 1))
    m = discover.build_model(config, (1, 8, 8))
    r = {"config": config.to_dict(), "in_shape": [1, 8, 8], "state_dict": m.state_dict()}
    m2 = wp.rebuild_model(r)
    assert [b.stride for b in m2.blocks] == [2, 1]
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(m2(x), m(x))
    with pytest.raises(ValueError, match="keep_model"):
        wp.rebuild_model({"config": r["config"]})
