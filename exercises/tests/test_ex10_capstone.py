"""Grading tests of exercises/ex10_capstone.py, including the graded final exercise."""

from __future__ import annotations

import pytest
import torch

from equilib.data import capstone

NAME = "ex10_capstone"


def test_10_1_nearest_neighbour_accuracy_against_a_loop(mod):
    g = torch.Generator().manual_seed(0)
    Xtr, Xte = torch.rand(30, 1, 4, 4, generator=g), torch.rand(12, 1, 4, 4, generator=g)
    ytr, yte = torch.randint(0, 3, (30,), generator=g), torch.randint(0, 3, (12,), generator=g)
    hits = 0
    for x, y in zip(Xte, yte):
        dists = [float(((x - z) ** 2).sum()) for z in Xtr]
        hits += int(ytr[dists.index(min(dists))] == y)
    got = mod.nearest_neighbour_accuracy(Xtr, ytr, Xte, yte)
    assert abs(got - hits / 12) < 1e-6, (
        f"accuracy {got}, but labelling each test image by its nearest training image gives {hits / 12}"
    )
    assert mod.nearest_neighbour_accuracy(Xtr, ytr, Xtr, ytr) == 1.0, (
        "on the training set itself the nearest neighbour of each image is that image"
    )


def test_10_2_orbit_ratio(mod):
    d = capstone.make_capstone(300, 150, seed=5, symmetry="none")
    assert abs(mod.orbit_ratio(d, lambda X: X) - 1.0) < 1e-9, (
        "the identity transformation leaves the accuracy as it is: ratio 1"
    )
    assert mod.orbit_ratio(d, lambda X: torch.rot90(X, 1, dims=(-2, -1))) < 0.5, (
        "upright digits turned by a quarter turn should be classified much worse"
    )
    flipped = capstone.make_capstone(300, 150, seed=5, symmetry="flip")
    assert mod.orbit_ratio(flipped, lambda X: torch.flip(X, dims=(-1,))) > 0.8, (
        "mirrored test digits of a mirror-symmetric data set should be classified about as well"
    )


@pytest.mark.parametrize("symmetry", capstone.SYMMETRIES)
def test_10_3_find_symmetry_graded(mod, symmetry):
    data = capstone.make_capstone(
        600, 300, seed=1000 + capstone.SYMMETRIES.index(symmetry), symmetry=symmetry
    )
    answer = mod.find_symmetry(data)
    assert capstone.check_answer(answer) == answer, "answer with one of SYMMETRIES, as given"
    assert capstone.grade(data, answer), f"the data set's symmetry was not {answer!r}"
