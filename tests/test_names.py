"""One name per idea: the names the library settled on, and the old ones that must not return."""

import pytest
import torch

from equilib import augment, discover, measure
from equilib.data import mixed
from equilib.laplace import FullLaplace
from equilib.laplace.linear import evidence_terms
from equilib.viz import transform as viz_transform


def test_transform_lists_of_different_ideas_have_different_names():
    """``TRANSFORMS`` is the one-parameter transformations of measure (and augment) only."""
    assert augment.TRANSFORMS is measure.TRANSFORMS
    assert mixed.ROTATION_KINDS == ("upright", "c4", "c2", "so2", "partial", "c4-partial")
    assert viz_transform.TRANSFORM_KINDS == ("identity", "rotation", "d4", "shift")
    for module in (mixed, viz_transform):
        assert not hasattr(module, "TRANSFORMS"), module.__name__


@pytest.mark.parametrize("module", [mixed, viz_transform, measure, augment])
def test_all_lists_only_names_that_exist(module):
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{module.__name__}.__all__ lists {missing}"


def test_the_effective_number_of_parameters_is_called_effective_dimensions():
    Phi = torch.randn(8, 3, dtype=torch.float64)
    terms = evidence_terms(Phi, torch.randn(8, dtype=torch.float64))
    assert "effective_dimensions" in terms and "effective_params" not in terms
    assert callable(discover.effective_dimensions) and callable(FullLaplace.effective_dimensions)
    for old in ("effective_parameters", "effective_params"):
        assert not hasattr(discover, old) and not hasattr(FullLaplace, old)
