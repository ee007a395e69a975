"""Learning the degree of equivariance: densities over groups and partial group convolutions.

Veefkind and Cesa (2024): every layer has a band-limited density lambda over a rotation group
and uses the lambda-weighted group average of its kernel; uniform lambda is an equivariant layer,
lambda at the identity an unconstrained one.

Modules: ``density`` (band-limited densities over C_N, SO(2), D_N, O(2)), ``layers`` (partial
lifting and group convolutions), ``model`` (the partial G-CNN, its regulariser, and ``build``,
the models of the experiments), ``training`` (training through ``equilib.train.fit``,
experiments), ``marglik`` (lambda by the Laplace
evidence), ``cli`` (the ``python -m equilib degree`` command).
"""

from equilib.degree.density import (
    GroupDensity,
    kl_divergence,
    kl_to_uniform,
    normalized_entropy,
    project_logits,
)
from equilib.degree.layers import (
    PartialGroupConv,
    PartialLiftingConv,
    group_angles_flips,
    make_group,
)
from equilib.degree.model import PartialGCNN, degree_regulariser, layer_densities, layer_entropies
from equilib.degree.training import run_experiment, train_degree

__all__ = [
    "GroupDensity",
    "kl_divergence",
    "kl_to_uniform",
    "normalized_entropy",
    "project_logits",
    "PartialGroupConv",
    "PartialLiftingConv",
    "group_angles_flips",
    "make_group",
    "PartialGCNN",
    "degree_regulariser",
    "layer_densities",
    "layer_entropies",
    "run_experiment",
    "train_degree",
]
