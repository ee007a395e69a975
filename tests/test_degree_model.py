"""The partial G-CNN, its regulariser, the training glue and the ``degree`` command line."""

import argparse
import json
import math

import pytest
import torch

from equilib.degree import GroupDensity, kl_divergence, kl_to_uniform
from equilib.degree.model import PartialGCNN, degree_regulariser, layer_entropies, partial_layers
from equilib.groups import Rotations, invariance_error


def _randomise(model, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in partial_layers(model):
            c = layer.density.coefficients
            c.copy_(torch.randn(c.shape, generator=g) * scale)


def test_uniform_model_is_rotation_invariant_and_partial_is_not():
    torch.manual_seed(0)
    model = PartialGCNN((1, 16, 16), 10, width=4)
    x = torch.randn(3, 1, 16, 16)
    assert invariance_error(model, Rotations(4), x) < 1e-5
    _randomise(model, scale=1.0)
    assert invariance_error(model, Rotations(4), x) > 1e-3


def test_layers_in_depth_order_and_entropies():
    model = PartialGCNN((1, 16, 32), 100, width=4, pool=(1, 2))
    assert [n for n, _ in partial_layers(model)] == ["lift", "gconv1", "gconv2", "gconv3"]
    assert model(torch.randn(2, 1, 16, 32)).shape == (2, 100)
    _randomise(model, seed=1)
    ents = layer_entropies(model)
    for entry, (_, layer) in zip(ents, partial_layers(model)):
        w = layer.density.weights().detach()
        assert entry["entropy"] == pytest.approx(
            float(-(w * w.log()).sum() / math.log(4)), abs=1e-6
        )


def test_regulariser_matches_its_definition():
    model = PartialGCNN((1, 8, 8), 10, width=2)
    _randomise(model, seed=2)
    lams = [layer.density().detach() for _, layer in partial_layers(model)]
    logits = [layer.density.logits().detach() for _, layer in partial_layers(model)]
    expected = 2.0 * float(kl_to_uniform(lams[0]))
    expected += 0.5 * sum(float(kl_divergence(lams[i], lams[i - 1])) for i in range(1, 4))
    expected += 4.0 * sum(float(z.max() - z[0]) for z in logits)
    got = float(degree_regulariser(model, kl_uniform=2.0, kl_prev=0.5, align=4.0))
    assert got == pytest.approx(expected, rel=1e-4)


def test_shared_density_counts_once():
    model = PartialGCNN((1, 8, 8), 10, width=2, share=True)
    dens = {id(layer.density) for _, layer in partial_layers(model)}
    assert len(dens) == 1
    _randomise(model, seed=3)
    d = partial_layers(model)[0][1].density
    expected = 3.0 * float(d.kl_to_uniform()) + 5.0 * float(d.alignment())
    assert float(degree_regulariser(model)) == pytest.approx(expected, rel=1e-5)
    names = [n for n, p in model.named_parameters() if n.endswith("coefficients")]
    assert len(names) == 1


def test_regulariser_pulls_lambda_to_uniform():
    model = PartialGCNN((1, 8, 8), 10, width=2)
    _randomise(model, seed=4, scale=1.0)
    opt = torch.optim.Adam(
        [p for n, p in model.named_parameters() if n.endswith("coefficients")], lr=0.05
    )
    before = degree_regulariser(model).item()
    for _ in range(800):
        opt.zero_grad()
        degree_regulariser(model).backward()
        opt.step()
    assert degree_regulariser(model).item() < 0.05 * before
    assert min(e["entropy"] for e in layer_entropies(model)) > 0.95


def test_bad_input():
    model = PartialGCNN((1, 8, 8), 10, width=2)
    with pytest.raises(ValueError, match="non-negative"):
        degree_regulariser(model, kl_uniform=-1.0)
    with pytest.raises(ValueError, match="\\(B, 1, 8, 8\\)"):
        model(torch.randn(2, 1, 8, 9))
    with pytest.raises(ValueError, match="even"):
        PartialGCNN((1, 9, 9), 10)
    with pytest.raises(ValueError, match="gain"):
        GroupDensity.cyclic(4, 2, gain=0.0)
    from equilib.degree.training import experiment_config, run_experiment

    with pytest.raises(ValueError, match="valid settings"):
        experiment_config("upright", epochs_=3)
    with pytest.raises(ValueError, match="valid kinds"):
        run_experiment("upright", kind="mlp", fast=True)


def test_command_line_writes_result_and_png(tmp_path):
    from equilib.degree import cli as degree_cli

    parser = argparse.ArgumentParser()
    degree_cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "--data",
            "rotated",
            "--seed",
            "1",
            "--out",
            str(tmp_path),
            "--fast",
            "--epochs",
            "1",
            "--n-train",
            "64",
            "--quiet",
        ]
    )
    assert degree_cli.run(args) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert 0.0 <= result["test_accuracy"] <= 1.0 and result["seconds"] > 0
    assert [d["name"] for d in result["layers"]] == ["lift", "gconv1", "gconv2", "gconv3"]
    assert all(0.0 <= d["entropy"] <= 1.0 + 1e-9 for d in result["layers"])
    assert len(result["lambdas"]) == 2  # initialisation and one epoch
    assert result["data_elements"] == [0, 1, 2, 3]  # all of C4 in the rotated data
    assert all(len(v) == 4 for v in result["lambdas"][-1].values())
    assert (tmp_path / "lambda.png").stat().st_size > 1000
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "sideways", "--out", str(tmp_path)])


def test_group_names_and_pool_sizes_it_cannot_build_are_refused():
    from equilib.degree.layers import make_group

    with pytest.raises(ValueError, match="unknown group ''"):
        make_group("")
    for pool in ((0, 0), (1, 9), (2,), (1.5, 1)):
        with pytest.raises(ValueError, match="pool must be"):
            PartialGCNN((1, 16, 16), 3, width=2, pool=pool)
    assert PartialGCNN((1, 16, 16), 3, width=2, pool=(8, 8))(torch.rand(2, 1, 16, 16)).shape == (
        2,
        3,
    )
