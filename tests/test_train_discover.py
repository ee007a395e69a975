"""Tests of equilib.discover (per-path structure, init, config) and equilib.viz.priors (pure parts)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from equilib import discover
from equilib.models import build
from equilib.viz import priors as vp


def test_layer_structure_matches_hand_computation():
    torch.manual_seed(0)
    m = build("f-fc+conv", in_shape=(1, 8, 8), n_classes=10, width=2)
    names = [n for n, p in m.named_parameters()]
    delta = torch.arange(1, len(names) + 1, dtype=torch.float64)
    layers = discover.layer_structure(m, delta)
    assert [layer["name"] for layer in layers] == ["block0", "block1", "block2"]
    # block 1, fc path: harmonic mean over its weight tensors, weighted by size; biases excluded
    params = dict(m.named_parameters())
    ws = [n for n in names if n.startswith("blocks.1.paths.fc.") and n.endswith("weight")]
    assert len(ws) == 2
    n = sum(params[w].numel() for w in ws)
    inv = sum(params[w].numel() / float(delta[names.index(w)]) for w in ws)
    norm = math.sqrt(sum(float(params[w].detach().pow(2).sum()) for w in ws))
    got = layers[1]["paths"]["fc"]
    assert got["prior_precision"] == pytest.approx(n / inv)
    assert got["weight_norm"] == pytest.approx(norm)
    assert got["n_params"] == n
    assert set(layers[0]["paths"]) == {"fc", "conv"}
    ratios = discover.precision_ratios(layers)
    assert ratios[1] == pytest.approx(n / inv / layers[1]["paths"]["conv"]["prior_precision"])
    with pytest.raises(ValueError, match="one per tensor"):
        discover.layer_structure(m, [1.0, 2.0])


def test_scalar_precision_gives_that_precision_on_every_path():
    m = build("fc+conv", in_shape=(1, 8, 8), n_classes=10, width=2)
    for layer in discover.layer_structure(m, 3.0):
        for v in layer["paths"].values():
            assert v["prior_precision"] == pytest.approx(3.0)


def test_config_validation_lists_valid_names():
    with pytest.raises(ValueError, match="digits"):
        discover.default_config(task="mnist")
    with pytest.raises(ValueError, match="conv"):
        discover.default_config(model="resnet")
    with pytest.raises(ValueError, match="marglik"):
        discover.default_config(objective="elbo")
    with pytest.raises(ValueError, match="epochs"):
        discover.default_config(epochs=0)
    with pytest.raises(ValueError, match="'ggn', 'mc', 'ef'"):
        discover.default_config(hessian="kfac")
    assert discover.default_config(True).epochs < discover.default_config().epochs


def _fake_result():
    layers = [
        {
            "name": "block0",
            "paths": {
                "fc": {"prior_precision": 100.0, "weight_norm": 0.1},
                "conv": {"prior_precision": 2.0, "weight_norm": 3.0},
            },
        },
        {
            "name": "block1",
            "paths": {
                "fc": {"prior_precision": 1.0, "weight_norm": 5.0},
                "conv": {"prior_precision": 4.0, "weight_norm": 1.0},
            },
        },
    ]
    hist = [None, layers]
    return {
        "task": "digits",
        "model": "f-fc+conv",
        "objective": "marglik",
        "test_accuracy": 0.9,
        "layers": layers,
        "layers_history": hist,
        "config": {"n_train": 10},
        "history": {"epoch": [1, 2], "log_marglik": [None, -20.0], "test_acc": [0.5, 0.9]},
    }


def test_structure_arrays_and_over_epochs():
    r = _fake_result()
    s = vp.structure_arrays(r["layers"])
    assert s["paths"] == ["fc", "conv"] and s["blocks"] == ["block0", "block1"]
    np.testing.assert_allclose(s["prior_variance"], [[0.01, 1.0], [0.5, 0.25]])
    np.testing.assert_allclose(s["weight_norm"], [[0.1, 5.0], [3.0, 1.0]])
    over = vp.structure_over_epochs(r)
    assert np.isnan(over["fc"][0]).all()
    np.testing.assert_allclose(over["fc"][1], [100.0, 1.0])
    e, v = vp.evidence_curve(r)
    assert e.tolist() == [2] and v.tolist() == [-2.0]


def test_output_ratio_array_and_its_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = _fake_result()
    with_outputs = copy.deepcopy(r)
    for layer, (fc, conv) in zip(with_outputs["layers"], ((8.0, 2.0), (1.0, 4.0))):
        layer["paths"]["fc"]["output_precision"] = fc
        layer["paths"]["conv"]["output_precision"] = conv
    arr = vp.output_ratio_array([with_outputs, r])
    np.testing.assert_allclose(arr[0], [4.0, 0.25])
    assert np.isnan(arr[1]).all()  # a result from before the output precisions: no ratio
    fig = vp.plot_output_ratios({"a": [with_outputs, with_outputs], "b": [with_outputs]})
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "output precision fc / conv"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["block 0", "block 1"]
    plt.close(fig)


def test_knockout_array_and_its_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = _fake_result()  # test accuracy 0.9
    measured = copy.deepcopy(r)
    measured["layers"][0]["paths"]["fc"]["knockout_accuracy"] = 0.9
    measured["layers"][1]["paths"]["fc"]["knockout_accuracy"] = 0.25
    arr = vp.knockout_array([measured, r])
    np.testing.assert_allclose(arr[0], [0.0, 65.0])
    assert np.isnan(arr[1]).all()  # a result without knockouts: nothing to plot
    np.testing.assert_allclose(vp.knockout_array([measured], "conv"), [[np.nan, np.nan]])
    fig = vp.plot_knockouts({"a": [measured, r], "b": [measured]})
    ax = fig.axes[0]
    assert ax.get_yscale() == "symlog" and ax.get_ylabel() == "accuracy lost without fc (points)"
    assert ax.get_ylim()[0] < 0 and ax.get_ylim()[1] > 100  # every point that could be lost
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["block 0", "block 1"]
    plt.close(fig)


def test_markdown_table_has_one_row_per_result():
    r = dict(_fake_result(), seconds=1.5, log_marglik=-20.0)
    table = discover.markdown_table([r, dict(r, objective="map", log_marglik=None)])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2].count("|") == lines[0].count("|")
    assert "90.0%" in lines[2] and "50, 0.25" in lines[2] and "-2.000" in lines[2]


def _small_model_data_and_precisions():
    """A small F-FC+CONV, 24 random images with 3 classes, and one precision per tensor."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    m = build("f-fc+conv", in_shape=(1, 8, 8), n_classes=3, width=2)
    loader = DataLoader(
        TensorDataset(torch.rand(24, 1, 8, 8), torch.randint(0, 3, (24,))), batch_size=12
    )
    names = [n for n, _ in m.named_parameters()]
    return m, loader, names, torch.linspace(0.5, 5.0, len(names), dtype=torch.float64)


