"""Tests of equilib.train: MAP objective, determinism, exact resume, bad checkpoints, marglik steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from equilib import train


def make_data(n=48, d=12, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 1, 3, 4, generator=g)
    w = torch.randn(d, k, generator=g)
    y = (X.flatten(1) @ w).argmax(-1)
    return X, y


def loaders(X, y, seed=0, batch_size=16):
    ds = TensorDataset(X, y)
    g = torch.Generator().manual_seed(seed)
    return (
        DataLoader(ds, batch_size=batch_size, shuffle=True, generator=g),
        DataLoader(ds, batch_size=64, shuffle=False),
    )


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 3))


class DenseLaplace:
    """Oracle: full-GGN Laplace evidence of a classifier, computed densely from per-example Jacobians.

    log p(D | delta) = -sum CE - 1/2 theta^T P0 theta - 1/2 logdet(H + P0) + 1/2 logdet(P0).
    """

    def __init__(self, model, prior_precision):
        self.model = model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.sizes = [p.numel() for n, p in model.named_parameters() if p.requires_grad]

    def fit(self, loader):
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        H = 0.0
        nll = 0.0
        for x, y in loader:

            def f(ps, xi):
                return functional_call(self.model, ps, (xi[None],))[0]

            for xi, yi in zip(x, y):
                J = jacrev(f)(params, xi)
                Jm = torch.cat([J[n].reshape(3, -1) for n in self.names], 1).double()
                logits = f(params, xi).double()
                p = logits.softmax(-1)
                H = H + Jm.T @ (torch.diag(p) - torch.outer(p, p)) @ Jm
                nll = nll + F.cross_entropy(logits[None], yi[None], reduction="sum")
        self.H = H
        self.nll = nll
        self.theta = torch.cat([params[n].flatten() for n in self.names]).double()

    def log_marginal_likelihood(self, prior_precision):
        d = torch.cat([pp.expand(s) for pp, s in zip(prior_precision.double(), self.sizes)])
        P = self.H + torch.diag(d)
        return (
            -self.nll
            - 0.5 * (d * self.theta**2).sum()
            - 0.5 * torch.logdet(P)
            + 0.5 * d.log().sum()
        )


def test_prior_penalty_matches_closed_form():
    ps = [torch.randn(3, 4), torch.randn(5)]
    delta = torch.tensor([2.0, 0.5], dtype=torch.float64)
    expect = 0.5 * (2.0 * (ps[0] ** 2).sum() + 0.5 * (ps[1] ** 2).sum()) / 10
    assert torch.allclose(train.prior_penalty(ps, delta, 10), expect)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_data", [7, 1200, 60000])
def test_prior_grads_by_hand_are_bitwise_autograds(dtype, n_data):
    g = torch.Generator().manual_seed(n_data)
    shapes = [(16, 1, 3, 3), (2304, 576), (16,), (40, 64)]
    ps = [torch.randn(s, generator=g, dtype=dtype).mul(0.1).requires_grad_() for s in shapes]
    delta = torch.rand(len(ps), generator=g, dtype=dtype).mul(50).add(1e-3)
    outside = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]  # a loss's gradient
    for p, o in zip(ps, outside):
        p.grad = o.clone()
    ps[2].grad = None  # a tensor the loss does not reach
    reference = [q.detach().clone().requires_grad_() for q in ps]
    train.prior_penalty(reference, delta, n_data).backward()
    train.add_prior_grads(ps, delta, n_data)
    for i, (p, r, o) in enumerate(zip(ps, reference, outside)):
        expect = r.grad if i == 2 else o + r.grad
        assert torch.equal(p.grad, expect), i


def test_training_with_the_prior_in_the_graph_or_added_by_hand_is_the_same_run():
    """fit adds the prior's gradient by hand, except with an extra loss (the penalty then stays
    in the graph): a zero extra loss must leave the run bitwise unchanged."""
    X, y = make_data()
    runs = []
    for extra in (None, lambda m: torch.zeros(())):
        model = small_model()
        h = train.fit(
            model, loaders(X, y)[0], epochs=3, lr=0.05, prior_precision=[3.0, 0.5, 2.0, 1.0],
            extra_loss=extra, progress=False,
        )  # fmt: skip
        runs.append((h.train_loss, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_cosine_lr_endpoints():
    assert train.cosine_lr(0, 10, 1.0, 0.1) == pytest.approx(1.0)
    assert train.cosine_lr(5, 10, 1.0, 0.1) == pytest.approx(0.55)
    assert train.cosine_lr(10, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_warmup_ramps_the_learning_rate_over_its_epochs_then_follows_the_schedule():
    X, y = make_data()  # 48 examples in batches of 16: 3 steps per epoch
    tr, _ = loaders(X, y)
    steps = 3
    for schedule in ("constant", "cosine"):
        base = train.fit(small_model(), tr, epochs=4, lr=0.1, lr_min=0.01, schedule=schedule,
                         progress=False)  # fmt: skip
        warm = train.fit(small_model(), tr, epochs=4, lr=0.1, lr_min=0.01, schedule=schedule,
                         warmup=2, progress=False)  # fmt: skip
        for e in range(4):  # history.lr: the rate of each epoch's last step
            last = (e + 1) * steps - 1
            ramp = min(1.0, (last + 1) / (2 * steps))
            assert warm.lr[e] == pytest.approx(base.lr[e] * ramp)
        assert warm.lr[0] == pytest.approx(base.lr[0] / 2) and warm.lr[2:] == base.lr[2:]
        assert warm.train_loss[0] != base.train_loss[0], "smaller first steps train differently"
    # no warm-up: the cosine schedule exactly as it was
    assert base.lr == [train.cosine_lr((e + 1) * steps - 1, 4 * steps, 0.1, 0.01) for e in range(4)]


def test_map_learns_and_strong_prior_shrinks_weights():
    X, y = make_data()
    tr, te = loaders(X, y)
    m = small_model()
    h = train.fit(m, tr, te, epochs=30, lr=0.03, progress=False)
    assert h.train_loss[-1] < h.train_loss[0]
    assert h.test_acc[-1] > 0.8
    assert all(math.isnan(v) for v in h.log_marglik)
    assert h.prior_precision[-1] == [1.0] * 4  # MAP keeps the precisions fixed
    m2 = small_model()
    tr, te = loaders(X, y)
    train.fit(m2, tr, te, epochs=30, lr=0.03, prior_precision=1e4, progress=False)
    n1 = sum(p.norm() ** 2 for p in m.parameters())
    n2 = sum(p.norm() ** 2 for p in m2.parameters())
    assert n2 < 0.1 * n1


def test_per_tensor_precision_acts_as_weight_decay_on_that_tensor_only():
    X, y = make_data()
    tr, _ = loaders(X, y)
    m = small_model()
    w0 = m[3].weight.detach().clone()
    train.fit(m, tr, epochs=20, lr=0.03, prior_precision=[1.0, 1.0, 1e5, 1.0], progress=False)
    assert m[3].weight.norm() < 0.05 * w0.norm()
    assert m[1].weight.norm() > 0.5


def test_fit_is_deterministic():
    X, y = make_data()
    runs = []
    for _ in range(2):
        tr, te = loaders(X, y)
        m = small_model(seed=3)
        h = train.fit(m, tr, te, epochs=4, lr=0.01, progress=False, seed=5)
        runs.append((h, [p.detach().clone() for p in m.parameters()]))
    assert runs[0][0].train_loss == runs[1][0].train_loss
    for a, b in zip(runs[0][1], runs[1][1]):
        assert torch.equal(a, b)


class Stop(Exception):
    pass


def _stop_at(k):
    def cb(epoch, history, model):
        if epoch == k:
            raise Stop

    return cb


@pytest.mark.parametrize("objective,warmup", [("map", 0), ("marglik", 0), ("map", 4)])
def test_resume_is_exact(tmp_path, objective, warmup):
    X, y = make_data()
    kw = dict(
        objective=objective,
        warmup=warmup,  # 4: stopped at epoch 3, the resumed run goes on up the same ramp
        epochs=5,
        lr=0.02,
        burn_in=1,
        marglik_every=2,
        hyper_steps=5,
        laplace=DenseLaplace,
        progress=False,
        seed=1,
    )
    tr, te = loaders(X, y)
    m_full = small_model()
    h_full = train.fit(m_full, tr, te, **kw)

    ck = tmp_path / "ck.pt"
    tr, te = loaders(X, y)
    with pytest.raises(Stop):
        train.fit(small_model(), tr, te, checkpoint=ck, callback=_stop_at(3), **kw)
    assert train.load_checkpoint(ck)["epoch"] == 3
    tr, te = loaders(X, y, seed=99)  # a different loader seed: the checkpoint restores it
    m_res = small_model(seed=42)  # different init: the checkpoint restores it
    h_res = train.fit(m_res, tr, te, checkpoint=ck, resume=True, **kw)
    assert h_res.epoch == [1, 2, 3, 4, 5]
    assert h_res.lr == h_full.lr
    assert h_res.train_loss == h_full.train_loss
    assert h_res.prior_precision == h_full.prior_precision
    for a, b in zip(m_full.parameters(), m_res.parameters()):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind
    with pytest.raises(ValueError, match="warmup"):  # another warm-up is another run
        train.fit(small_model(), tr, te, checkpoint=ck, resume=True, **{**kw, "warmup": 2})


def test_mismatched_or_corrupt_checkpoint_is_refused_and_left_intact(tmp_path):
    X, y = make_data()
    ck = tmp_path / "ck.pt"
    tr, _ = loaders(X, y)
    train.fit(small_model(), tr, epochs=2, checkpoint=ck, progress=False)
    before = ck.read_bytes()
    tr, _ = loaders(X, y)
    with pytest.raises(ValueError, match=r"different run.*lr: 0\.5 here, 0\.001 in the checkpoint"):
        train.fit(small_model(), tr, epochs=2, lr=0.5, checkpoint=ck, resume=True, progress=False)
    other = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(ValueError, match="params"):
        train.fit(other, tr, epochs=2, checkpoint=ck, resume=True, progress=False)
    assert ck.read_bytes() == before

    bad = tmp_path / "bad.pt"
    bad.write_bytes(before[: len(before) // 2])
    with pytest.raises(ValueError, match="corrupted"):
        train.fit(small_model(), tr, epochs=2, checkpoint=bad, resume=True, progress=False)
    assert bad.read_bytes() == before[: len(before) // 2]
    with pytest.raises(FileNotFoundError):
        train.fit(
            small_model(),
            tr,
            epochs=2,
            checkpoint=tmp_path / "none.pt",
            resume=True,
            progress=False,
        )


def test_bad_arguments():
    X, y = make_data()
    tr, _ = loaders(X, y)
    with pytest.raises(ValueError, match="map"):
        train.fit(small_model(), tr, objective="evidence", epochs=1)
    with pytest.raises(ValueError, match="positive"):
        train.fit(small_model(), tr, epochs=0)
    with pytest.raises(ValueError, match="one value per"):
        train.fit(small_model(), tr, epochs=1, prior_precision=[1.0, 2.0])
    with pytest.raises(ValueError, match="> 0"):
        train.fit(small_model(), tr, epochs=1, prior_precision=-1.0)
    for bad in (-1, 3, 1.5, True):
        with pytest.raises(ValueError, match="warmup must be an int from 0 to epochs"):
            train.fit(small_model(), tr, epochs=2, warmup=bad)
    with pytest.raises(ValueError, match="warmup needs a train_loader with a length"):
        train.fit(small_model(), iter(list(tr)), epochs=2, warmup=1, progress=False)


def test_marglik_steps_raise_the_evidence_and_history_matches_oracle():
    X, y = make_data()
    tr, te = loaders(X, y)
    m = small_model()
    h = train.fit(
        m,
        tr,
        te,
        objective="marglik",
        epochs=6,
        lr=0.02,
        burn_in=2,
        marglik_every=2,
        hyper_steps=30,
        hyper_lr=0.1,
        laplace=DenseLaplace,
        progress=False,
    )
    refits = [e for e, v in zip(h.epoch, h.log_marglik) if not math.isnan(v)]
    assert refits == [4, 6]
    # the time of each epoch's update is recorded on exactly the refit epochs
    assert [e for e, t in zip(h.epoch, h.update_seconds) if t > 0] == refits
    assert len(h.step_seconds) == 6 and all(t > 0 for t in h.step_seconds)
    assert h.seconds[-1] >= sum(h.step_seconds) + sum(h.update_seconds)
    assert h.prior_precision[0] == [1.0] * 4
    assert h.prior_precision[-1] != h.prior_precision[2]  # the objective moved the precisions
    # the recorded evidence is the oracle's at the final weights and precisions
    la = DenseLaplace(m, None)
    la.fit(DataLoader(TensorDataset(X, y), batch_size=64))
    final = torch.tensor(h.prior_precision[-1], dtype=torch.float64)
    assert h.log_marglik[-1] == pytest.approx(la.log_marginal_likelihood(final).item(), rel=1e-6)
    # and the hyper steps improved it over the initial precisions at the same curvature
    assert la.log_marginal_likelihood(final) > la.log_marginal_likelihood(torch.ones(4))


def test_reparametrize_runs_before_training_and_after_every_step():
    X, y = make_data()
    tr, te = loaders(X, y)
    m = small_model()
    seen = []

    def reparametrize(model):
        assert model is m
        seen.append(float(model[1].weight.detach().norm()))

    h = train.fit(m, tr, te, epochs=2, lr=0.02, progress=False, reparametrize=reparametrize)
    assert len(seen) == 1 + 2 * len(tr)  # once at the start, then after each of the steps
    assert len(h) == 2


def test_curvature_loader_reads_every_example_once_in_order():
    X, y = make_data(n=50)
    tr, _ = loaders(X, y, batch_size=16)  # shuffled, 16 at a time
    curv = train.curvature_loader_for(tr, 20)
    assert isinstance(curv, train.TensorBatches) and len(curv) == 3
    batches = list(curv)
    assert [len(b[1]) for b in batches] == [20, 20, 10]
    assert torch.equal(torch.cat([b[0] for b in batches]), X)
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    assert len(list(curv)) == 3  # read again at every refit
    X0 = X.clone()
    next(iter(curv))[0].zero_()  # a batch is a copy: the dataset keeps its values
    assert torch.equal(tr.dataset.tensors[0], X0)
    # the batches of a sequential DataLoader, exactly, on any dataset
    squares = [(x * x, t) for x, t in zip(X, y)]
    curv = train.curvature_loader_for(DataLoader(squares, batch_size=16), 20)
    assert isinstance(curv, DataLoader) and curv.batch_size == 20
    assert torch.equal(torch.cat([b[0] for b in curv]), X * X)
    assert train.curvature_loader_for(tr, None) is tr
    # loaders that do not yield their whole dataset once are used as they are
    ds = TensorDataset(X, y)
    part = DataLoader(ds, batch_size=8, sampler=torch.utils.data.SubsetRandomSampler(range(10)))
    dropped = DataLoader(ds, batch_size=16, drop_last=True)
    with_replacement = DataLoader(
        ds, batch_size=8, sampler=torch.utils.data.RandomSampler(ds, replacement=True)
    )
    plain_list = [(X[:16], y[:16])]
    for loader in (part, dropped, with_replacement, plain_list):
        assert train.curvature_loader_for(loader, 20) is loader
    with pytest.raises(ValueError, match="curvature_batch_size"):
        train.fit(small_model(), tr, epochs=1, curvature_batch_size=0)


def test_curvature_batch_size_changes_only_the_rounding_of_the_evidence():
    X, y = make_data()
    runs = []
    for size in (None, 5, 48):
        tr, te = loaders(X, y)  # the same shuffling in every run
        m = small_model()
        h = train.fit(
            m,
            tr,
            te,
            objective="marglik",
            epochs=6,
            lr=0.02,
            burn_in=2,
            marglik_every=2,
            hyper_steps=5,
            progress=False,
            curvature_batch_size=size,
        )
        runs.append(h)
    ref = runs[0]
    first = ref.log_marglik.index(next(v for v in ref.log_marglik if not math.isnan(v)))
    assert first == 3  # the refit after epoch 4, at weights that no curvature has touched yet
    for h in runs[1:]:
        # the same weights, the same evidence and the same precisions after its steps; later
        # epochs are trained with precisions that differ in their last bits, and drift
        assert h.log_marglik[first] == pytest.approx(ref.log_marglik[first], rel=1e-6)
        assert h.prior_precision[first] == pytest.approx(ref.prior_precision[first], rel=1e-6)
        assert math.isnan(h.log_marglik[first - 1]) and not math.isnan(h.log_marglik[-1])


def test_evaluate_slices_a_sequential_tensor_loader_into_the_same_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    X, y = torch.randn(23, 5), torch.randint(0, 3, (23,))
    loader = DataLoader(TensorDataset(X, y), batch_size=4)
    assert isinstance(train._sliced(loader), train.TensorBatches)
    # the loss is summed batch by batch: the same batches give bitwise the same sums
    loss, correct = torch.zeros((), dtype=torch.float64), 0
    with torch.no_grad():
        for xb, yb in loader:
            out = model(xb)
            loss += F.cross_entropy(out, yb, reduction="sum").double()
            correct += int((out.argmax(-1) == yb).sum())
    assert train.evaluate(model, loader) == (loss.item() / 23, correct / 23)
    # other loaders are read as they are
    shuffled = DataLoader(TensorDataset(X, y), batch_size=4, shuffle=True)
    assert train._sliced(shuffled) is shuffled
    dropping = DataLoader(TensorDataset(X, y), batch_size=4, drop_last=True)
    assert train._sliced(dropping) is dropping
    plain = [(X[:10], y[:10]), (X[10:], y[10:])]
    assert train._sliced(plain) is plain
