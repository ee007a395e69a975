"""Tests of equilib.measure: resampling, Lie derivatives (jvp vs finite differences), attribution."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from equilib import groups, measure

torch.manual_seed(0)


def smooth_images(B=3, C=2, H=12, dtype=torch.float64, seed=0):
    """Blobs that vanish at the border, so rotations lose nothing at the corners."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.arange(H, dtype=dtype), torch.arange(H, dtype=dtype), indexing="ij"
    )
    out = torch.zeros(B, C, H, H, dtype=dtype)
    for b in range(B):
        for c in range(C):
            for _ in range(3):
                cy, cx = (torch.rand(2, generator=g, dtype=dtype) * (H / 2) + H / 4).tolist()
                s = 1.0 + torch.rand(1, generator=g, dtype=dtype).item()
                out[b, c] += torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return out


# --------------------------------------------------------------------------- resampling


def cubic(x, angle):
    return groups.rotate(x, angle, mode="cubic")


def test_one_rotate_in_the_library():
    """measure turns images with equilib.groups.rotate; it has no rotation of its own."""
    assert not hasattr(measure, "rotate") or measure.rotate is groups.rotate
    assert measure.cubic_kernel is groups.cubic_kernel
    x = smooth_images(H=12)
    assert torch.equal(measure.act(x, 0.3, "rotation"), cubic(x, 0.3))


def test_cubic_rotate_identity_and_quarter_turn():
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    assert torch.allclose(cubic(x, 0.0), x, atol=1e-12)
    for k in range(1, 4):
        assert torch.allclose(
            cubic(x, k * math.pi / 2), torch.rot90(x, k, dims=(-2, -1)), atol=1e-9
        )
    assert torch.allclose(cubic(x[0, 0], 0.5), cubic(x[:1, :1], 0.5)[0, 0], atol=1e-12)


def test_cubic_rotate_agrees_with_bilinear_rotation():
    x = smooth_images(H=24)
    ours = cubic(x, 0.4)
    ref = groups.rotate(x, 0.4)
    assert (ours - ref).norm() / ref.norm() < 0.06  # cubic vs bilinear: same turn, less blur
    wrong = groups.rotate(x, -0.4)
    assert (ours - wrong).norm() / wrong.norm() > 0.5
    # and a per-image angle matches the scalar angle image by image
    angles = torch.tensor([0.1, -0.7, 2.0], dtype=x.dtype)
    batch = cubic(x, angles)
    for b in range(3):
        assert torch.allclose(batch[b], cubic(x[b : b + 1], angles[b])[0], atol=1e-12)


def test_cubic_rotate_has_a_forward_mode_derivative():
    x = smooth_images(H=12)
    t0 = torch.tensor(0.2, dtype=x.dtype)
    _, d = torch.func.jvp(lambda t: cubic(x, t), (t0,), (torch.ones_like(t0),))
    fd = (cubic(x, 0.2 + 1e-5) - cubic(x, 0.2 - 1e-5)) / 2e-5
    assert torch.allclose(d, fd, atol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        groups.rotate(x, 0.2, mode="bicubic")


def test_translate_integer_shift_is_roll_and_half_shifts_compose_smoothly():
    x = torch.randn(2, 3, 8, 10, dtype=torch.float64)
    assert torch.allclose(
        measure.translate(x, 2.0, -3.0), torch.roll(x, (2, -3), (-2, -1)), atol=1e-12
    )
    s = smooth_images(H=16)
    half = measure.translate(measure.translate(s, 0.5, 0.0), 0.5, 0.0)
    assert float((half - torch.roll(s, 1, -2)).norm() / s.norm()) < 0.05


def test_group_axis_action_matches_regular_representation_at_quarter_turns():
    x = torch.randn(2, 3, 4, 7, 7, dtype=torch.float64)
    ours = measure.act(x, math.pi / 2, "rotation")
    ref = groups.Rotations(4).act_fmap(1, x)
    assert torch.allclose(ours, ref, atol=1e-9)


# --------------------------------------------------------------------------- models


class C4GCNN(nn.Module):
    """Lifting conv + one group conv + max over the group + spatial mean: C4-invariant."""

    def __init__(self, c=4, k=3):
        super().__init__()
        self.lift = nn.Parameter(torch.randn(c, 1, k, k) / k)
        self.w = nn.Parameter(torch.randn(c, c, 4, k, k) / (k * 2 * math.sqrt(c)))
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        h = torch.stack(
            [F.conv2d(x, torch.rot90(self.lift, r, (-2, -1)), padding=1) for r in range(4)], 2
        ).relu()  # (B, c, 4, H, W)
        outs = []
        for r in range(4):
            w = torch.roll(self.w, r, dims=2)  # w[:, :, (h - r) % 4]
            w = torch.rot90(w, r, (-2, -1)).flatten(1, 2)
            outs.append(F.conv2d(h.flatten(1, 2), w, padding=1))
        h = torch.stack(outs, 2).relu()
        return self.head(h.amax(2).mean((-2, -1)))


def circular_net(nonlinear=True, c=4):
    act = nn.ReLU() if nonlinear else nn.Identity()
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1, padding_mode="circular"),
        act,
        nn.Conv2d(c, c, 3, padding=1, padding_mode="circular"),
        act,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, 5),
    )


