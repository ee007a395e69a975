"""Equivariance errors never report NaN outputs as "exactly equivariant"."""

from __future__ import annotations

import pytest
import torch

from equilib.groups import CyclicShifts, Rotations, equivariance_error, invariance_error


def _nan_off_identity(x):
    """The identity on the input, NaN on anything else (as a diverged model)."""
    out = x.clone()
    if not torch.equal(x, _nan_off_identity.x):
        out = out * float("nan")
    return out


def test_nan_outputs_on_transformed_inputs_raise():
    x = torch.randn(2, 1, 6, 6)
    _nan_off_identity.x = x
    with pytest.raises(ValueError, match="NaN or inf for the group element"):
        equivariance_error(_nan_off_identity, Rotations(4), x)
    with pytest.raises(ValueError, match="NaN or inf"):
        invariance_error(lambda y: _nan_off_identity(y).sum((1, 2, 3)), CyclicShifts(6, 6), x)


def test_inf_outputs_raise_too():
    x = torch.randn(2, 1, 6, 6)
    _nan_off_identity.x = x

    def f(y):
        return x.clone() if torch.equal(y, x) else torch.full_like(y, float("inf"))

    with pytest.raises(ValueError, match="NaN or inf"):
        equivariance_error(f, Rotations(4), x)
    assert equivariance_error(lambda y: y, Rotations(4), x) == 0.0


@pytest.mark.parametrize("batch", [10, 7])
def test_the_logits_of_a_classifier_are_not_rotated_as_an_image(batch):
    torch.manual_seed(0)
    weight = torch.randn(36, 10)
    x = torch.randn(batch, 1, 6, 6)

    def classifier(y):  # (B, 10) logits, as many as the batch has examples when batch = 10
        return y.flatten(1) @ weight

    with pytest.raises(ValueError, match="no image axes.*out_action='invariant'"):
        equivariance_error(classifier, Rotations(4), x)
    assert invariance_error(classifier, Rotations(4), x) > 0.1


def test_an_empty_list_of_elements_is_refused():
    x = torch.randn(2, 1, 6, 6)
    with pytest.raises(ValueError, match="elements is empty"):
        equivariance_error(lambda y: y, Rotations(4), x, elements=[])


def test_a_shift_by_a_fraction_of_a_pixel_is_refused_not_truncated():
    from equilib.groups import shift

    x = torch.randn(1, 1, 4, 4)
    assert torch.equal(shift(x, 1.0, -2), torch.roll(x, (1, -2), dims=(-2, -1)))
    with pytest.raises(ValueError, match="dy must be a whole number of pixels"):
        shift(x, 0.6, 0)
    with pytest.raises(ValueError, match="dx must be a whole number of pixels"):
        shift(x, 0, 1.5)
