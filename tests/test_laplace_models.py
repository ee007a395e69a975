"""Laplace on every model of the zoo and on equilib's own primitives, against dense oracles."""

import pytest
import torch
from oracles import DT, dense_ggn, dense_log_marglik, exact_blocks, images, tiny, trainable
from torch import nn

from equilib.laplace import DiagLaplace, FullLaplace, KronLaplace
from equilib.laplace.curvature import Recorder
from equilib.models import MODEL_NAMES, build
from equilib.nn import BasisConv2d, FactoredLinear, GroupedLinear, SparseFactoredLinear


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_full_and_diag_match_dense_ggn_on_every_model(name):
    model = tiny(name)
    X, y = images()
    loader = [(X[:4], y[:4]), (X[4:], y[4:])]
    H = dense_ggn(model, X, y, "classification")
    full = FullLaplace(model, prior_precision=0.5).fit(loader)
    torch.testing.assert_close(full.H, H, atol=1e-10, rtol=1e-8)
    expected = dense_log_marglik(model, X, y, "classification", 0.5, H=H)
    assert abs(full.log_marginal_likelihood().item() - expected.item()) < 1e-6
    diag = DiagLaplace(model).fit(loader)
    torch.testing.assert_close(diag.H, torch.diagonal(H), atol=1e-10, rtol=1e-8)
    kron = KronLaplace(model).fit(loader)
    assert torch.isfinite(kron.log_marginal_likelihood())
    # Kron and the dense GGN carry the same curvature on the head
    blocks = exact_blocks(model, H)
    torch.testing.assert_close(kron.ggn_block("head.2.bias"), blocks["head.2.bias"])


@pytest.mark.parametrize("name", ["conv", "f-fc+conv", "gconv-c4"])
def test_full_laplace_matches_dense_ggn_with_max_pooling_striding(name):
    """Blocks that stride by max pooling: the curvature follows the pooled path exactly."""
    torch.manual_seed(0)
    model = build(name, in_shape=(1, 8, 8), n_classes=3, width=2, hidden=4, striding="max").to(DT)
    X, y = images()
    H = dense_ggn(model, X, y, "classification")
    full = FullLaplace(model, prior_precision=0.5).fit([(X[:4], y[:4]), (X[4:], y[4:])])
    torch.testing.assert_close(full.H, H, atol=1e-10, rtol=1e-8)
    kron = KronLaplace(model).fit([(X, y)])
    blocks = exact_blocks(model, H)
    torch.testing.assert_close(kron.ggn_block("head.2.bias"), blocks["head.2.bias"])


def test_grouped_linear_kfac_is_exact_for_one_example():
    """One example: every group's block B_g (x) A_g equals the exact GGN block (basis or not)."""
    torch.manual_seed(0)
    basis = torch.randn(3, 5, dtype=DT)
    model = nn.Sequential(
        GroupedLinear(4, 5, 6, basis=basis), nn.Tanh(), GroupedLinear(4, 6, 2)
    ).to(DT)
    model.append(nn.Flatten())
    X = torch.randn(1, 4, 5, dtype=DT)
    y = torch.tensor([3])
    la = KronLaplace(model).fit([(X, y)])
    blocks = exact_blocks(model, dense_ggn(model, X, y, "classification"))
    for name, p in trainable(model):
        n = p[0].numel()  # one group's slice; KFAC keeps the blocks within a group
        approx, exact = la.ggn_block(name), blocks[name]
        for g in range(p.shape[0]):
            sl = slice(g * n, (g + 1) * n)
            torch.testing.assert_close(approx[sl, sl], exact[sl, sl], atol=1e-10, rtol=1e-8)
    # the factor of u is Psi A Psi^T
    A = la.factors["0.weight"][0]
    x = X[0]  # (G, in)
    Psi = model[0].basis  # as stored by the layer (float32 precision)
    expected = torch.einsum("mi,gi,gj,nj->gmn", Psi, x, x, Psi)
    torch.testing.assert_close(A, expected)


