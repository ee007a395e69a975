"""Tests of equilib.data.capstone: the hidden-symmetry data set and its answer checks."""

import pytest
import torch

from equilib.data import capstone


@pytest.mark.parametrize("symmetry", capstone.SYMMETRIES)
def test_each_variant_has_its_symmetry(symmetry):
    d = capstone.make_capstone(200, 100, seed=3, symmetry=symmetry)
    assert d.Xtr.shape == (200, 1, 16, 16) and d.Xte.shape == (100, 1, 16, 16)
    assert int(d.ytr.max()) <= 8 and int(d.ytr.min()) >= 0
    assert capstone.reveal(d) == symmetry and capstone.grade(d, f"  {symmetry.upper()} ")
    X = torch.cat([d.Xtr, d.Xte])
    # where the ink is: a centred variant keeps a 3-pixel empty border, translation does not
    border = X[..., :3, :].abs().sum() + X[..., -3:, :].abs().sum()
    if symmetry == "translation":
        assert border > 0
    else:
        assert border == 0
    mean = X.mean(0)[0]
    # the mean image of a C4-rotated data set is (nearly) C4-symmetric, of an upright one not
    rot_gap = float((torch.rot90(mean, 1) - mean).norm() / mean.norm())
    flip_gap = float((torch.flip(mean, (-1,)) - mean).norm() / mean.norm())
    if symmetry == "rotation":
        assert rot_gap < 0.15
    if symmetry == "flip":
        assert flip_gap < 0.1
    if symmetry == "none":
        assert rot_gap > 0.15 and flip_gap > 0.1


def test_hidden_choice_depends_on_seed_only_and_is_hidden():
    a, b = capstone.make_capstone(50, 20, seed=11), capstone.make_capstone(50, 20, seed=11)
    assert capstone.reveal(a) == capstone.reveal(b)
    assert torch.equal(a.Xtr, b.Xtr)
    assert capstone.reveal(a) not in repr(a).replace("symmetry=<hidden>", "")
    seen = {capstone.reveal(capstone.make_capstone(20, 10, seed=s)) for s in range(40)}
    assert seen == set(capstone.SYMMETRIES)


def test_answers_in_the_wrong_form_are_clear_errors():
    d = capstone.make_capstone(20, 10, seed=0)
    with pytest.raises(TypeError, match="must be a string"):
        capstone.grade(d, 2)
    with pytest.raises(ValueError, match="answer with one of"):
        capstone.grade(d, "rotations by 90 degrees")
    with pytest.raises(TypeError, match="CapstoneData"):
        capstone.grade("data", "flip")
    with pytest.raises(ValueError, match="unknown symmetry"):
        capstone.make_capstone(20, 10, symmetry="scale")
    with pytest.raises(ValueError, match="n_train"):
        capstone.make_capstone(2000, 10)
