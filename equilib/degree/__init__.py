"""Learning the degree of equivariance: densities over groups and partial group convolutions.

Veefkind and Cesa (2024): every layer has a band-limited density lambda over a rotation group
and uses the lambda-weighted group average of its kernel; uniform lambda is an equivariant layer,
lambda at the identity an unconstrained one.
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
]
