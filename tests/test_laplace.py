"""Laplace evidence against exact oracles: dense torch.func GGN, closed-form linear evidence,
finite differences; and clear errors for bad input."""

import math

import pytest
import torch
from oracles import DT, dense_ggn, dense_jacobian, dense_log_marglik, exact_blocks, trainable
from torch import nn

from equilib.laplace import DiagLaplace, FullLaplace, KronLaplace, Laplace


# -------------------------------------------------------------------------------- models ----
def mlp(bias=True, d_in=6, h=7, c=3):
    return nn.Sequential(
        nn.Linear(d_in, h, bias=bias),
        nn.Tanh(),
        nn.Linear(h, h, bias=bias),
        nn.Tanh(),
        nn.Linear(h, c, bias=bias),
    ).to(DT)


def cnn(bias=True, c=4):
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, padding_mode="circular", bias=bias),
        nn.Tanh(),
        nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=bias),
        nn.Tanh(),
        nn.Conv2d(4, 2, 2, stride=1, padding=0, padding_mode="zeros", bias=bias),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, c, bias=bias),
    ).to(DT)


def data(kind, n=24, c=3, seed=0, regression=False):
    g = torch.Generator().manual_seed(seed)
    X = (
        torch.randn(n, 6, generator=g, dtype=DT)
        if kind == "mlp"
        else torch.randn(n, 1, 8, 8, generator=g, dtype=DT)
    )
    if regression:
        y = torch.randn(n, c, generator=g, dtype=DT)
    else:
        y = torch.randint(0, c, (n,), generator=g)
    return X, y


def batches(X, y, bs=10):
    return [(X[i : i + bs], y[i : i + bs]) for i in range(0, len(X), bs)]


def seeded(fn, *a, **k):
    torch.manual_seed(0)
    return fn(*a, **k)


CASES = [
    ("mlp", True, "classification"),
    ("mlp", False, "classification"),
    ("mlp", True, "regression"),
    ("cnn", True, "classification"),
    ("cnn", False, "regression"),
]


def make_case(kind, bias, lik):
    c = 3
    model = seeded(mlp, bias, c=c) if kind == "mlp" else seeded(cnn, bias, c=c)
    X, y = data(kind, c=c, regression=lik == "regression")
    return model, X, y


# ------------------------------------------------------------------------- Full and Diag ----
@pytest.mark.parametrize("kind,bias,lik", CASES)
def test_full_laplace_matches_dense_formula(kind, bias, lik):
    model, X, y = make_case(kind, bias, lik)
    n_t = len(trainable(model))
    delta = torch.linspace(0.3, 2.0, n_t, dtype=DT)
    sigma = 0.7 if lik == "regression" else 1.0
    la = FullLaplace(model, lik, prior_precision=delta, sigma_noise=sigma, temperature=1.3)
    la.fit(batches(X, y))
    H = dense_ggn(model, X, y, lik)
    assert H.shape[0] >= 100
    torch.testing.assert_close(la.H, H, atol=1e-9, rtol=1e-9)
    expected = dense_log_marglik(model, X, y, lik, delta, sigma, 1.3, H=H)
    assert abs(la.log_marginal_likelihood().item() - expected.item()) < 1e-6


@pytest.mark.parametrize("kind,bias,lik", CASES)
def test_diag_laplace_uses_exact_diagonal(kind, bias, lik):
    model, X, y = make_case(kind, bias, lik)
    la = DiagLaplace(model, lik, prior_precision=0.8).fit(batches(X, y))
    H = dense_ggn(model, X, y, lik)
    torch.testing.assert_close(la.H, torch.diagonal(H), atol=1e-10, rtol=1e-9)
    expected = dense_log_marglik(model, X, y, lik, 0.8, H=torch.diag(torch.diagonal(H)))
    assert abs(la.log_marginal_likelihood().item() - expected.item()) < 1e-6


# ---------------------------------------------------------------------------------- Kron ----
@pytest.mark.parametrize("lik", ["classification", "regression"])
def test_kron_blocks_exact_for_one_example_linear_layers(lik):
    model = seeded(mlp, True)
    X, y = data("mlp", n=1, regression=lik == "regression")
    la = KronLaplace(model, lik).fit([(X, y)])
    blocks = exact_blocks(model, dense_ggn(model, X, y, lik))
    for name in la.param_names:
        torch.testing.assert_close(la.ggn_block(name), blocks[name], atol=1e-10, rtol=1e-8)


