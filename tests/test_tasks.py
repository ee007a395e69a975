"""Tests of equilib.data.tasks: the digits / quadrant tasks built from scikit-learn digits and MNIST."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from equilib.data import load_digits, tasks


def _crop(X, q, size=8, canvas=16):
    c = tasks.quadrant_corners(canvas, size)[q]
    return X[:, c[0] : c[0] + size, c[1] : c[1] + size]


def _quadrant_of_mass(img):
    """Which quadrant holds the ink of a (1, H, W) image (an oracle independent of the corners)."""
    H, W = img.shape[-2:]
    r, c = torch.nonzero(img[0] > 0, as_tuple=True)
    return int(r.float().mean() >= H / 2) * 2 + int(c.float().mean() >= W / 2)


@pytest.mark.parametrize("task", tasks.TASKS)
def test_shapes_labels_and_positions(task):
    Xtr, ytr, Xte, yte = tasks.make_task(task, n_train=100, n_test=30, seed=1)
    assert Xtr.shape == (100, 1, 16, 16) and Xte.shape == (120, 1, 16, 16)
    assert ytr.dtype == torch.int64 and float(Xtr.min()) >= 0 and float(Xtr.max()) <= 1
    assert int(ytr.max()) < tasks.n_classes(task)
    for X, y in ((Xtr, ytr), (Xte, yte)):
        q = torch.tensor([_quadrant_of_mass(x) for x in X])
        if task == "quadrant":
            assert torch.equal(y // 10, q)
        # each digit, cropped back out of its quadrant, is a scikit-learn digit with that label
        Xs, ys = load_digits()
        flat = Xs.flatten(1)
        for i in range(0, len(X), 7):
            d = _crop(X[i], int(q[i])).flatten()
            j = int((flat - d).abs().sum(1).argmin())
            assert torch.allclose(flat[j], d) and int(ys[j]) == int(y[i]) % 10
    assert set(torch.tensor([_quadrant_of_mass(x) for x in Xtr]).tolist()) == {0, 1, 2, 3}


def test_train_and_test_digits_are_disjoint_and_test_covers_all_quadrants():
    Xtr, ytr, Xte, yte = tasks.make_task("quadrant", n_train=200, n_test=50, seed=0)
    qte = torch.tensor([_quadrant_of_mass(x) for x in Xte])
    assert torch.equal(qte, torch.arange(4).repeat_interleave(50))
    te_digits = {tuple(_crop(x, int(q)).flatten().tolist()) for x, q in zip(Xte, qte)}
    tr_digits = {tuple(_crop(x, _quadrant_of_mass(x)).flatten().tolist()) for x in Xtr}
    assert len(te_digits) == 50 and len(tr_digits & te_digits) <= 2  # sklearn has a few duplicates


def test_seeded():
    a = tasks.make_task("digits", n_train=50, n_test=10, seed=3)
    b = tasks.make_task("digits", n_train=50, n_test=10, seed=3)
    c = tasks.make_task("digits", n_train=50, n_test=10, seed=4)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_same_digits_same_quadrants_across_tasks():
    d = tasks.make_task("digits", n_train=60, n_test=10, seed=2)
    q = tasks.make_task("quadrant", n_train=60, n_test=10, seed=2)
    assert torch.equal(d[0], q[0]) and torch.equal(d[1], q[1] % 10)


def test_random_test_quadrants_and_larger_canvas():
    Xtr, ytr, Xte, yte = tasks.make_task(
        "quadrant", 40, 40, seed=0, canvas=24, test_all_quadrants=False
    )
    assert Xte.shape == (40, 1, 24, 24)
    assert torch.equal(yte // 10, torch.tensor([_quadrant_of_mass(x) for x in Xte]))


def test_bad_input():
    with pytest.raises(ValueError, match="digits.*quadrant"):
        tasks.make_task("rotated")
    with pytest.raises(ValueError, match="1797"):
        tasks.make_task("digits", n_train=1700, n_test=200)
    with pytest.raises(ValueError, match="sklearn"):
        tasks.make_task("digits", source="svhn")
    with pytest.raises(ValueError, match="canvas"):
        tasks.make_task("digits", 10, 10, canvas=12)
    with pytest.raises(ValueError, match="0..3"):
        tasks.place_in_quadrants(torch.zeros(2, 1, 8, 8), torch.tensor([0, 4]), 16)


def _write_idx(path, arr):
    code = {np.uint8: 0x08}[arr.dtype.type]
    with open(path, "wb") as fh:
        fh.write(bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape))
        fh.write(arr.tobytes())


def test_mnist_from_local_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 12)):
        imgs = np.zeros((n, 28, 28), np.uint8)
        imgs[:, 6:22, 10:18] = rng.integers(1, 255, size=(n, 16, 8), dtype=np.uint8)
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte", imgs)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    Xtr, ytr, Xte, yte = tasks.make_task(
        "quadrant", n_train=20, n_test=5, source="mnist", root=tmp_path, digit_size=14
    )
    assert Xtr.shape == (20, 1, 28, 28) and Xte.shape == (20, 1, 28, 28)
    assert torch.equal(ytr // 10, torch.tensor([_quadrant_of_mass(x) for x in Xtr]))
    with pytest.raises(ValueError, match="MNIST has 30"):
        tasks.make_task("digits", n_train=31, n_test=5, source="mnist", root=tmp_path)
    with pytest.raises(FileNotFoundError):
        tasks.make_task("digits", source="mnist", root=tmp_path / "missing")
