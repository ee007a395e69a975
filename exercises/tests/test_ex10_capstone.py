"""Grading tests of exercises/ex10_capstone.py, including the graded final exercise."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from equilib.data import capstone

NAME = "ex10_capstone"
# the capstone's answer key: find the symmetry from the data, not from these
FORBIDDEN = [("10.3", capstone.reveal), ("10.3", capstone.grade)]


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


def _unlabelled(data: capstone.CapstoneData, seed: int) -> capstone.CapstoneData:
    """The data set without its answer: no hidden symmetry, no seed to rebuild it from, and the
    examples in a new order."""
    g = torch.Generator().manual_seed(seed)
    tr, te = torch.randperm(len(data.ytr), generator=g), torch.randperm(len(data.yte), generator=g)
    return dataclasses.replace(
        data,
        Xtr=data.Xtr[tr].clone(),
        ytr=data.ytr[tr].clone(),
        Xte=data.Xte[te].clone(),
        yte=data.yte[te].clone(),
        seed=0,
        _symmetry="",
    )


@pytest.mark.parametrize("symmetry", capstone.SYMMETRIES)
def test_10_3_find_symmetry_graded(mod, symmetry):
    seed = 1000 + capstone.SYMMETRIES.index(symmetry)
    data = _unlabelled(capstone.make_capstone(600, 300, seed=seed, symmetry=symmetry), seed)
    answer = mod.find_symmetry(data)
    assert capstone.check_answer(answer) == answer, "answer with one of SYMMETRIES, as given"
    assert answer == symmetry, f"the data set's symmetry was not {answer!r}"
