"""One name per idea: the names the library settled on, and the old ones that must not return."""

import inspect

import pytest
import torch

from equilib import augment, discover, groups, measure
from equilib import nn as enn
from equilib.data import mixed
from equilib.degree import GroupDensity, PartialGroupConv, PartialLiftingConv
from equilib.laplace import FullLaplace
from equilib.laplace.linear import evidence_terms
from equilib.models import SoftNet, build
from equilib.viz import transform as viz_transform
from equilib.viz.degree import draw_lambdas, polar_points


def test_transform_lists_of_different_ideas_have_different_names():
    """``TRANSFORMS`` is the one-parameter transformations of measure (and augment) only."""
    assert augment.TRANSFORMS is measure.TRANSFORMS
    assert mixed.ROTATION_KINDS == ("upright", "c4", "c2", "so2", "partial", "c4-partial")
    assert viz_transform.TRANSFORM_KINDS == ("identity", "rotation", "d4", "shift")
    for module in (mixed, viz_transform):
        assert not hasattr(module, "TRANSFORMS"), module.__name__


@pytest.mark.parametrize("module", [mixed, viz_transform, measure, augment, groups])
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


ROTATION_LAYERS = [
    enn.LiftingConv2d,
    enn.GroupConv2d,
    enn.RotationPooledConv2d,
    enn.LiftingConvCN,
    enn.GroupConvCN,
]


@pytest.mark.parametrize("cls", ROTATION_LAYERS, ids=lambda c: c.__name__)
def test_rotation_layers_take_the_order_of_c_n_as_N(cls):
    """Every layer for C_N takes and keeps the group order as ``N`` (as ``Rotations(N)`` does)."""
    exact = cls.__name__.endswith("2d")  # quarter turns only: N in (1, 2, 4)
    params = inspect.signature(cls).parameters
    assert "N" in params and params["N"].default == (4 if exact else 8)
    for old in ("n", "group_order", "order"):
        assert old not in params, f"{cls.__name__} takes {old!r}; the group order is N"
    layer = cls(2, 3, 3, N=2 if exact else 3)
    assert layer.N == (2 if exact else 3) and not hasattr(layer, "n")
    assert "N=" in repr(layer)


def test_the_zoo_keeps_the_group_order_as_N():
    params = inspect.signature(SoftNet).parameters
    assert "N" in params and "group_order" not in params
    assert build("gconv-c4", (1, 8, 8), width=2).N == 4 and build("conv", (1, 8, 8)).N == 1
    assert not hasattr(build("gconv-c4", (1, 8, 8), width=2), "group_order")
    assert repr(groups.SO2Grid(8)) == "SO2Grid(N=8)" and groups.Rotations(8).N == 8


def test_partial_layers_take_a_group_not_an_order():
    """A partial layer may act by D_N or an SO(2) grid: it takes the group; its order is
    ``layer.group.order`` and its N the group's ``N``."""
    for cls in (PartialLiftingConv, PartialGroupConv):
        params = inspect.signature(cls).parameters
        assert "group" in params and not {"n", "N", "group_order"} & set(params)
    layer = PartialLiftingConv(1, 2, 3, "D4")
    assert layer.group.order == 8 and layer.group.N == 4


WEIGHT_LAYERS = {
    "GroupedLinear": lambda: enn.GroupedLinear(2, 3, 4),
    "ImageLinear": lambda: enn.ImageLinear((1, 3, 3), (2, 2, 2)),
    "FactoredLinear": lambda: enn.FactoredLinear((1, 3, 3), (2, 2, 2)),
    "SparseFactoredLinear": lambda: enn.SparseFactoredLinear((1, 4, 4), (2, 2, 2), anchors_in=2),
    "BasisConv2d": lambda: enn.BasisConv2d(1, 2, 3, torch.randn(4, 9)),
    "SparseConv2d": lambda: enn.SparseConv2d(1, 2, 3, anchors=2),
    "LiftingConvCN": lambda: enn.LiftingConvCN(1, 2, 3, N=3),
    "GroupConvCN": lambda: enn.GroupConvCN(2, 2, 3, N=3),
    "PartialLiftingConv": lambda: PartialLiftingConv(1, 2, 3, "C4"),
    "PartialGroupConv": lambda: PartialGroupConv(2, 2, 3, "C4"),
}


@pytest.mark.parametrize("name", list(WEIGHT_LAYERS))
def test_layers_built_from_parameters_share_one_effective_weight_method(name):
    """The weight a layer applies, computed from its parameters, is ``effective_weight()``."""
    layer = WEIGHT_LAYERS[name]()
    assert inspect.ismethod(layer.effective_weight)
    assert isinstance(layer.effective_weight(), torch.Tensor)
    for old in ("dense_weight", "filter", "filters", "weight_matrix"):
        assert not hasattr(layer, old), f"{name}.{old}: the effective weight is effective_weight()"


def test_densities_over_c_n_keep_its_N():
    """A density over C_N, D_N or an SO(2) grid takes and keeps the number of rotations as N."""
    for make in (GroupDensity.cyclic, GroupDensity.so2, GroupDensity.dihedral, GroupDensity.o2):
        assert list(inspect.signature(make).parameters)[0] == "N"
        d = make(N=6, band_limit=2)
        assert d.N == 6 and not hasattr(d, "n_rotations") and "N=6" in repr(d)
    assert GroupDensity.for_group(groups.Rotations(8), 2).N == 8
    for fn in (polar_points, draw_lambdas):
        assert "N" in inspect.signature(fn).parameters
        assert "n_rotations" not in inspect.signature(fn).parameters


def test_one_rotate():
    """Images turn by ``equilib.groups.rotate`` (``mode="cubic"`` where measure needs a smooth
    derivative); measure has no rotation of its own."""
    assert getattr(measure, "rotate", groups.rotate) is groups.rotate
    assert "rotate" not in measure.__all__ and "rotate" in groups.__all__
    assert set(groups.ROTATE_MODES) == {"bilinear", "nearest", "cubic"}
