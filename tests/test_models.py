"""The model zoo: names, shapes, structure contract, parameter-count formulas, errors."""

import math

import pytest
import torch

from equilib import nn as enn
from equilib.models import MODEL_NAMES, build, path_norms, path_of

CONTRACT = [
    "conv",
    "fc",
    "fc+conv",
    "f-fc",
    "f-fc+conv",
    "s-conv",
    "s-fc",
    "s-fc+s-conv",
    "gconv-c4",
]


def test_contract_names_are_all_there():
    assert set(CONTRACT) <= set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("in_shape", [(1, 16, 16), (3, 8, 8)])
def test_build_shapes_and_structure(name, in_shape):
    model = build(name, in_shape, n_classes=7, width=4)
    y = model(torch.randn(2, *in_shape))
    assert y.shape == (2, 7)
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) == 3
    for block in model.blocks:
        assert isinstance(block, enn.SoftBlock)
        assert set(block.paths) <= set(enn.PATH_NAMES)
    allowed = (torch.nn.Linear, torch.nn.Conv2d, enn.GroupedLinear, enn.BasisConv2d)
    owners = {}
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            assert isinstance(mod, allowed), f"{mod_name}.{p_name} lives in {type(mod).__name__}"
            owners[f"{mod_name}.{p_name}"] = mod
    assert set(owners) == {n for n, _ in model.named_parameters()}
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for n, p in model.named_parameters():
        if n.endswith("bias") and n.startswith("blocks"):
            assert torch.all(p == 0), n


def test_path_of_maps_names_to_blocks_and_paths():
    model = build("f-fc+conv", (1, 16, 16))
    seen = {path_of(n) for n, _ in model.named_parameters()}
    assert seen == {(b, p) for b in range(3) for p in ("fc", "conv")} | {None}
    assert path_of("blocks.1.paths.fc.u.weight") == (1, "fc")
    assert path_of("module.blocks.12.paths.gconv.conv.bias") == (12, "gconv")
    assert path_of("head.0.weight") is None
    norms = path_norms(model)
    assert len(norms) == 3 and set(norms[0]) == {"fc", "conv"}
    expect = math.sqrt(
        sum(
            float(p.detach().pow(2).sum())
            for n, p in model.named_parameters()
            if n.startswith("blocks.2.paths.conv.")
        )
    )
    assert norms[2]["conv"] == pytest.approx(expect, rel=1e-6)


def _weights(model, block, path):
    """Number of weights (no biases) in one path of one block."""
    return sum(
        p.numel()
        for n, p in model.named_parameters()
        if path_of(n) == (block, path) and not n.endswith("bias")
    )


def test_parameter_counts_match_formulas():
    C, H, W, w = 2, 16, 16, 5
    shapes = [(C, H, W), (w, 8, 8), (w, 4, 4)]  # block inputs with strides (2, 2, 1)
    outs = [(w, 8, 8), (w, 4, 4), (w, 4, 4)]
    m = {n: build(n, (C, H, W), 10, w) for n in CONTRACT}
    half = lambda n: (n + 1) // 2  # noqa: E731 - S-FC anchors per axis
    for b, ((c, h, ww), (co, ho, wo)) in enumerate(zip(shapes, outs)):
        X, Y = h * ww, ho * wo
        assert _weights(m["conv"], b, "conv") == co * c * 9
        assert _weights(m["fc"], b, "fc") == co * Y * c * X
        assert _weights(m["f-fc"], b, "fc") == co * c * (X + Y)
        assert _weights(m["f-fc+conv"], b, "fc") == co * c * (X + Y)
        assert _weights(m["s-conv"], b, "conv") == co * c * 9  # 5x5 filters from 3x3 anchors
        Mx, My = half(h) * half(ww), half(ho) * half(wo)
        assert _weights(m["s-fc"], b, "fc") == co * c * (Mx + My)
        assert _weights(m["s-fc+s-conv"], b, "conv") == co * c * 9
        cin = c if b == 0 else 4 * c  # lifting conv, then group convs over C x 4 inputs
        assert _weights(m["gconv-c4"], b, "gconv") == co * cin * 9
    assert m["fc+conv"].blocks[0].paths["conv"].weight.shape == (w, C, 3, 3)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="valid models: conv, fc"):
        build("resnet")
    with pytest.raises(ValueError, match="divisible by the total stride 4"):
        build("conv", (1, 10, 10))
    with pytest.raises(ValueError, match="kernel_size"):
        build("conv", (1, 16, 16), kernel_size=0)
    with pytest.raises(ValueError, match="kernel_size"):
        build("conv", (1, 16, 16), kernel_size=2)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build("conv", (16, 16))
    with pytest.raises(ValueError, match="square"):
        build("gconv-c4", (1, 16, 8))
    model = build("conv", (1, 16, 16))
    with pytest.raises(ValueError, match=r"expects input \(B, 1, 16, 16\)"):
        model(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"expects input \(B, 1, 16, 16\)"):
        model(torch.randn(1, 16, 16))