def test_effective_dimensions_per_path_sum_the_laplace_per_tensor_values():
    from equilib.laplace import KronLaplace

    m, loader, names, delta = _small_model_data_and_precisions()
    eff = discover.effective_dimensions(m, loader, delta)
    gamma = KronLaplace(m, "classification", prior_precision=delta).fit(loader)
    gamma = gamma.effective_dimensions().detach()
    for b, layer in enumerate(eff):
        for path, v in layer["paths"].items():
            idx = [i for i, n in enumerate(names) if n.startswith(f"blocks.{b}.paths.{path}.")]
            assert v["gamma"] == pytest.approx(float(gamma[idx].sum()))
            assert 0 <= v["gamma"] <= v["n"]
    huge = discover.effective_dimensions(m, loader, 1e12)
    assert all(v["gamma"] < 1e-3 for layer in huge for v in layer["paths"].values())


def test_effective_dimensions_do_not_depend_on_how_a_factored_path_splits_its_scale():
    """U's rows scaled by r and V by 1 / r, V's precision by r^2 and U's by 1 / r^2: the same
    function under the same prior, and the same effective dimensions per path."""
    m, loader, names, delta = _small_model_data_and_precisions()
    before = discover.effective_dimensions(m, loader, delta)
    r = 3.0
    with torch.no_grad():
        for path in discover.zoo.factored_paths(m):
            path.u.weight.mul_(r)
            path.v.weight.div_(r)
    scale = [
        r**2 if n.endswith(".v.weight") else r**-2 if n.endswith(".u.weight") else 1.0
        for n in names
    ]
    after = discover.effective_dimensions(m, loader, delta * torch.tensor(scale))
    for a, b in zip(before, after):
        for path, v in a["paths"].items():
            assert b["paths"][path]["gamma"] == pytest.approx(v["gamma"], rel=1e-6)
    mc = discover.effective_dimensions(m, loader, delta, hessian="mc")
    assert all(0 <= v["gamma"] <= v["n"] for layer in mc for v in layer["paths"].values())