def fc_path_net(H, c=4):
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c * H * H, 5),
    )


def test_exact_c4_gcnn_zero_discrete_error_nonzero_continuous():
    torch.manual_seed(1)
    model = C4GCNN().double()
    x = smooth_images(B=4, C=1, H=12)
    errs = measure.group_errors(model, x, {"C4": groups.Rotations(4)})
    assert errs["C4"] < 1e-10
    lie = measure.lie_derivative_norm(model, x, "rotation")
    assert lie > 1e-4  # not invariant to small rotations (grid + ReLU aliasing)
    # ... but much closer to it than a net with no rotation structure at all
    plain = fc_path_net(12).double()
    assert lie < 0.5 * measure.lie_derivative_norm(plain, x, "rotation")


def test_circular_conv_net_translation_lie_derivative():
    torch.manual_seed(2)
    x = smooth_images(B=4, C=1, H=10)
    linear = circular_net(nonlinear=False).double()
    assert measure.lie_derivative_norm(linear, x, "translation") < 1e-10
    relu = circular_net().double()
    fc = fc_path_net(10).double()
    conv_lie = measure.lie_derivative_norm(relu, x, "translation")
    fc_lie = measure.lie_derivative_norm(fc, x, "translation")
    assert conv_lie < 0.1 * fc_lie
    assert fc_lie > 1e-2


@pytest.mark.parametrize("transform", measure.TRANSFORMS)
def test_jvp_agrees_with_finite_differences(transform):
    torch.manual_seed(3)
    model = fc_path_net(10).double()
    x = smooth_images(B=2, C=1, H=10)
    d_jvp = measure.lie_derivative(model, x, transform)
    d_fd = measure.lie_derivative(model, x, transform, method="fd", eps=1e-5)
    assert d_jvp.shape == (2, 5)
    assert (d_jvp - d_fd).norm() / d_jvp.norm() < 1e-3


def test_float32_feature_maps_with_a_group_axis_under_jvp():
    x = torch.randn(2, 3, 4, 6, 6)
    for tr in measure.TRANSFORMS:
        d = torch.func.jvp(
            lambda t, tr=tr: measure.act(x, t, tr), (torch.zeros(()),), (torch.ones(()),)
        )[1]
        assert d.dtype == torch.float32 and d.shape == x.shape and torch.isfinite(d).all()


def test_feature_map_output_action_is_undone():
    torch.manual_seed(4)
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular").double()
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    for tr in ("translation_x", "translation_y"):
        d = measure.lie_derivative(conv, x, tr, out_action="same")
        assert d.shape == (2, 3, 9, 9)
        assert d.norm() / conv(x).norm() < 1e-10
    # without undoing the output action the derivative is the generator applied to conv(x)
    d = measure.lie_derivative(conv, x, "translation_x", out_action="invariant")
    y = conv(x)
    central = (torch.roll(y, 1, -1) - torch.roll(y, -1, -1)) / 2  # d/dt y(j - t) = -y'(j)
    assert torch.allclose(d, central, atol=1e-9)


def test_layer_terms_sum_to_total():
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.Conv2d(3, 3, 3, padding=1, stride=2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(3 * 6 * 6, 4),
    ).double()
    x = smooth_images(B=3, C=1, H=12)
    for tr in ("rotation", "translation_x"):
        att = measure.layer_lie_derivatives(model, x, tr, layers=["0", "1", "2", "3", "4", "5"])
        assert att.total.shape == (3, 4)
        assert float(att.residual.norm() / att.total.norm()) < 1e-8
        norms = att.norms()
        assert set(norms) == {"0", "1", "2", "3", "4", "5"}
        # pointwise non-linearities do not commute with sub-pixel transforms (aliasing)
        assert norms["1"] > 1e-4 and norms["3"] > 1e-4
        if tr == "translation_x":  # a circular conv commutes with every cyclic shift
            assert norms["0"] < 1e-10
        assert norms["5"] == 0.0  # a Linear on flat vectors: the action is trivial on both sides
        assert norms["4"] > 1e-3  # flattening a feature map forgets where things were
        assert abs(att.total_norm() - measure.lie_derivative_norm(model, x, tr)) < 1e-10
        # a layer left out shows up as the residual: exactly its own term
        part = measure.layer_lie_derivatives(model, x, tr, layers=["0", "1", "2", "3", "5"])
        assert torch.allclose(part.residual, att.terms["4"], atol=1e-10)


def test_layer_terms_of_gcnn_blocks_use_the_group_axis():
    class Blocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = C4GCNN()
            self.blocks = nn.ModuleList([_Lift(self.inner), _Rest(self.inner)])
            self.head = nn.Identity()

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.head(x)

    torch.manual_seed(6)
    model = Blocks().double()
    x = smooth_images(B=2, C=1, H=12)
    att = measure.layer_lie_derivatives(model, x, "rotation")
    assert att.names == ["blocks.0", "blocks.1", "head"]
    assert att.residual.norm() / att.total.norm() < 1e-8
    assert att.norms()["head"] == 0.0