def test_models_train_a_step_and_grads_reach_every_path():
    torch.manual_seed(0)  # with 3 channels an unlucky draw can leave a path's ReLUs all off
    for name in CONTRACT + ["fc+conv+gconv"]:
        model = build(name, (1, 8, 8), n_classes=3, width=3)
        loss = torch.nn.functional.cross_entropy(
            model(torch.randn(16, 1, 8, 8)), torch.arange(16) % 3
        )
        loss.backward()
        for n, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (name, n)
            if n.endswith("weight"):
                assert p.grad.abs().sum() > 0, (name, n)


def test_pooling_options():
    x = torch.randn(2, 1, 8, 8)
    mx, mean = build("conv", (1, 8, 8), width=3), build("conv", (1, 8, 8), width=3, pooling="mean")
    mean.load_state_dict(mx.state_dict())
    h = mx.features(x)
    torch.testing.assert_close(mx.pool(h), h.amax(dim=(-2, -1)))
    torch.testing.assert_close(mean.pool(h), h.mean(dim=(-2, -1)))
    with pytest.raises(ValueError, match="pooling must be 'max' or 'mean'"):
        build("conv", (1, 8, 8), pooling="sum")


def test_striding_options():
    """Max-pool striding keeps a CONV model invariant to the shifts that move a digit between
    quadrants (multiples of the total stride); polyphase striding to every shift."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16)
    for striding, shifts in (("max", (4, 8)), ("polyphase", (1, 3, 8))):
        model = build("conv", (1, 16, 16), width=3, striding=striding)
        for k in shifts:
            torch.testing.assert_close(model(torch.roll(x, (k, -k), dims=(2, 3))), model(x))
    with pytest.raises(ValueError, match="striding must be one of"):
        build("conv", (1, 8, 8), striding="avg")


def test_init_from_data_gives_unit_std_paths():
    from equilib.models import init_from_data

    torch.manual_seed(0)
    m = build("f-fc+conv", in_shape=(1, 8, 8), n_classes=10, width=4)
    x = torch.rand(64, 1, 8, 8)
    scales = init_from_data(m, x)
    assert [len(row) for row in scales] == [2, 2, 2]
    h = x
    with torch.no_grad():
        for block in m.blocks:
            for path in block.paths.values():
                assert float(path(h).std()) == pytest.approx(1.0, rel=1e-4)
            U, V = block.paths["fc"].factors()  # and the factored path is balanced
            torch.testing.assert_close(U.norm(dim=2), V.norm(dim=2))
            h = block(h)
        assert float(m(x).std()) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("name", ["f-fc+conv", "s-fc+s-conv"])
def test_scale_in_v_keeps_the_function_and_puts_the_scale_in_v(name):
    from equilib.models import factored_paths, scale_in_v

    torch.manual_seed(0)
    m = build(name, in_shape=(1, 8, 8), n_classes=10, width=3)
    assert [id(p) for p in factored_paths(m)] == [id(b.paths["fc"]) for b in m.blocks]
    for block in m.blocks:  # give the factors some imbalance first
        with torch.no_grad():
            block.paths["fc"].u.weight.mul_(3.0)
            block.paths["fc"].v.weight.div_(3.0)
    x = torch.rand(5, 1, 8, 8)
    before = m(x)
    scale_in_v(m)
    torch.testing.assert_close(m(x), before)
    for block in m.blocks:  # the rows of U's weight (coefficients, for S-FC) have unit norm
        u = block.paths["fc"].u.weight
        torch.testing.assert_close(u.norm(dim=2), torch.ones(u.shape[:2]))


def test_every_model_of_the_book_is_a_block_model():
    from equilib.degree import PartialGCNN
    from equilib.models import BlockModel, PathBlock

    zoo = build("fc+conv", in_shape=(1, 8, 8), n_classes=3, width=2)
    partial = PartialGCNN((1, 8, 8), n_classes=3, width=2)
    for model in (zoo, partial):
        assert isinstance(model, BlockModel)
        assert isinstance(model.blocks, torch.nn.ModuleList)
        x = torch.rand(2, 1, 8, 8)
        h = model.features(x)
        assert model(x).shape == (2, 3) and h.shape[0] == 2
    assert all(isinstance(b, PathBlock) for b in zoo.blocks)
    assert not any(isinstance(b, PathBlock) for b in partial.blocks)
    assert not isinstance(torch.nn.Linear(2, 2), BlockModel)


def test_init_from_data_refuses_what_cannot_set_a_scale():
    from equilib.degree.model import PartialGCNN
    from equilib.models import init_from_data

    torch.manual_seed(0)
    m = build("conv", in_shape=(1, 8, 8), n_classes=4, width=4)
    before = [p.detach().clone() for p in m.parameters()]
    with pytest.raises(ValueError, match="constant on x.*blank"):
        init_from_data(m, torch.zeros(8, 1, 8, 8))
    x = torch.rand(8, 1, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        init_from_data(m, x)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        init_from_data(m, torch.rand(8, 64))
    # nothing was scaled before the refusal
    for p, q in zip(before, m.parameters()):
        assert torch.equal(p, q.detach())
    with pytest.raises(TypeError, match="built by equilib.models.build"):
        init_from_data(PartialGCNN(), torch.rand(2, 1, 16, 16))