def test_effective_dimensions_from_a_laplace_fit_at_the_same_weights():
    from equilib.laplace import KronLaplace

    m, loader, names, delta = _small_model_data_and_precisions()
    fresh = discover.effective_dimensions(m, loader, delta)
    fitted = KronLaplace(m, "classification", prior_precision=1.0).fit(loader)
    assert fitted.fitted_here
    reused = discover.effective_dimensions(m, None, delta, fitted=fitted)
    for a, b in zip(fresh, reused):
        for path, v in a["paths"].items():
            assert b["paths"][path]["gamma"] == pytest.approx(v["gamma"], rel=1e-9)
    assert torch.equal(fitted.prior_precision.cpu(), delta)  # the precisions it was asked for
    with pytest.raises(ValueError, match="curvature 'ggn', not 'mc'"):
        discover.effective_dimensions(m, None, delta, hessian="mc", fitted=fitted)
    other, _, _, _ = _small_model_data_and_precisions()
    with pytest.raises(ValueError, match="of this model"):
        discover.effective_dimensions(other, None, delta, fitted=fitted)
    with pytest.raises(ValueError, match="not been fit at the weights"):
        discover.effective_dimensions(m, None, delta, fitted=KronLaplace(m, "classification"))
    with torch.no_grad():
        next(m.parameters()).mul_(1.5)  # the weights move on after the fit
    assert not fitted.fitted_here
    with pytest.raises(ValueError, match="not been fit at the weights"):
        discover.effective_dimensions(m, None, delta, fitted=fitted)


