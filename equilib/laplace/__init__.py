"""Laplace approximations and the log marginal likelihood of equilib models.

``FullLaplace`` (dense GGN), ``DiagLaplace`` (its exact diagonal) and ``KronLaplace`` (KFAC), with
the API of laplace-torch::

    la = KronLaplace(model, likelihood="classification", prior_precision=1.0)
    la.fit(train_loader)
    lml = la.log_marginal_likelihood(log_delta.exp())   # differentiable in delta (and sigma)

The curvature backend (hooks, output-Hessian roots, KFAC factors) lives in ``curvature.py`` and
``kfac.py``; the Laplace logic in ``laplace.py``.
"""

from equilib.laplace.curvature import inspect_model, output_hessian_sqrt
from equilib.laplace.kfac import kron_logdet
from equilib.laplace.laplace import BaseLaplace, DiagLaplace, FullLaplace, KronLaplace, Laplace

__all__ = [
    "BaseLaplace",
    "DiagLaplace",
    "FullLaplace",
    "KronLaplace",
    "Laplace",
    "inspect_model",
    "kron_logdet",
    "output_hessian_sqrt",
]
