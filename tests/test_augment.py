"""Tests of equilib.augment: Augerino's sampling, regulariser, averaging, and learned widths."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from equilib import augment, data, measure
from equilib.groups import rotate


def small_net(K):
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 32),
        nn.ReLU(),
        nn.Linear(32, K),
    )


def digits16():
    X, y = data.load_digits(size=12)
    return F.pad(X, (2, 2, 2, 2)), y


def rotated_digits16(n: int):
    """All upright digits, and the first ``n`` turned by seeded angles in [-pi, pi)."""
    X, y = digits16()
    g = torch.Generator().manual_seed(0)
    return X, y, rotate(X[:n], (torch.rand(n, generator=g) * 2 - 1) * math.pi, mode="cubic")


def test_zero_noise_is_identity_and_widths_are_reported():
    torch.manual_seed(0)
    aug = augment.Augerino(small_net(3), ("rotation", "translation_x"), init_width=[0.3, 2.0])
    x = torch.rand(4, 1, 16, 16)
    assert torch.allclose(aug.augment(x, torch.zeros(4, 2)), x, atol=1e-6)
    w = aug.widths()
    assert set(w) == {"rotation", "translation_x"}
    assert abs(w["rotation"] - 0.3) < 1e-5 and abs(w["translation_x"] - 2.0) < 1e-5


def test_augment_applies_theta_equal_width_times_eps():
    torch.manual_seed(1)
    aug = augment.Augerino(small_net(3), ("rotation", "translation_y"), init_width=[1.0, 4.0])
    x = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    eps = torch.tensor([[0.5, 0.0], [-0.25, 0.25], [0.0, -0.5]], dtype=torch.float64)
    out = aug.augment(x, eps)
    w = aug.width.detach().double()
    ref = rotate(measure.translate(x, eps[:, 1] * w[1], 0.0), eps[:, 0] * w[0], mode="cubic")
    assert torch.allclose(out, ref, atol=1e-6)
    # a half-width rotation of +1/2 * 1.0 rad, and a shift of +1 pixel for the second image
    assert torch.allclose(out[0], rotate(x[:1], 0.5, mode="cubic")[0], atol=1e-6)


def test_reparameterised_gradient_matches_finite_differences():
    torch.manual_seed(2)
    aug = augment.Augerino(small_net(3), ("rotation",), init_width=0.8).double()
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    eps = torch.tensor([[0.3], [-0.4]], dtype=torch.float64)
    loss = lambda: aug.model(aug.augment(x, eps)).pow(2).sum()
    loss().backward()
    grad = aug.raw_width.grad.clone()
    h = 1e-6
    with torch.no_grad():
        aug.raw_width += h
        up = loss()
        aug.raw_width -= 2 * h
        down = loss()
        aug.raw_width += h
    assert abs(float(grad[0]) - float((up - down) / (2 * h))) < 1e-5 * max(1.0, abs(float(grad[0])))


def test_penalty_rewards_width_and_eval_averages_n_eval_copies():
    aug = augment.Augerino(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 2)),
        ("translation_x",),
        init_width=1.5,
        n_samples=2,
        n_eval=5,
    )
    pen = augment.width_penalty(aug, 0.1)
    assert abs(float(pen.detach()) + 0.15) < 1e-6
    pen.backward()
    assert aug.raw_width.grad[0] < 0  # gradient descent on the penalty widens
    calls = []
    aug.model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    aug.eval()
    assert aug(torch.rand(3, 1, 8, 8)).shape == (3, 2)
    aug.train()
    aug(torch.rand(3, 1, 8, 8))
    assert calls == [15, 6]


def test_last_layer_marglik_matches_brute_force_hessian():
    torch.manual_seed(3)
    body = nn.Sequential(nn.Flatten(), nn.Linear(36, 4), nn.Tanh())
    head = nn.Linear(4, 3)
    model = nn.Sequential(body, head).double()
    aug = augment.Augerino(model, ("rotation",), init_width=0.4, n_samples=1).double()
    X = torch.rand(10, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    delta = 0.7
    torch.manual_seed(9)
    got = augment.augmentation_log_marglik(aug, X, y, delta)
    torch.manual_seed(9)  # the same noise draws for the oracle
    phi = body(aug.augment(X))
    theta0 = torch.cat([head.weight, head.bias[:, None]], 1).detach().reshape(-1)

    def nll(theta):
        Wb = theta.view(3, 5)
        return F.cross_entropy(phi @ Wb[:, :4].T + Wb[:, 4], y, reduction="sum")

    Hs = torch.autograd.functional.hessian(nll, theta0)
    P = theta0.numel()
    ref = (
        -nll(theta0)
        - 0.5 * delta * theta0.pow(2).sum()
        - 0.5 * torch.logdet(Hs + delta * torch.eye(P, dtype=Hs.dtype))
        + 0.5 * P * math.log(delta)
    )
    assert abs(float(got) - float(ref)) < 1e-8 * max(1.0, abs(float(ref)))
    got.backward()
    assert aug.raw_width.grad is not None and torch.isfinite(aug.raw_width.grad).all()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="transforms must be"):
        augment.Augerino(small_net(2), ("scale",))
    with pytest.raises(ValueError, match="init_width"):
        augment.Augerino(small_net(2), ("rotation",), init_width=-1.0)
    with pytest.raises(ValueError, match="n_samples"):
        augment.Augerino(small_net(2), n_samples=0)
    aug = augment.Augerino(small_net(2), ("rotation",))
    with pytest.raises(ValueError, match="square"):
        aug(torch.rand(2, 1, 16, 12))
    with pytest.raises(ValueError, match="eps must have shape"):
        aug.augment(torch.rand(2, 1, 16, 16), torch.zeros(3, 1))
    conv_only = augment.Augerino(
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    )
    with pytest.raises(ValueError, match="no nn.Linear"):
        augment.augmentation_log_marglik(conv_only, torch.rand(4, 1, 8, 8), torch.zeros(4).long())
    with pytest.raises(ValueError, match="objective"):
        augment.train_augmentation(
            aug, torch.rand(4, 1, 16, 16), torch.zeros(4).long(), objective="mle"
        )


@pytest.mark.slow
def test_learned_rotation_width_grows_on_rotated_digits_not_on_six_vs_nine():
    n = 300
    X, y, Xr = rotated_digits16(n)
    torch.manual_seed(0)
    rot = augment.Augerino(small_net(10), ("rotation",), init_width=0.5)
    h_rot = augment.train_augmentation(
        rot, Xr, y[:n], epochs=10, lr=3e-3, width_lr=0.05, strength=0.05, batch_size=32
    )
    keep = (y == 6) | (y == 9)
    X69, y69 = X[keep][:250], (y[keep] == 9).long()[:250]
    torch.manual_seed(0)
    up = augment.Augerino(small_net(2), ("rotation",), init_width=0.5)
    h_up = augment.train_augmentation(
        up, X69, y69, epochs=15, lr=1e-2, width_lr=0.05, strength=0.05, batch_size=32
    )
    w_rot, w_up = h_rot["width"][-1]["rotation"], h_up["width"][-1]["rotation"]
    assert w_rot > math.pi + 1  # wider than +-90 degrees: rotations are free on rotated data
    assert w_up < math.pi  # never reaches the angles at which a 6 becomes a 9
    assert w_rot > 1.5 * w_up
    # the upright model still tells 6 from 9
    acc = (up(X69).argmax(1) == y69).float().mean()
    assert acc > 0.9


@pytest.mark.slow
def test_marglik_width_grows_on_rotated_digits_and_shrinks_on_six_vs_nine():
    n = 400
    X, y, Xr = rotated_digits16(n)
    widths = {}
    for name, (XX, yy, k, lr) in {
        "rotated": (Xr, y[:n], 10, 3e-3),
        "six-nine": (
            X[(y == 6) | (y == 9)][:300],
            (y[(y == 6) | (y == 9)] == 9).long()[:300],
            2,
            1e-2,
        ),
    }.items():
        torch.manual_seed(0)
        aug = augment.Augerino(small_net(k), ("rotation",), init_width=0.5, n_samples=4)
        hist = augment.train_augmentation(
            aug, XX, yy, objective="marglik", epochs=9, lr=lr, width_lr=0.1, batch_size=32
        )
        widths[name] = hist["width"][-1]["rotation"]
        assert all(p > 0 for p in hist["prior_precision"])
    assert widths["rotated"] > 0.5  # the evidence widens the invariance the data support
    assert widths["six-nine"] < 0.5  # ... and narrows it where a turn changes the label
    assert widths["rotated"] > 3 * widths["six-nine"]


def test_averaged_with_fixed_samples_is_the_mean_over_those_samples():
    torch.manual_seed(0)
    aug = augment.Augerino(nn.Flatten(), transforms=("rotation",), init_width=2.0)
    x = torch.rand(3, 1, 8, 8)
    eps = torch.rand(4, 3, 1) - 0.5
    by_hand = sum(aug.model(aug.augment(x, e)) for e in eps) / 4
    assert torch.allclose(aug.averaged(x, 4, eps=eps), by_hand, atol=1e-6)
    assert torch.equal(aug.averaged(x, 4, eps=eps), aug.averaged(x, 4, eps=eps))  # no new draws
    with pytest.raises(ValueError, match="eps must have shape"):
        aug.averaged(x, 4, eps=eps[:2])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prior_precision": 0.0}, "prior_precision must be a positive number"),
        ({"prior_precision": -1.0}, "prior_precision must be a positive number"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"marglik_every": 0}, "marglik_every must be a positive integer"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"lr": float("nan")}, "lr must be a positive number"),
    ],
)
def test_training_settings_it_cannot_use_are_refused(kwargs, message):
    aug = augment.Augerino(small_net(2), ("rotation",))
    X, y = torch.rand(4, 1, 16, 16), torch.zeros(4).long()
    with pytest.raises(ValueError, match=message):
        augment.train_augmentation(aug, X, y, objective="marglik", **kwargs)


def test_the_evidence_of_an_augmentation_needs_a_positive_precision_and_data():
    torch.manual_seed(0)
    aug = augment.Augerino(small_net(2), ("rotation",))
    X, y = torch.rand(4, 1, 16, 16), torch.zeros(4).long()
    assert math.isfinite(float(augment.augmentation_log_marglik(aug, X, y, 0.5)))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="prior_precision must be a positive finite"):
            augment.augmentation_log_marglik(aug, X, y, bad)
    with pytest.raises(ValueError, match="no examples"):
        augment.augmentation_log_marglik(aug, X[:0], y[:0])
    with pytest.raises(ValueError, match="NaN or inf"):
        augment.train_augmentation(aug, X * float("nan"), y, epochs=1)


def test_a_diverging_augmentation_run_stops_instead_of_reporting_nan_widths():
    torch.manual_seed(0)
    aug = augment.Augerino(small_net(2), ("rotation",))
    X, y = torch.rand(8, 1, 16, 16), torch.tensor([0, 1] * 4)
    with torch.no_grad():
        aug.model[-1].weight.mul_(1e30)  # logits of 1e30: the loss overflows
        aug.model[-1].weight.mul_(1e30)
    with pytest.raises(augment.TrainingDiverged, match="epoch 1"):
        augment.train_augmentation(aug, X, y, epochs=2, lr=1.0)