def test_hessian_setting_reaches_the_laplace_of_the_refits(monkeypatch):
    seen = []

    class Recording(discover.KronLaplace):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs.get("hessian"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(discover, "KronLaplace", Recording)
    config = discover.default_config(
        True, hessian="mc", epochs=2, burn_in=0, marglik_every=1, n_train=40, n_test=20
    )
    result = discover.run(config, progress=False)
    # one refit after each epoch; the effective dimensions reported at the end read the last one
    assert seen == ["mc", "mc"]
    assert result["update_seconds"] > 0 and result["epoch_seconds"] > 0
    assert all("effective_dimension" in v for la in result["layers"] for v in la["paths"].values())


def test_history_from_older_records_and_bad_fields():
    from equilib.train import History

    old = {
        "param_names": ["w"],
        "epoch": [1],
        "train_loss": [0.5],
        "train_acc": [0.9],
        "test_acc": [0.8],
        "log_marglik": [-3.0],
        "prior_precision": [[1.0]],
        "lr": [0.1],
        "seconds": [2.0],
    }
    h = History.from_dict(old)
    assert h.seconds == [2.0] and h.update_seconds == [] and h.step_seconds == []
    with pytest.raises(ValueError, match="unknown fields"):
        History.from_dict(dict(old, bogus=[1]))


def test_strides_setting_builds_that_many_blocks_and_keys_the_cache():
    config = discover.default_config(True, strides=[1, 2, 2])
    assert config.strides == (1, 2, 2)
    model = discover.build_model(config, (1, 16, 16))
    assert [b.stride for b in model.blocks] == [1, 2, 2]
    assert (
        len(discover.build_model(discover.default_config(True, strides=[2, 2]), (1, 16, 16)).blocks)
        == 2
    )
    with pytest.raises(ValueError, match="strides must be positive ints"):
        discover.default_config(strides=[2, 0])
    with pytest.raises(ValueError, match="divisible"):
        discover.build_model(discover.default_config(strides=[4, 4, 4]), (1, 16, 16))


def test_fc_blocks_setting_gives_the_fc_path_to_those_blocks_only():
    config = discover.default_config(True, fc_blocks=[0, 2])
    assert config.fc_blocks == (0, 2)
    model = discover.build_model(config, (1, 16, 16))
    assert [sorted(b.paths) for b in model.blocks] == [["conv", "fc"], ["conv"], ["conv", "fc"]]
    every = discover.build_model(discover.default_config(True), (1, 16, 16))
    assert [sorted(b.paths) for b in every.blocks] == [["conv", "fc"]] * 3
    assert discover.cache_entry(config) != discover.cache_entry(discover.default_config(True))
    # a result's configuration (JSON lists) rebuilds the same model
    again = discover.Config(**config.to_dict() | {"fc_blocks": [0, 2]})
    assert again == config
    for bad in ([3], [-1], [True]):
        with pytest.raises(ValueError, match="block indices from 0 to 2"):
            discover.default_config(fc_blocks=bad)
    with pytest.raises(ValueError, match="block indices from 0 to 1"):
        discover.default_config(strides=[2, 2], fc_blocks=[2])
    with pytest.raises(ValueError, match="another path beside it"):
        build("fc", in_shape=(1, 8, 8), n_classes=4, fc_blocks=(0,))
    with pytest.raises(ValueError, match="another path beside it"):
        build("conv", in_shape=(1, 8, 8), n_classes=4, fc_blocks=(0,))
    with pytest.raises(ValueError, match="block indices"):
        build("f-fc+conv", in_shape=(1, 8, 8), n_classes=4, fc_blocks=(True,))
    # the blocks without an FC path have no fc/conv ratio, and nothing to knock out
    layers = discover.layer_structure(model, 1.0)
    assert discover.precision_ratios(layers)[1] is None


def _tangent_steps(path, steps: int, update) -> None:
    """Adam steps on ``u`` alone along random directions, each followed by ``update(path)``."""
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam([path.u.weight], lr=1e-2)
    for _ in range(steps):
        path.u.weight.grad = torch.randn(path.u.weight.shape, generator=g)
        path.project_u_grad_()
        opt.step()
        update(path)


def test_unit_row_steps_keep_v_while_moving_the_scale_into_v_inflates_it():
    torch.manual_seed(0)
    from equilib.nn import FactoredLinear

    paths = [FactoredLinear((2, 12, 12), (3, 6, 6)) for _ in range(2)]
    paths[1].load_state_dict(paths[0].state_dict())
    for path in paths:
        path.scale_into_v_()
    v0 = paths[0].v.weight.norm().item()
    _tangent_steps(paths[0], 50, lambda p: p.retract_u_())
    _tangent_steps(paths[1], 50, lambda p: p.scale_into_v_())  # the old way: norm handed to V
    for path in paths:  # both keep unit rows, and the gradient step was tangent
        torch.testing.assert_close(path.u.weight.norm(dim=2), torch.ones(2, 3))
    assert paths[0].v.weight.norm().item() == pytest.approx(v0, rel=1e-6)
    # each step of ~0.01 per coordinate on 144 coordinates lengthens a row by ~sqrt(1 + 0.0144)
    assert paths[1].v.weight.norm().item() > 1.3 * v0


def test_project_u_grad_removes_the_radial_part_only():
    torch.manual_seed(0)
    from equilib.nn import FactoredLinear

    path = FactoredLinear((2, 4, 4), (3, 2, 2))
    path.scale_into_v_()
    g = torch.randn_like(path.u.weight)
    path.u.weight.grad = g.clone()
    path.project_u_grad_()
    w = path.u.weight.detach()
    radial = (path.u.weight.grad * w).sum(dim=2)
    torch.testing.assert_close(radial, torch.zeros_like(radial))
    # what was removed is along the row: g - projected is parallel to w
    removed = g - path.u.weight.grad
    torch.testing.assert_close(removed, w * (g * w).sum(dim=2, keepdim=True))


def test_factored_training_loss_falls_and_flattens():
    """The MAP training loss of F-FC+CONV on the quadrant task no longer rises after a few
    epochs (the scale of U handed to V after every step made V, and the prior term, grow)."""
    cfg = discover.default_config(
        True,
        task="quadrant",
        model="f-fc+conv",
        objective="map",
        epochs=20,
        n_train=600,
        n_test=20,
        width=8,
        batch_size=32,
        lr=1e-2,
        lr_min=1e-3,
    )
    res = discover.run(cfg, progress=False)
    loss = res["history"]["train_loss"]
    # handing the norm to V after every step, this run's loss rose from epoch 3 to 5800
    assert all(b <= a * 1.02 for a, b in zip(loss, loss[1:])), loss
    assert loss[-1] < 0.5 * loss[0], loss
    # the result measures every path's output at the trained weights
    for layer in res["layers"]:
        for path in ("fc", "conv"):
            v = layer["paths"][path]
            assert 0 < v["output_precision"] < math.inf and v["output_rms"] > 0, (layer, path)
    assert all(r > 0 for r in discover.precision_ratios(res["layers"], key="output_precision"))
    # and what each path is worth: the test accuracy without it, never above 1
    for layer in res["layers"]:
        assert all(0 <= layer["paths"][p]["knockout_accuracy"] <= 1 for p in ("fc", "conv"))


def test_knockout_accuracy_is_the_accuracy_with_the_paths_weights_at_zero():
    """Silencing a path equals zeroing its weights (a path is linear in them), leaves the model
    as it was, and a path that carries the prediction costs accuracy when silenced."""
    torch.manual_seed(0)
    m = build("f-fc+conv", in_shape=(1, 8, 8), n_classes=4, width=4)
    x = torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        y = m(x).argmax(-1)  # labels the model gets right: accuracy 1 with every path
    loader = [(x[:40], y[:40]), (x[40:], y[40:])]
    state = copy.deepcopy(m.state_dict())
    got = discover.knockout_accuracies(m, loader)
    assert [sorted(layer["paths"]) for layer in got] == [["conv", "fc"]] * 3
    for b, layer in enumerate(got):
        for pname, v in layer["paths"].items():
            zeroed = copy.deepcopy(m)
            with torch.no_grad():
                for p in zeroed.blocks[b].paths[pname].parameters():
                    p.zero_()
                want = float((zeroed(x).argmax(-1) == y).double().mean())
            assert v["knockout_accuracy"] == pytest.approx(want)
    assert min(v["knockout_accuracy"] for la in got for v in la["paths"].values()) < 1
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, state[k])
    with torch.no_grad():
        assert (m(x).argmax(-1) == y).all(), "a hook stayed on the model"
    # a block with one path has nothing to knock out
    conv = build("conv", in_shape=(1, 8, 8), n_classes=4, width=4)
    assert [la["paths"] for la in discover.knockout_accuracies(conv, loader)] == [{}] * 3
    assert discover.knockout_everywhere(conv, loader) == {}