def test_factored_linear_both_factors_have_kron_blocks():
    torch.manual_seed(1)
    for layer in (
        FactoredLinear((2, 4, 4), (3, 2, 2)),
        SparseFactoredLinear((2, 4, 4), (3, 2, 2), anchors_in=(2, 2), anchors_out=(1, 2)),
    ):
        model = nn.Sequential(layer, nn.Flatten(), nn.Tanh(), nn.Linear(12, 3)).to(DT)
        X, y = torch.randn(1, 2, 4, 4, dtype=DT), torch.tensor([1])
        la = KronLaplace(model).fit([(X, y)])
        assert set(la.param_names) == {"0.u.weight", "0.v.weight", "0.v.bias", "3.weight", "3.bias"}
        blocks = exact_blocks(model, dense_ggn(model, X, y, "classification"))
        # one example: within every group of u and of v the Kronecker block is exact
        for name in ("0.u.weight", "0.v.weight", "0.v.bias"):
            p = dict(model.named_parameters())[name]
            n = p[0].numel()
            approx, exact = la.ggn_block(name), blocks[name]
            for g in range(p.shape[0]):
                sl = slice(g * n, (g + 1) * n)
                torch.testing.assert_close(approx[sl, sl], exact[sl, sl])


@pytest.mark.parametrize("stride", [1, 2])
def test_basis_conv_kfac_factor_is_projected_patch_factor(stride):
    """BasisConv2d: A_u = Psi A_W Psi^T per channel pair, with A_W the Conv2d patch factor
    (stride 1: both from the input's autocorrelation; stride 2: from rows)."""
    from equilib.laplace.curvature import conv_patches
    from equilib.laplace.kfac import torus_conv

    torch.manual_seed(2)
    basis = torch.randn(4, 9, dtype=DT)
    bconv = BasisConv2d(2, 3, 3, basis, stride=stride).to(DT)
    conv = nn.Conv2d(2, 3, 3, stride=stride, padding=1, padding_mode="circular").to(DT)
    assert torus_conv(bconv) == torus_conv(conv) == (stride == 1)
    with torch.no_grad():
        conv.weight.copy_(bconv.effective_weight())
        conv.bias.copy_(bconv.bias)
    X, y = torch.randn(5, 2, 6, 6, dtype=DT), torch.randint(0, 3, (5,))
    head = nn.Sequential(nn.Flatten(), nn.Linear(3 * (6 // stride) ** 2, 3)).to(DT)
    la_b = KronLaplace(nn.Sequential(bconv, head)).fit([(X[:2], y[:2]), (X[2:], y[2:])])
    la_c = KronLaplace(nn.Sequential(conv, head)).fit([(X, y)])
    A_b, B_b = la_b.factors["0.weight"]
    A_c, B_c = la_c.factors["0.weight"]
    P = conv_patches(X, (3, 3), (stride, stride), (1, 1), "circular")  # (B, C*k*k, L)
    torch.testing.assert_close(A_c[0], torch.einsum("bdl,bel->de", P, P) / (5 * P.shape[2]))
    P = torch.block_diag(bconv.basis, bconv.basis)  # (C*M, C*k*k)
    torch.testing.assert_close(A_b[0], P @ A_c[0] @ P.T)
    torch.testing.assert_close(B_b, B_c)
    # and the dense GGN of the basis conv is the projection of the conv's GGN
    Hb = dense_ggn(nn.Sequential(bconv, head), X, y, "classification")
    full = FullLaplace(nn.Sequential(bconv, head)).fit([(X[:2], y[:2]), (X[2:], y[2:])])
    torch.testing.assert_close(full.H, Hb)


def test_lifting_conv_stacked_copies_are_rows_of_one_example():
    """C4 lifting conv (inner Conv2d on 4 stacked copies): per-example GGN stays exact."""
    model = tiny("gconv-c4")
    X, y = images(n=3)
    H = dense_ggn(model, X, y, "classification")
    full = FullLaplace(model).fit([(X[:2], y[:2]), (X[2:], y[2:])])
    torch.testing.assert_close(full.H, H)
    kron = KronLaplace(model).fit([(X, y)])
    rows = kron._kron.rows
    conv_layer = [
        i for i, layer in enumerate(kron.layers) if layer.name.endswith("paths.gconv.conv")
    ]
    assert rows[conv_layer[0]] == 3 * 4 * 8 * 8  # examples x copies x locations


@pytest.mark.parametrize("cls", [KronLaplace, DiagLaplace])
def test_bottleneck_keeps_curvature_blocks_exact(cls):
    """Pushing min(D, K) columns past the narrow head input gives the same blocks as K columns."""
    torch.manual_seed(0)
    model = build("f-fc+conv", in_shape=(1, 8, 8), n_classes=7, width=3, hidden=5).to(DT)
    X, y = images(n=5, c=7)
    fast = cls(model, bottleneck="auto").fit([(X, y)])
    plain = cls(model, bottleneck=None).fit([(X, y)])
    assert fast.backend.cut == "head" and plain.backend.cut is None
    if cls is KronLaplace:
        for name in plain.param_names:
            for a, b in zip(fast.factors[name], plain.factors[name]):
                if a is not None:
                    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
    else:
        torch.testing.assert_close(fast.H, plain.H, atol=1e-10, rtol=1e-8)
    diff = fast.log_marginal_likelihood() - plain.log_marginal_likelihood()
    assert abs(diff.item()) < 1e-8


def test_bottleneck_is_not_used_when_the_input_is_wide():
    torch.manual_seed(0)  # head input of width 2, 5 classes: 4 columns of the output Hessian
    model = build("conv", in_shape=(1, 8, 8), n_classes=5, width=2, hidden=4).to(DT)
    X, y = images(n=4, c=5)
    la = KronLaplace(model).fit([(X, y)])
    assert la.backend.cut == "head"
    la = KronLaplace(model, hessian="mc").fit([(X, y)])  # one column: nothing to gain
    assert la.backend.cut == ""
    wide = tiny("conv")  # width 2, 3 classes: 2 columns, no narrower than the head input
    assert KronLaplace(wide).fit([images(n=4)]).backend.cut == ""
    with pytest.raises(ValueError, match="bottleneck"):
        KronLaplace(model, bottleneck="nonexistent")


def test_interpolated_rotation_convs_match_dense_ggn():
    """LiftingConvCN / GroupConvCN (weights shared over N interpolated rotations)."""
    from equilib.nn import GroupConvCN, GroupPool, LiftingConvCN

    torch.manual_seed(3)
    model = nn.Sequential(
        LiftingConvCN(1, 2, 3, N=3),
        nn.Tanh(),
        GroupConvCN(2, 2, 3, N=3, padding_mode="zeros"),
        GroupPool("mean"),
        nn.Flatten(),
        nn.Linear(2 * 5 * 5, 3),
    ).to(DT)
    X, y = torch.randn(4, 1, 5, 5, dtype=DT), torch.randint(0, 3, (4,))
    H = dense_ggn(model, X, y, "classification")
    full = FullLaplace(model).fit([(X[:2], y[:2]), (X[2:], y[2:])])
    torch.testing.assert_close(full.H, H, atol=1e-10, rtol=1e-8)
    kron = KronLaplace(model).fit([(X, y)])
    blocks = exact_blocks(model, H)
    for name in ("0.weight", "2.weight"):
        ratio = kron.ggn_block(name).trace() / blocks[name].trace()
        assert 0.5 < ratio < 2.0


@pytest.mark.parametrize(
    "B,C,H,W,kh,kw",
    [
        (3, 2, 5, 6, 3, 3),
        (2, 3, 7, 7, 5, 5),
        (2, 3, 4, 6, 3, 5),
        (2, 2, 2, 3, 5, 5),
        (1, 2, 5, 5, 1, 1),
    ],
)
def test_torus_patch_gram_equals_the_gram_of_the_unfolded_patches(B, C, H, W, kh, kw):
    from equilib.laplace.curvature import conv_patches
    from equilib.laplace.kfac import torus_patch_gram

    x = torch.randn(B, C, H, W, dtype=DT, generator=torch.Generator().manual_seed(B + H))
    P = conv_patches(x, (kh, kw), (1, 1), (kh // 2, kw // 2), "circular")  # (B, D, L)
    torch.testing.assert_close(
        torus_patch_gram(x, (kh, kw)), torch.einsum("bdl,bel->de", P, P), atol=1e-11, rtol=1e-12
    )


def test_kron_input_factors_of_torus_and_other_convs_are_patch_grams():
    """Circular stride-1 convs take the autocorrelation path, the others the rows; both give
    the mean of p p^T over every location of every example (KFAC-expand)."""
    from equilib.laplace.curvature import conv_patches
    from equilib.laplace.kfac import torus_conv
    from equilib.nn import conv2d

    torch.manual_seed(1)
    convs = [
        conv2d(1, 3, 3),
        nn.Conv2d(3, 2, 5, padding=2, padding_mode="circular"),
        nn.Conv2d(2, 2, 3, stride=2, padding=1, padding_mode="circular"),
        nn.Conv2d(2, 2, 3, padding=1),
    ]
    assert [torus_conv(c) for c in convs] == [True, True, False, False]
    model = nn.Sequential(
        convs[0],
        nn.Tanh(),
        convs[1],
        nn.Tanh(),
        convs[2],
        nn.Tanh(),
        convs[3],
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    ).to(DT)
    X, y = images(n=5)
    seen = {}

    def keep(k):
        def hook(module, inputs, output):
            seen[k] = inputs[0].detach()

        return hook

    hooks = [c.register_forward_hook(keep(k)) for k, c in enumerate(convs)]
    model(X)
    for h in hooks:
        h.remove()
    la = KronLaplace(model).fit([(X[:3], y[:3]), (X[3:], y[3:])])
    for k, conv in enumerate(convs):
        P = conv_patches(seen[k], conv.kernel_size, conv.stride, conv.padding, conv.padding_mode)
        expected = torch.einsum("bdl,bel->de", P, P) / (P.shape[0] * P.shape[2])
        A, _ = la.factors[f"{2 * k}.weight"]
        torch.testing.assert_close(A[0], expected, atol=1e-12, rtol=1e-10)


_STRIDED_OUTPUTS = Recorder.strided_outputs


def _kron_with_and_without_strided(model, batches, monkeypatch):
    """KronLaplace with and without the strided stand-ins agree; returns how many stand-ins
    each batch used."""
    found = []

    def strided_outputs(self, f):
        proxies = _STRIDED_OUTPUTS(self, f)
        found.append(len(proxies))
        return proxies

    monkeypatch.setattr(Recorder, "strided_outputs", strided_outputs)
    monkeypatch.setattr(KronLaplace, "_strided", True)
    fast = KronLaplace(model).fit(batches)
    monkeypatch.setattr(KronLaplace, "_strided", False)
    plain = KronLaplace(model).fit(batches)
    for name in plain.param_names:
        for a, b in zip(fast.factors[name], plain.factors[name]):
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    diff = fast.log_marginal_likelihood() - plain.log_marginal_likelihood()
    assert abs(diff.item()) < 1e-9
    return found


@pytest.mark.parametrize("name", ["conv", "f-fc+conv", "s-fc+s-conv"])
def test_kron_output_factor_from_the_downsampled_gradient(name, monkeypatch):
    """A conv output that reaches the loss only through polyphase striding: its output factor
    comes from the gradient of the strided tensor, and equals the full-size computation."""
    torch.manual_seed(0)
    model = build(name, in_shape=(1, 8, 8), n_classes=7, width=3, hidden=5).to(DT)
    X, y = images(n=5, c=7)
    found = _kron_with_and_without_strided(model, [(X[:3], y[:3]), (X[3:], y[3:])], monkeypatch)
    assert found == [2, 2]  # the stride-2 blocks 0 and 1, in both batches


def test_kron_strided_output_used_twice_keeps_the_full_gradient(monkeypatch):
    """The conv output also feeds a second branch: its gradient is not a scattered copy of the
    strided one, and the full-size gradient is used."""
    from equilib.nn import PolyphaseDownsample

    class TwoBranches(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3, padding=1, padding_mode="circular")
            self.down = PolyphaseDownsample(2)
            self.head = nn.Linear(3 * 4 * 4 + 3, 4)

        def forward(self, x):
            h = self.conv(x)
            return self.head(torch.cat([torch.tanh(self.down(h)).flatten(1), h.mean((2, 3))], 1))

    torch.manual_seed(2)
    model = TwoBranches().to(DT)
    X, y = images(n=4, c=4)
    assert _kron_with_and_without_strided(model, [(X, y)], monkeypatch) == [0]
    model.forward = lambda x: model.head(
        torch.cat([torch.tanh(model.down(model.conv(x))).flatten(1), x.new_zeros(x.shape[0], 3)], 1)
    )
    assert _kron_with_and_without_strided(model, [(X, y)], monkeypatch) == [1]


def test_a_new_layer_type_is_one_registry_entry():
    """Registering one ``Primitive`` (its input and output rows) is all a new layer type
    needs: the dense GGN, its diagonal and the KFAC blocks follow."""
    from equilib.laplace.curvature import PRIMITIVES, Primitive, register_primitive

    class Scaled(nn.Module):
        """y = x (s W)^T + b: a Linear whose weight is scaled by a fixed s."""

        def __init__(self, d_in, d_out, s):
            super().__init__()
            self.s = s
            self.weight = nn.Parameter(torch.randn(d_out, d_in) / d_in**0.5)
            self.bias = nn.Parameter(torch.randn(d_out))

        def forward(self, x):
            return nn.functional.linear(x, self.s * self.weight, self.bias)

    entry = Primitive(
        "scaled-linear",
        (Scaled,),
        input_rows=lambda m, x: m.s * x.reshape(x.shape[0], -1, 1, x.shape[-1]),
        output_rows=lambda m, g: g.reshape(*g.shape[:2], -1, 1, g.shape[-1]),
        description="Scaled",
    )
    torch.manual_seed(0)
    model = nn.Sequential(Scaled(6, 5, 3.0), nn.Tanh(), nn.Linear(5, 3)).to(DT)
    X, y = torch.randn(5, 6, dtype=DT), torch.randint(0, 3, (5,))
    with pytest.raises(ValueError, match="not supported by the Laplace curvature"):
        FullLaplace(model)
    register_primitive(entry)
    try:
        H = dense_ggn(model, X, y, "classification")
        full = FullLaplace(model).fit([(X[:2], y[:2]), (X[2:], y[2:])])
        torch.testing.assert_close(full.H, H, atol=1e-12, rtol=1e-10)
        diag = DiagLaplace(model).fit([(X, y)])
        torch.testing.assert_close(diag.H, torch.diagonal(H), atol=1e-12, rtol=1e-10)
        one = KronLaplace(model).fit([(X[:1], y[:1])])
        block = exact_blocks(model, dense_ggn(model, X[:1], y[:1], "classification"))
        torch.testing.assert_close(one.ggn_block("0.weight"), block["0.weight"])
        with pytest.raises(ValueError, match="already registered"):
            register_primitive(entry)
    finally:
        PRIMITIVES.remove(entry)
