"""Laplace approximations and the log marginal likelihood of equilib models.

``FullLaplace`` (dense GGN), ``DiagLaplace`` (its exact diagonal) and ``KronLaplace`` (KFAC), with
the API of laplace-torch::

    la = KronLaplace(model, likelihood="classification", prior_precision=1.0)
    la.fit(train_loader)
    lml = la.log_marginal_likelihood(log_delta.exp())   # differentiable in delta (and sigma)

Everything after ``likelihood`` is keyword-only (laplace-torch's positional order differs), and
``Laplace(model, likelihood, subset_of_weights="all", hessian_structure="kron")`` is the factory.

``fit`` stores the summed loss at the fitted weights (``la.loss``, ``la.log_likelihood``) and the
curvature; every later ``log_marginal_likelihood`` call is cheap (a sum of logs for Kron / Diag).

Options shared by the three classes: ``hessian="ggn"`` (exact output Hessian, default) /
``"mc"`` (one sampled label, one backward pass per batch) / ``"ef"`` (empirical Fisher);
``logdet_dtype`` (float64); ``temperature``; ``bottleneck="auto"`` (push fewer columns past a
narrow head input, exact for Kron / Diag). Per-tensor ``effective_dimensions()``,
``mackay_update()`` and ``optimize_prior_precision()``.

KFAC conventions (``kfac.py``): weight block ``B (x) A`` with ``A`` the mean of ``a a^T`` over all
rows (examples x locations x stacked copies) and ``B`` the sum of ``g g^T``; a bias is its own
block with the single factor ``B``. Supported primitives: ``nn.Linear``, ``nn.Conv2d``
(groups=1, dilation=1; any padding mode and stride), ``equilib.nn.GroupedLinear`` (one factor
pair per group; F-FC and S-FC are two of them), ``equilib.nn.BasisConv2d`` (``a = basis @
patch``), inner convolutions of lifting / group convolutions applied to stacked copies,
``LiftingConvCN`` / ``GroupConvCN``, and (Full and Diag only, with the density frozen) the
partial group convolutions of ``equilib.degree``.
Any other module owning trainable parameters (and any BatchNorm) raises a ValueError naming it,
and so does a parameter shared by two modules. A parameter must enter the model's output only
through the call of the module that owns it: one also used outside it (a tied decoder's
``F.linear(h, encoder.weight.t())``) is not detected, and its curvature misses that use.
``optimize_prior_precision`` learns one precision per tensor, starting from the current ones
(laplace-torch restarts from ``init_prior_prec`` and takes a ``prior_structure``); the dense
``posterior_precision`` is a ``FullLaplace`` attribute only. The approximation serves the
evidence and its gradients: there is no posterior predictive (laplace-torch's
``la(x, pred_type=..., link_approx=...)``, ``predictive_samples``, ``sample``); for one, fit
laplace-torch on the trained model.

The curvature backend is separate from the Laplace logic (``laplace.py``): ``curvature.py``
(which module owns each parameter; one registry entry per layer type with its input and output
rows, ``register_primitive``), ``output_hessian.py`` (roots of the loss Hessian in the outputs,
target checks), ``backprop.py`` (``CurvatureBackend``: per batch, the loss and the rows of every
layer, from the recorder and the backward passes) and ``kfac.py`` (Kronecker
factors; ``reference_kfac.py`` computes the same factors of Linear and Conv2d layers in one
screen, as chapter 06 shows). Exact evidence of linear models in ``linear.py`` (chapter 05).
"""

from equilib.laplace import linear
from equilib.laplace.curvature import inspect_model, register_primitive
from equilib.laplace.kfac import kron_logdet
from equilib.laplace.laplace import BaseLaplace, DiagLaplace, FullLaplace, KronLaplace, Laplace
from equilib.laplace.output_hessian import output_hessian_sqrt
from equilib.laplace.reference_kfac import reference_kfac

__all__ = [
    "BaseLaplace",
    "DiagLaplace",
    "FullLaplace",
    "KronLaplace",
    "Laplace",
    "inspect_model",
    "kron_logdet",
    "linear",
    "output_hessian_sqrt",
    "reference_kfac",
    "register_primitive",
]