def test_knockout_everywhere_zeroes_a_path_in_every_block_at_once():
    """Silencing the FC path of every block equals zeroing every FC weight, which a
    knockout of one block at a time does not, and the model is left as it was."""
    torch.manual_seed(1)
    m = build("f-fc+conv", in_shape=(1, 8, 8), n_classes=4, width=4)
    x = torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        y = m(x).argmax(-1)
    loader = [(x[:40], y[:40]), (x[40:], y[40:])]
    state = copy.deepcopy(m.state_dict())
    got = discover.knockout_everywhere(m, loader)
    assert sorted(got) == ["conv", "fc"]
    for pname, acc in got.items():
        zeroed = copy.deepcopy(m)
        with torch.no_grad():
            for block in zeroed.blocks:
                for p in block.paths[pname].parameters():
                    p.zero_()
            want = float((zeroed(x).argmax(-1) == y).double().mean())
        assert acc == pytest.approx(want)
    one_block = [
        la["paths"]["fc"]["knockout_accuracy"] for la in discover.knockout_accuracies(m, loader)
    ]
    assert got["fc"] < min(one_block), "silencing every block's FC path costs more than one"
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, state[k])


def _exact_output_variances(model, x, delta, factor_scale):
    """Per block, per path: sum_l mean_k |d o_k / d theta_l|^2 / delta_l from full Jacobians."""
    names = [n for n, _ in model.named_parameters()]
    out, h = [], x
    for b, block in enumerate(model.blocks):
        row = {}
        for pname, path in block.paths.items():
            total = 0.0
            for n, p in path.named_parameters():
                if not n.endswith("weight") or (factor_scale == "v" and n == "u.weight"):
                    continue
                full = f"blocks.{b}.paths.{pname}.{n}"

                def f(w, n=n, path=path, h=h):
                    return torch.func.functional_call(path, {n: w}, (h,))

                jac = torch.autograd.functional.jacobian(f, p.detach().clone())
                n_out = path(h).numel()
                total += float(jac.double().pow(2).sum()) / n_out / float(delta[names.index(full)])
            row[pname] = total
        out.append(row)
        with torch.no_grad():
            h = block(h)
    return out