def test_kron_single_linear_layer_block_is_exact_for_one_example():
    model = seeded(nn.Linear, 5, 4).to(DT)
    X, y = data("mlp", n=1, c=4)
    X = X[:, :5]
    la = KronLaplace(model, "classification").fit([(X, y)])
    blocks = exact_blocks(model, dense_ggn(model, X, y, "classification"))
    torch.testing.assert_close(la.ggn_block("weight"), blocks["weight"], atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(la.ggn_block("bias"), blocks["bias"], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("kind,bias,lik", CASES)
def test_kron_blocks_close_to_exact_elsewhere(kind, bias, lik):
    """Many examples: Linear blocks stay close; conv weight blocks keep the total curvature.

    (Conv biases are skipped: KFAC-expand sums g g^T over locations instead of squaring the sum.)
    """
    model, X, y = make_case(kind, bias, lik)
    la = KronLaplace(model, lik).fit(batches(X, y))
    blocks = exact_blocks(model, dense_ggn(model, X, y, lik))
    kinds = {n: type(m).__name__ for n, m in model.named_modules()}
    for name in la.param_names:
        approx, exact = la.ggn_block(name), blocks[name]
        rel = ((approx - exact).norm() / exact.norm()).item()
        ratio = (approx.trace() / exact.trace()).item()
        if kinds[name.rsplit(".", 1)[0]] == "Linear":
            assert rel < 0.5 and 0.8 < ratio < 1.25, (name, rel, ratio)
        elif name.endswith("weight"):
            assert rel < 0.9 and 0.8 < ratio < 1.25, (name, rel, ratio)


@pytest.mark.parametrize("kind,bias,lik", CASES)
def test_kron_log_det_equals_dense_log_det_of_kron_blocks(kind, bias, lik):
    """The eigenvalue formula equals log det of the dense block-diagonal Kron precision."""
    model, X, y = make_case(kind, bias, lik)
    n_t = len(trainable(model))
    delta = torch.linspace(0.5, 3.0, n_t, dtype=DT)
    sigma = 0.6 if lik == "regression" else 1.0
    la = KronLaplace(model, lik, prior_precision=delta, sigma_noise=sigma).fit(batches(X, y))
    Hk = torch.block_diag(*[la.ggn_block(n) for n in la.param_names])
    expected = dense_log_marglik(model, X, y, lik, delta, sigma, H=Hk)
    assert abs(la.log_marginal_likelihood().item() - expected.item()) < 1e-6


def test_kron_zero_eigenvalues_are_counted_exactly():
    """More inputs than examples: A is singular, its zero eigenvalues are only counted, and the
    evidence and effective dimensions still equal the dense ones of the Kron precision."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)
    X = torch.zeros(4, 12, dtype=DT)
    X[:, :6] = torch.randn(4, 6, dtype=DT)  # rank 4 inputs, 6 of them never nonzero
    y = torch.tensor([0, 1, 2, 1])
    delta = torch.tensor([0.7, 1.3, 2.0, 0.4], dtype=DT)
    la = KronLaplace(model, "classification", prior_precision=delta).fit(batches(X, y))
    assert la._n_zero[0] >= 5 * (12 - 4)  # the first weight's products with A's null space
    Hk = torch.block_diag(*[la.ggn_block(n) for n in la.param_names])
    expected = dense_log_marglik(model, X, y, "classification", delta, H=Hk)
    assert abs(la.log_marginal_likelihood().item() - expected.item()) < 1e-8
    sizes = [p.numel() for _, p in trainable(model)]
    d = torch.cat([dl.expand(n) for dl, n in zip(delta, sizes)])
    sigma_post = torch.linalg.inv(Hk + torch.diag(d))
    gamma = torch.stack([v.sum() for v in (1 - d * sigma_post.diagonal()).split(sizes)])
    torch.testing.assert_close(la.effective_dimensions(), gamma)


def test_kron_evidence_close_to_full():
    model, X, y = make_case("mlp", True, "classification")
    full = FullLaplace(model, "classification").fit(batches(X, y)).log_marginal_likelihood()
    kron = KronLaplace(model, "classification").fit(batches(X, y)).log_marginal_likelihood()
    assert abs(kron - full) / abs(full) < 0.2


def test_laplace_factory_and_float32_model():
    model = seeded(mlp).float()
    X, y = data("mlp")
    la = Laplace(model, "classification", hessian_structure="kron").fit(batches(X.float(), y))
    lml = la.log_marginal_likelihood()
    assert lml.dtype == torch.float64 and torch.isfinite(lml)
    with pytest.raises(ValueError, match="hessian_structure"):
        Laplace(model, "classification", hessian_structure="lowrank")


@pytest.mark.parametrize("cls", [FullLaplace, DiagLaplace, KronLaplace])
def test_laplace_torch_calls_cannot_set_the_wrong_hyperparameter(cls):
    """laplace-torch's ``KronLaplace(net, "regression", 0.5)`` sets sigma_noise; here every
    argument after the likelihood is keyword-only, so the ported call raises."""
    model = seeded(mlp)
    with pytest.raises(TypeError):
        cls(model, "regression", 0.5)
    with pytest.raises(TypeError):
        cls(model, "regression", 0.5, 2.0)
    la = cls(model, "regression", sigma_noise=0.5, prior_precision=2.0)
    assert float(la.sigma_noise) == 0.5 and float(la.prior_precision[0]) == 2.0


def test_laplace_factory_takes_laplace_torch_arguments():
    model = seeded(mlp)
    X, y = data("mlp", regression=True)
    la = Laplace(
        model, "regression", subset_of_weights="all", hessian_structure="diag", sigma_noise=0.5
    )
    assert isinstance(la, DiagLaplace) and float(la.sigma_noise) == 0.5
    assert isinstance(Laplace(model, "regression"), KronLaplace)
    with pytest.raises(ValueError, match="subset_of_weights must be 'all'"):
        Laplace(model, "regression", subset_of_weights="last_layer")
    with pytest.raises(TypeError):
        Laplace(model, "regression", "all", "kron")
    with pytest.raises(TypeError):
        Laplace(model, "regression", hessian_structure="kron", prior_precision=1.0, foo=1)


def test_optimize_prior_precision_uses_laplace_torch_method_names():
    model, X, y = make_case("mlp", True, "classification")
    la = KronLaplace(model, "classification").fit(batches(X, y))
    before = float(la.log_marginal_likelihood(1.0))
    delta = la.optimize_prior_precision(method="marglik", n_steps=50)
    assert delta.shape == (len(la.param_names),)
    assert float(la.log_marginal_likelihood()) > before
    with pytest.raises(ValueError, match="'marglik', 'mackay'"):
        la.optimize_prior_precision(method="gradient")
    with pytest.raises(TypeError):
        la.optimize_prior_precision("marglik")


# -------------------------------------------------------------- Bayesian linear regression ----
def blr_evidence(Phi, y, delta, sigma):
    """log N(y; 0, sigma^2 I + Phi Phi^T / delta) (closed form)."""
    N = Phi.shape[0]
    cov = sigma**2 * torch.eye(N, dtype=DT) + Phi @ Phi.T / delta
    return torch.distributions.MultivariateNormal(torch.zeros(N, dtype=DT), cov).log_prob(y)


@pytest.mark.parametrize(
    "cls,bias", [(FullLaplace, True), (KronLaplace, False), (KronLaplace, True)]
)
def test_linear_regression_evidence_is_closed_form(cls, bias):
    g = torch.Generator().manual_seed(1)
    N, D, delta, sigma = 30, 4, 0.7, 0.4
    X = torch.randn(N, D, generator=g, dtype=DT)
    if cls is KronLaplace and bias:
        X = X - X.mean(0)  # centred inputs: no weight-bias cross term, KFAC is exact
    y = (
        X @ torch.randn(D, generator=g, dtype=DT)
        + 0.3
        + sigma * torch.randn(N, generator=g, dtype=DT)
    )
    Phi = torch.cat([X, torch.ones(N, 1, dtype=DT)], 1) if bias else X
    P = Phi.T @ Phi / sigma**2 + delta * torch.eye(Phi.shape[1], dtype=DT)
    theta = torch.linalg.solve(P, Phi.T @ y / sigma**2)  # the posterior mode
    model = nn.Linear(D, 1, bias=bias).to(DT)
    with torch.no_grad():
        model.weight.copy_(theta[:D].reshape(1, D))
        if bias:
            model.bias.copy_(theta[D:])
    la = cls(model, "regression", prior_precision=delta, sigma_noise=sigma)
    la.fit(batches(X, y.unsqueeze(1), bs=7))
    expected = blr_evidence(Phi, y, delta, sigma)
    assert abs(la.log_marginal_likelihood().item() - expected.item()) < 1e-8


# ------------------------------------------------------------------- gradients and MacKay ----
@pytest.mark.parametrize("cls", [FullLaplace, DiagLaplace, KronLaplace])
def test_gradient_in_log_prior_precision_matches_finite_differences(cls):
    model, X, y = make_case("cnn", True, "classification")
    la = cls(model, "classification").fit(batches(X, y))
    n_t = len(la.param_names)
    log_delta = torch.linspace(-1.0, 1.5, n_t, dtype=DT).requires_grad_(True)
    lml = la.log_marginal_likelihood(log_delta.exp())
    (grad,) = torch.autograd.grad(lml, log_delta)
    eps = 1e-6
    for i in range(n_t):
        e = torch.zeros(n_t, dtype=DT)
        e[i] = eps
        fd = (
            la.log_marginal_likelihood((log_delta.detach() + e).exp())
            - la.log_marginal_likelihood((log_delta.detach() - e).exp())
        ) / (2 * eps)
        assert abs(fd.item() - grad[i].item()) < 1e-5 * max(1.0, abs(fd.item()))


@pytest.mark.parametrize("cls", [FullLaplace, KronLaplace])
def test_gradient_in_sigma_noise_matches_finite_differences(cls):
    model, X, y = make_case("mlp", True, "regression")
    la = cls(model, "regression").fit(batches(X, y))
    log_sigma = torch.tensor(-0.3, dtype=DT, requires_grad=True)
    lml = la.log_marginal_likelihood(0.9, log_sigma.exp())
    (grad,) = torch.autograd.grad(lml, log_sigma)
    eps = 1e-6
    fd = (
        la.log_marginal_likelihood(sigma_noise=math.exp(-0.3 + eps))
        - la.log_marginal_likelihood(sigma_noise=math.exp(-0.3 - eps))
    ) / (2 * eps)
    assert abs(fd.item() - grad.item()) < 1e-5 * max(1.0, abs(fd.item()))


@pytest.mark.parametrize("cls", [FullLaplace, DiagLaplace, KronLaplace])
def test_mackay_update_increases_evidence(cls):
    model, X, y = make_case("mlp", True, "classification")
    la = cls(model, "classification", prior_precision=1.0).fit(batches(X, y))
    before = la.log_marginal_likelihood().item()
    new = la.mackay_update()
    assert not torch.allclose(new, torch.ones_like(new))
    after = la.log_marginal_likelihood().item()
    assert after > before
    # gamma_l = n_l - delta_l tr_l(Sigma) lies in [0, n_l]
    gamma = la.effective_dimensions()
    numels = torch.tensor([p.numel() for _, p in trainable(model)], dtype=DT)
    assert torch.all(gamma >= 0) and torch.all(gamma <= numels)


def test_effective_dimensions_full_matches_dense_trace():
    model, X, y = make_case("mlp", False, "classification")
    delta = torch.tensor([0.5, 1.0, 2.0], dtype=DT)
    la = FullLaplace(model, "classification", prior_precision=delta).fit(batches(X, y))
    H = dense_ggn(model, X, y, "classification")
    numels = [p.numel() for _, p in trainable(model)]
    D = torch.repeat_interleave(delta, torch.tensor(numels))
    M = H @ torch.linalg.inv(H + torch.diag(D))  # gamma = tr(H P^-1) per tensor
    expected = torch.stack([d.sum() for d in torch.split(torch.diagonal(M), numels)])
    torch.testing.assert_close(la.effective_dimensions(), expected, atol=1e-8, rtol=1e-8)
    assert abs(la.effective_dimensions().sum() - torch.trace(M)) < 1e-8


def test_mackay_fixed_point_is_stationary_point_of_evidence():
    model, X, y = make_case("mlp", True, "classification")
    la = KronLaplace(model, "classification").fit(batches(X, y))
    la.optimize_prior_precision(method="mackay", n_steps=200)
    log_delta = la.prior_precision.detach().log().requires_grad_(True)
    (grad,) = torch.autograd.grad(la.log_marginal_likelihood(log_delta.exp()), log_delta)
    assert grad.abs().max() < 1e-6


# ----------------------------------------------------------------------- Fisher variants ----
def test_empirical_fisher_is_sum_of_gradient_outer_products():
    model, X, y = make_case("mlp", True, "classification")
    la = FullLaplace(model, "classification", hessian="ef").fit(batches(X, y))
    J = dense_jacobian(model, X)
    with torch.no_grad():
        r = torch.softmax(model(X), -1) - nn.functional.one_hot(y, 3).to(DT)
    grads = torch.einsum("nc,ncp->np", r, J)
    torch.testing.assert_close(la.H, grads.T @ grads, atol=1e-10, rtol=1e-9)


def test_mc_fisher_is_unbiased_for_the_ggn():
    model, X, y = make_case("mlp", True, "classification")
    exact = torch.diagonal(dense_ggn(model, X, y, "classification"))
    g = torch.Generator().manual_seed(0)
    reps = 300  # every copy of the data draws its own labels: the sum / reps averages draws
    many = DiagLaplace(model, "classification", hessian="mc", generator=g)
    mean = many.fit([(X.repeat(reps, 1), y.repeat(reps))]).H / reps
    one = DiagLaplace(model, "classification", hessian="mc", generator=g).fit([(X, y)]).H
    assert (mean - exact).norm() / exact.norm() < 0.1
    assert (one - exact).norm() / exact.norm() > 0.1  # one draw is noisy


# ------------------------------------------------------------------------ bad input ----
def test_unsupported_module_raises_with_name_and_type():
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    with pytest.raises(ValueError, match=r"'1'.*BatchNorm1d"):
        KronLaplace(model)

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.s

    model = nn.Sequential(nn.Linear(4, 5), Scale())
    with pytest.raises(ValueError, match=r"'1'.*Scale"):
        DiagLaplace(model)


def test_bad_hyperparameters_raise():
    model = seeded(mlp)
    with pytest.raises(ValueError, match="positive"):
        KronLaplace(model, prior_precision=0.0)
    with pytest.raises(ValueError, match="positive"):
        KronLaplace(model, prior_precision=torch.tensor([1.0, 1, 1, -1, 1, 1]))
    with pytest.raises(ValueError, match=r"expected 6 values.*0\.weight"):
        KronLaplace(model, prior_precision=torch.ones(4))
    with pytest.raises(ValueError, match="sigma_noise"):
        KronLaplace(model, "regression", sigma_noise=0.0)
    with pytest.raises(ValueError, match="sigma_noise"):
        KronLaplace(model, "classification", sigma_noise=2.0)
    with pytest.raises(ValueError, match="likelihood"):
        KronLaplace(model, "poisson")
    with pytest.raises(ValueError, match="hessian"):
        KronLaplace(model, hessian="exact")
    la = KronLaplace(model)
    with pytest.raises(RuntimeError, match="fit"):
        la.log_marginal_likelihood()
    with pytest.raises(ValueError, match="empty"):
        la.fit([])
    X, y = data("mlp")
    la.fit(batches(X, y))
    with pytest.raises(ValueError, match="positive"):
        la.log_marginal_likelihood(torch.tensor(float("nan")))


def test_nan_outputs_and_curvature_raise():
    model = seeded(mlp)
    X, y = data("mlp")
    X[3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN.*'0' \(Linear\)"):
        KronLaplace(model).fit(batches(X, y))
    with torch.no_grad():  # a NaN weight in the last layer: the error names that layer
        model[4].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN.*'4' \(Linear\)"):
        KronLaplace(model).fit(batches(data("mlp")[0], y))
    # a loader that runs once cannot be searched for the layer: the error says so
    with pytest.raises(ValueError, match=r"NaN.*re-iterable loader"):
        KronLaplace(model).fit(iter(batches(data("mlp")[0], y)))
    # finite outputs but an overflowing input factor: the error names the layer
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.fill_(1e-30)
    X = torch.full((4, 2), 1e25)
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"'0\.weight'"):
        KronLaplace(model).fit([(X, y)])


def test_bad_targets_raise():
    model = seeded(mlp)
    X, _ = data("mlp")
    with pytest.raises(ValueError, match="labels"):
        KronLaplace(model).fit([(X, torch.zeros(len(X), 3, dtype=torch.long))])
    with pytest.raises(ValueError, match="targets"):
        KronLaplace(model, "regression").fit([(X, torch.zeros(len(X), 5, dtype=DT))])


@pytest.mark.parametrize("C", [2, 3, 10])
def test_output_hessian_root_is_exact(C):
    from equilib.laplace import output_hessian_sqrt

    f = torch.randn(7, C, dtype=DT) * 3
    L = output_hessian_sqrt(f, None, "classification")
    p = torch.softmax(f, -1)
    H = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    torch.testing.assert_close(L @ L.transpose(1, 2), H, atol=1e-12, rtol=1e-10)
    assert L.shape[-1] == (C if C < 3 else C - 1)


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("G", [1, 2])
def test_gram_sum_equals_dense_sum_for_every_layout(monkeypatch, wide, G):
    from equilib.laplace.kfac import GramSum

    if wide:  # force the upper-block accumulation on small matrices, with a ragged last block
        monkeypatch.setattr(GramSum, "WIDE", 4)
        monkeypatch.setattr(GramSum, "BLOCK", 3)
    torch.manual_seed(0)
    D = 7
    gram = GramSum()
    expected = torch.zeros(G, D, D, dtype=torch.float64)
    pieces = [
        torch.randn(2, 1, G, D, dtype=torch.float64),  # fewer rows than D: kept as rows
        torch.randn(5, 1, G, D, dtype=torch.float64),  # one row per item
        torch.randn(3, 4, G, D, dtype=torch.float64),  # several rows per item, copied
        # a conv's layout: (N, G, D, R) in memory, seen as (N, R, G, D)
        torch.randn(3, G, D, 9, dtype=torch.float64).permute(0, 3, 1, 2),
    ]
    for M in pieces:
        gram.add(M)
        X = M.reshape(-1, G, D).transpose(0, 1)
        expected += X.transpose(1, 2) @ X
    torch.testing.assert_close(gram.matrix(), expected)
    lam = gram.eigenvalues(torch.float64)
    torch.testing.assert_close(lam, torch.linalg.eigvalsh(expected).clamp_min(0))
    scaled = gram.eigenvalues(torch.float64, scale=0.25)
    torch.testing.assert_close(scaled, torch.linalg.eigvalsh(0.25 * expected).clamp_min(0))


# ------------------------------------------------------------------------------- backend ----
@pytest.mark.parametrize("cls", [FullLaplace, DiagLaplace, KronLaplace])
def test_fit_accumulates_what_the_backend_gives_per_batch(cls):
    """Per batch the backend gives the summed loss and the rows of every layer; accumulating
    them by hand is fit's curvature, and the recorded calls are dropped after each batch."""
    torch.manual_seed(0)
    model = mlp(c=4)
    X, y = torch.randn(7, 6, dtype=DT), torch.randint(0, 4, (7,))
    batches = [(X[:4], y[:4]), (X[4:], y[4:])]
    la = cls(model, bottleneck=None)
    la._init_curvature()
    loss = 0.0
    for Xb, yb in batches:
        with la.backend.batch(Xb, yb) as batch:
            assert batch.outputs.shape == (len(Xb), 4) and not batch.outputs.requires_grad
            assert torch.equal(batch.targets, yb)
            loss = loss + batch.loss
            chunks = 0
            for first, grads in enumerate(batch.grads):
                assert len(grads) == len(la.layers) and grads[-1][0].shape[:2] == (1, len(Xb))
                la._accumulate(batch.inputs, grads, first == 0)
                chunks += 1
            assert chunks == 3  # one backward per column of the output Hessian's root (C - 1)
        assert all(layer.calls == [] for layer in la.layers)
    la._finalize()
    by_hand = la.H.clone() if cls is not KronLaplace else la._kron.factors(0)[1].clone()
    fitted = cls(model, bottleneck=None).fit(batches)
    torch.testing.assert_close(loss, fitted.loss, atol=0, rtol=0)
    mine = fitted.H if cls is not KronLaplace else fitted._kron.factors(0)[1]
    torch.testing.assert_close(by_hand, mine, atol=0, rtol=0)