class _Lift(nn.Module):
    def __init__(self, g):
        super().__init__()
        self.g = [g]

    def forward(self, x):
        lift = self.g[0].lift
        return torch.stack(
            [F.conv2d(x, torch.rot90(lift, r, (-2, -1)), padding=1) for r in range(4)], 2
        ).relu()


class _Rest(nn.Module):
    def __init__(self, g):
        super().__init__()
        self.g = [g]

    def forward(self, h):
        m = self.g[0]
        outs = []
        for r in range(4):
            w = torch.rot90(torch.roll(m.w, r, dims=2), r, (-2, -1)).flatten(1, 2)
            outs.append(F.conv2d(h.flatten(1, 2), w, padding=1))
        return m.head(torch.stack(outs, 2).relu().amax(2).mean((-2, -1)))


def test_transform_error_curve_dips_at_quarter_turns_for_gcnn():
    torch.manual_seed(7)
    model = C4GCNN().double()
    x = smooth_images(B=2, C=1, H=12)
    curve = measure.transform_error_curve(model, x, "rotation", [0.0, math.pi / 4, math.pi / 2])
    assert curve[0] < 1e-12 and curve[2] < 1e-9 and curve[1] > 1e-4


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    model = circular_net().double()
    x = torch.randn(2, 1, 8, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match="square"):
        measure.lie_derivative(model, x, "rotation")
    with pytest.raises(ValueError, match="unknown transform"):
        measure.lie_derivative(model, x, "scaling")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        measure.lie_derivative(model, x[0], "translation_x")
    with pytest.raises(ValueError, match="too small"):
        measure.lie_derivative(model, torch.randn(1, 1, 2, 2, dtype=torch.float64), "translation_x")
    with pytest.raises(ValueError, match="method"):
        measure.lie_derivative(model, x, "translation_x", method="magic")


def test_attribution_without_layers_is_a_clear_error():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(x).mean((-2, -1))

    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="pass layers="):
        measure.layer_lie_derivatives(Plain(), x)
    with pytest.raises(ValueError, match="no module named"):
        measure.layer_lie_derivatives(Plain(), x, layers=["nope"])
    # a layer whose output the action cannot act on (3-D) is named in the error
    seq = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(2), nn.Linear(64, 3))
    with pytest.raises(ValueError, match="layer '1'"):
        measure.layer_lie_derivatives(seq, x, "translation_x")
    with pytest.raises(ValueError, match="non-empty dict"):
        measure.group_errors(seq, x, {})


# --------------------------------------------------------------------------- figures


def _fake_attribution(values: dict[str, float], total: float, residual: float):
    """A LayerAttribution with one-number terms of the given sizes (scale 1)."""
    terms = {k: torch.tensor([v]) for k, v in values.items()}
    total_t = torch.tensor([total])
    att = measure.LayerAttribution("rotation", list(values), terms, total_t, 1.0)
    assert abs(float(att.residual.norm()) - residual) < 1e-6
    return att


def test_attribution_bars_sit_above_their_own_layer_names():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from equilib.viz.measure import attribution_labels, attribution_table, draw_attribution

    # two models whose layers have different names and numbers (like the CNN and the partial
    # G-CNN of chapter 09): every bar must stand above the label of its own layer
    cnn = _fake_attribution({"blocks.0": 1.0, "blocks.1": 2.0, "head": 0.5}, 4.0, 0.5)
    pg = _fake_attribution(
        {
            "layers.lift": 3.0,
            "layers.gconv1": 4.0,
            "layers.gconv2": 5.0,
            "layers.gconv3": 6.0,
            "head": 7.0,
        },
        26.0,
        1.0,
    )
    results = {"cnn": cnn, "partial": pg}
    table = attribution_table(results)
    labels = attribution_labels(table)
    assert labels[-2:] == ["other", "total"]
    assert set(labels) == set(table["cnn"]) | set(table["partial"])
    fig = draw_attribution(results, "test")
    ax = fig.axes[0]
    ticks = {
        round(float(t), 6): lab.get_text() for t, lab in zip(ax.get_xticks(), ax.get_xticklabels())
    }
    assert sorted(ticks.values()) == sorted(labels)
    tick_x = sorted(ticks)
    for container, (model, row) in zip(ax.containers, table.items()):
        assert len(container.patches) == len(row)
        for bar, (layer, value) in zip(container.patches, row.items()):
            centre = bar.get_x() + bar.get_width() / 2
            nearest = min(tick_x, key=lambda t: abs(t - centre))
            assert ticks[nearest] == layer, (model, layer, ticks[nearest])
            assert abs(bar.get_height() - value) < 1e-6
    # the partial model's "total" has a bar, above the label "total"
    assert table["partial"]["total"] == 26.0
    plt.close(fig)