@pytest.mark.parametrize(
    ("name", "factor_scale"), [("f-fc+conv", "v"), ("f-fc+conv", "both"), ("fc+conv", "both")]
)
def test_output_precision_is_the_inverse_prior_variance_of_each_paths_output(name, factor_scale):
    torch.manual_seed(0)
    m = build(name, in_shape=(1, 8, 8), n_classes=10, width=2)
    x = torch.randn(12, 1, 8, 8)
    delta = torch.linspace(0.5, 4.0, len(list(m.parameters())), dtype=torch.float64)
    got = discover.output_precisions(m, x, delta, factor_scale, probes=400)
    exact = _exact_output_variances(m, x, delta, factor_scale)
    for layer, want in zip(got, exact):
        assert set(layer["paths"]) == set(want)
        for path, var in want.items():
            assert layer["paths"][path]["output_precision"] == pytest.approx(1 / var, rel=0.04)
    with torch.no_grad():
        rms = float(m.blocks[0].paths["conv"](x).pow(2).mean().sqrt())
    assert got[0]["paths"]["conv"]["output_rms"] == pytest.approx(rms)
    with pytest.raises(ValueError, match="probes"):
        discover.output_precisions(m, x, delta, probes=0)
    with pytest.raises(ValueError, match="non-empty batch"):
        discover.output_precisions(m, x[:0], delta)
    with pytest.raises(ValueError, match="one per tensor"):
        discover.output_precisions(m, x, [1.0, 2.0])


@pytest.mark.parametrize("name", discover.model_names())
def test_every_zoo_model_gets_an_output_precision_for_every_path(name):
    torch.manual_seed(0)
    m = build(name, in_shape=(1, 8, 8), n_classes=10, width=2)
    out = discover.output_precisions(m, torch.rand(4, 1, 8, 8), 1.0, probes=2)
    assert [sorted(layer["paths"]) for layer in out] == [sorted(b.paths) for b in m.blocks]
    for layer in out:
        for v in layer["paths"].values():
            assert 0 < v["output_precision"] < math.inf and v["output_rms"] > 0


