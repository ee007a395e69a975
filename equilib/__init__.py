"""equilib: learning symmetry from data.

A small PyTorch library taught by the course in ``book/``: groups acting on images,
(soft-)equivariant layers, Laplace marginal likelihoods, and training loops that learn
which symmetry each layer should have.
"""

from equilib._config import default_device, fast_mode, seed_everything

__version__ = "0.1.0"

__all__ = ["default_device", "fast_mode", "seed_everything", "__version__"]
