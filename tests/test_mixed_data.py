"""Digits with full, partial and mixed rotational symmetry (equilib.data.mixed)."""

import math

import pytest
import torch

from equilib.data import load_digits, upsample
from equilib.data.mixed import (
    DEGREE_TASKS,
    PARTIAL_EXCLUDED,
    TASK_ANGLES,
    make_degree_task,
    make_double_digits,
    make_rotated_digits,
    transform_digits,
)
from equilib.groups import rotate


def _sources(size=16, digit=12):
    X, y = load_digits()
    X = upsample(X, digit)
    p = (size - digit) // 2
    return torch.nn.functional.pad(X, (p, size - digit - p, p, size - digit - p)), y


def _match(images, pool):
    """Index of the pool image equal to each image (exact), -1 where none is."""
    d = torch.cdist(images.flatten(1), pool.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
    best = d.min(1)
    return torch.where(best.values < 1e-5, best.indices, torch.full_like(best.indices, -1))


def test_transform_kinds():
    X, _ = _sources()
    X = X[:20]
    g = torch.Generator().manual_seed(0)
    up, a = transform_digits(X, "upright", generator=g)
    assert torch.equal(up, X) and bool((a == 0).all())
    c4, a = transform_digits(X, "c4", generator=g)
    for i in range(len(X)):
        q = int(round(float(a[i]) / (math.pi / 2)))
        assert torch.equal(c4[i], torch.rot90(X[i], q, dims=(-2, -1)))
    theta = math.radians(30)
    part, a = transform_digits(X, "partial", theta=theta, generator=g)
    assert bool((a.abs() <= theta).all()) and float(a.abs().max()) > theta / 2
    assert torch.allclose(part, rotate(X, a).clamp(0, 1), atol=1e-6)
    c2, a = transform_digits(X, "c2", generator=g)
    assert {round(abs(v), 5) for v in a.tolist()} == {0.0, round(math.pi, 5)}
    for i in range(len(X)):
        assert torch.equal(c2[i], torch.rot90(X[i], 2 if a[i] else 0, dims=(-2, -1)))
    so2, a = transform_digits(X, "so2", generator=g)
    assert bool(((a >= 0) & (a < 2 * math.pi)).all())


def test_rotated_digits_shapes_labels_and_disjoint_sources():
    Xtr, ytr, Xte, yte = make_rotated_digits(300, 100, "upright", size=16, digit=12, seed=1)
    assert Xtr.shape == (300, 1, 16, 16) and Xte.shape == (100, 1, 16, 16)
    pool, labels = _sources()
    itr, ite = _match(Xtr, pool), _match(Xte, pool)
    assert bool((itr >= 0).all()) and bool((ite >= 0).all())
    assert torch.equal(labels[itr], ytr) and torch.equal(labels[ite], yte)
    assert not set(itr.tolist()) & set(ite.tolist())


def test_double_digits_labels_and_halves():
    Xtr, ytr, Xte, yte = make_double_digits(200, 50, left="c4", right="upright", seed=2)
    assert Xtr.shape == (200, 1, 16, 32) and ytr.min() >= 0 and ytr.max() <= 99
    pool, labels = _sources()
    right = _match(Xtr[..., 16:], pool)
    assert bool((right >= 0).all())
    assert torch.equal(labels[right], ytr % 10)
    # the left half is a quarter turn of a source digit with label ytr // 10
    left = Xtr[..., :16]
    found = torch.full((200,), -1)
    for q in range(4):
        idx = _match(torch.rot90(left, -q, dims=(-2, -1)), pool)
        found = torch.where(found < 0, idx, found)
    assert bool((found >= 0).all())
    assert torch.equal(labels[found], ytr // 10)
    # train and test pairs come from disjoint source pools
    right_te = _match(Xte[..., 16:], pool)
    assert not set(right.tolist()) & set(right_te.tolist())


def test_degree_tasks():
    for name in DEGREE_TASKS:
        Xtr, ytr, Xte, yte, nc = make_degree_task(name, 40, 20, seed=0)
        assert nc == (100 if name == "double" else 10)
        assert Xtr.shape[-1] == (32 if name == "double" else 16)
        assert len(Xtr) == 40 and len(Xte) == 20 and int(ytr.max()) < nc


@pytest.mark.parametrize("name", ["upright", "rotated", "partial"])
def test_single_digit_tasks_turn_by_exactly_their_listed_angles(name):
    Xtr, ytr, Xte, yte, _ = make_degree_task(name, 300, 100, seed=3)
    pool, labels = _sources()
    seen = set()
    for X, y in ((Xtr, ytr), (Xte, yte)):
        found = torch.full((len(X),), -1)
        turn = torch.full((len(X),), -1)
        for q in range(4):  # undo a quarter turn q and look the image up among the sources
            idx = _match(torch.rot90(X, -q, dims=(-2, -1)), pool)
            new = (found < 0) & (idx >= 0)
            found, turn = torch.where(new, idx, found), torch.where(new, q, turn)
        assert bool((found >= 0).all())
        assert torch.equal(labels[found], y)
        seen |= {90 * int(q) for q in turn}
    assert seen == set(TASK_ANGLES[name])
    if name == "partial":  # no 6 and no 9: a half turn would make one the other
        assert not set(PARTIAL_EXCLUDED) & set(torch.cat([ytr, yte]).tolist())


def test_partial_task_uses_at_most_the_digits_without_6_and_9():
    make_degree_task("partial", 1000, 436, seed=0)
    with pytest.raises(ValueError, match="without the digits \\[6, 9\\]"):
        make_degree_task("partial", 1000, 500, seed=0)


def test_data_elements_index_the_rotations_of_the_data():
    from equilib.degree.training import data_elements

    assert data_elements("upright") == [0]
    assert data_elements("rotated") == [0, 1, 2, 3]
    assert data_elements("partial") == [0, 2]
    assert data_elements("partial", "C8") == [0, 4]
    assert data_elements("partial", "D4") == [0, 2]  # flips are never in the data
    assert data_elements("double") is None
    with pytest.raises(ValueError, match="valid tasks"):
        data_elements("sideways")


def test_bad_input():
    with pytest.raises(ValueError, match="valid kinds"):
        make_rotated_digits(10, 10, "spin")
    with pytest.raises(ValueError, match="valid tasks"):
        make_degree_task("triple", 10, 10)
    with pytest.raises(ValueError, match="n_train \\+ n_test <= 1797"):
        make_rotated_digits(1500, 500, "c4")
    with pytest.raises(ValueError, match="non-negative angle"):
        transform_digits(torch.zeros(2, 1, 8, 8), "partial", theta=-1.0)
    with pytest.raises(ValueError, match="digit <= size"):
        make_rotated_digits(10, 10, "c4", size=8, digit=12)


@pytest.mark.parametrize("kind", ["so2", "partial"])
def test_rotated_images_are_not_clipped_to_the_unit_range(kind):
    X = upsample(load_digits()[0][:16], 16)
    g = torch.Generator().manual_seed(0)
    unit, angles = transform_digits(X, kind, generator=g)
    scaled, again = transform_digits(255 * X - 40, kind, generator=torch.Generator().manual_seed(0))
    assert torch.equal(angles, again)
    # rotation is linear in the image (zeros fill the corners), so nothing is clipped if
    # rotating 255 X - 40 gives 255 rot(X) - 40 rot(1)
    assert scaled.min() < -1 and scaled.max() > 200
    torch.testing.assert_close(
        scaled + 40 * rotate(torch.ones_like(X), angles), 255 * unit, atol=1e-3, rtol=1e-4
    )