def test_output_precision_does_not_depend_on_how_a_factored_path_splits_its_scale():
    """U's rows scaled by r and V by 1 / r give the same function; the precision on V that
    gives V the same prior in function space is r^2 times larger, and the output precision
    sees the same prior, while the ratio of the weights' precisions moves by r^2."""
    torch.manual_seed(0)
    m = build("f-fc+conv", in_shape=(1, 8, 8), n_classes=10, width=2)
    x = torch.randn(8, 1, 8, 8)
    names = [n for n, _ in m.named_parameters()]
    before = discover.output_precisions(m, x, 1.0, "v", probes=4, seed=3)
    r = 3.0
    with torch.no_grad():
        for path in discover.zoo.factored_paths(m):
            path.u.weight.mul_(r)
            path.v.weight.div_(r)
    delta = torch.tensor([r**2 if n.endswith(".v.weight") else 1.0 for n in names])
    after = discover.output_precisions(m, x, delta, "v", probes=4, seed=3)
    for a, b in zip(before, after):
        for path in a["paths"]:
            assert b["paths"][path]["output_precision"] == pytest.approx(
                a["paths"][path]["output_precision"], rel=1e-5
            )
            assert b["paths"][path]["output_rms"] == pytest.approx(
                a["paths"][path]["output_rms"], rel=1e-5
            )
    raw = discover.precision_ratios(discover.layer_structure(m, delta, "v"))
    assert raw == pytest.approx([r**2] * 3)


def test_layer_structure_with_the_scale_in_v_summarises_v_alone():
    torch.manual_seed(0)
    m = build("f-fc+conv", in_shape=(1, 8, 8), n_classes=10, width=2)
    names = [n for n, p in m.named_parameters()]
    delta = torch.arange(1, len(names) + 1, dtype=torch.float64)
    layers = discover.layer_structure(m, delta, factor_scale="v")
    v = "blocks.1.paths.fc.v.weight"
    got = layers[1]["paths"]["fc"]
    assert got["prior_precision"] == pytest.approx(float(delta[names.index(v)]))
    assert got["weight_norm"] == pytest.approx(float(dict(m.named_parameters())[v].norm()))
    both = discover.layer_structure(m, delta)  # the conv paths are summarised alike
    assert layers[1]["paths"]["conv"] == both[1]["paths"]["conv"]
    with pytest.raises(ValueError, match="factor_scale"):
        discover.layer_structure(m, delta, factor_scale="u")
    with pytest.raises(ValueError, match="factor_scale"):
        discover.default_config(factor_scale="u")


def test_cache_entry_rebuilds_the_run_and_map_ignores_the_evidence_schedule():
    ml = discover.default_config(True, objective="marglik", strides=(2, 2, 1), hyper_steps=7)
    entry = discover.cache_entry(ml)
    assert entry["code"] == discover.code_fingerprint() and entry["strides"] == [2, 2, 1]
    assert discover.Config(**{k: v for k, v in entry.items() if k != "code"}) == ml
    a = discover.cache_entry(discover.default_config(True, objective="map", hyper_steps=7))
    b = discover.cache_entry(discover.default_config(True, objective="map", hyper_steps=3))
    assert a == b  # MAP never reads the evidence schedule: one entry
    assert discover.cache_entry(discover.default_config(True, seed=1)) != discover.cache_entry(
        discover.default_config(True, seed=2)
    )


def test_run_many_in_worker_processes_equals_runs_here(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path / "workers"))
    configs = {
        s: discover.default_config(
            True,
            task="quadrant",
            model="f-fc+conv",
            objective="marglik",
            epochs=2,
            burn_in=1,
            marglik_every=1,
            hyper_steps=2,
            n_train=40,
            n_test=10,
            seed=s,
        )
        for s in (0, 1)
    }
    parallel = discover.run_many(configs, workers=2, progress=False)
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path / "here"))
    # each worker trains on one thread; bit-for-bit equality needs the same thread count here
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here_runs = {s: discover.run_cached(c, progress=False) for s, c in configs.items()}
    finally:
        torch.set_num_threads(threads)
    for s, here in here_runs.items():
        assert here["test_accuracy"] == parallel[s]["test_accuracy"]
        assert here["history"]["prior_precision"] == parallel[s]["history"]["prior_precision"]
        for k, v in here["state_dict"].items():
            torch.testing.assert_close(parallel[s]["state_dict"][k], v, rtol=0, atol=0)


def _tiny(**overrides):
    settings = dict(epochs=2, burn_in=0, marglik_every=1, hyper_steps=3, n_train=40, n_test=20)
    return discover.default_config(True, task="quadrant", **(settings | overrides))


def test_retraining_at_a_fixed_prior_is_the_map_run_of_that_prior():
    # the same initial weights, batches and steps as a MAP run: bitwise the same network
    config = _tiny(objective="map", prior_precision=3.0)
    map_run = discover.run(config, progress=False, keep_model=True)
    again = discover.retrain(
        _tiny(), [3.0] * len(map_run["history"]["param_names"]), progress=False
    )
    assert again["history"]["train_loss"] == map_run["history"]["train_loss"]
    assert again["test_accuracy"] == map_run["test_accuracy"]
    assert again["train_accuracy"] == map_run["train_accuracy"]
    norms = [[p["weight_norm"] for p in la["paths"].values()] for la in map_run["layers"]]
    assert [[p["weight_norm"] for p in la["paths"].values()] for la in again["layers"]] == norms
    with pytest.raises(ValueError, match=r"prior precisions \(one per tensor\)"):
        discover.retrain(_tiny(), [1.0, 2.0], progress=False)


def test_a_run_by_the_evidence_retrains_at_its_final_precisions(monkeypatch):
    seen = []
    real = discover.retrain

    def recording(config, prior_precision, **kwargs):
        seen.append(list(prior_precision))
        return real(config, prior_precision, **kwargs)

    monkeypatch.setattr(discover, "retrain", recording)
    result = discover.run(_tiny(), progress=False)
    assert seen == [result["history"]["prior_precision"][-1]]
    again = result["retrained"]
    assert 0 <= again["test_accuracy"] <= 1 and 0 <= again["train_accuracy"] <= 1
    assert len(again["history"]["train_loss"]) == 2 and again["train_seconds"] > 0
    assert [la["name"] for la in again["layers"]] == [la["name"] for la in result["layers"]]
    assert again["layers"][0]["paths"]["fc"]["weight_norm"] > 0
    assert "retrained" in discover.markdown_table([result])
    # switched off, and never for MAP, which shares one cache entry whatever the setting says
    assert "retrained" not in discover.run(_tiny(retrain=False), progress=False)
    assert "retrained" not in discover.run(_tiny(objective="map"), progress=False)
    assert discover.cache_entry(_tiny(objective="map", retrain=False)) == discover.cache_entry(
        _tiny(objective="map")
    )
    assert discover.cache_entry(_tiny(retrain=False)) != discover.cache_entry(_tiny())
    with pytest.raises(ValueError, match="retrain must be True or False"):
        _tiny(retrain="yes")


def test_tracking_the_test_accuracy_changes_nothing_but_the_curve():
    tracked = discover.run(_tiny(retrain=False), progress=False, keep_model=True)
    once = discover.run(_tiny(retrain=False, track_test=False), progress=False, keep_model=True)
    assert all(0 <= v <= 1 for v in tracked["history"]["test_acc"])
    assert once["history"]["test_acc"] == [None, None]  # NaN in the history, None in JSON
    assert once["test_accuracy"] == tracked["test_accuracy"]
    assert once["history"]["train_loss"] == tracked["history"]["train_loss"]
    for k, v in tracked["state_dict"].items():
        assert torch.equal(once["state_dict"][k], v), k
    with pytest.raises(ValueError, match="track_test must be True or False"):
        _tiny(track_test=1)


def test_the_per_block_figures_refuse_one_result_in_place_of_a_list_and_nothing_to_plot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = _fake_result()  # no output precisions, no knockouts
    for plot in (vp.plot_output_ratios, vp.plot_knockouts):
        with pytest.raises(ValueError, match=r"groups\['a'\] must be a non-empty list of run"):
            plot({"a": r})  # one seed's result, not a list of them
        with pytest.raises(ValueError, match=r"groups\['a'\] must be a non-empty list"):
            plot({"a": []})
        with pytest.raises(ValueError, match="at least one label"):
            plot({})
        with pytest.raises(ValueError, match="no run here has"):
            plot({"a": [r]})
    assert plt.get_fignums() == []  # a refused figure leaves no empty one behind
