"""Laplace approximations of the posterior and the log marginal likelihood (the evidence).

    log p(D | delta) ~ log p(D | theta*) - 1/2 [ log det P - log det P0 + theta*^T P0 theta* ]

with ``P = H / (sigma^2 T) + P0`` the posterior precision, ``H`` the GGN of the summed negative
log likelihood (unit noise) at ``theta*``, ``P0 = diag(delta)`` with one prior precision
``delta_l`` per trainable parameter tensor (``model.named_parameters()`` order), ``sigma`` the
regression noise (1 for classification) and ``T`` the temperature. The API mirrors laplace-torch:
``la = KronLaplace(model, "classification"); la.fit(loader); la.log_marginal_likelihood(delta)``.

``fit`` runs the data once, storing the curvature (eigenvalues for Kron / Diag, the dense matrix
for Full) and the summed loss at ``theta*``; ``log_marginal_likelihood`` is then a cheap function
of ``prior_precision`` and ``sigma_noise``, differentiable in both (the curvature is fixed).

The log marginal likelihood equals laplace-torch's (``tests/test_laplace_parity.py``: MLP and
CNN, full / diag / kron, classification and regression; its ASDL and Curvlinops backends).
Where equilib differs on purpose:

* everything after ``likelihood`` is keyword-only (laplace-torch's positional order would port
  silently wrong), and ``likelihood`` defaults to ``"classification"``;
* only ``subset_of_weights="all"``, the default of the ``Laplace`` factory (laplace-torch's is
  ``"last_layer"``): model selection needs the evidence of every layer;
* ``prior_precision`` is a scalar or one value per parameter tensor (laplace-torch's
  ``"layerwise"``; no per-parameter diagonal) and the prior mean is zero;
* no predictive distribution (no ``pred_type``, no ``__call__``); ``optimize_prior_precision``
  knows ``"marglik"`` and MacKay's ``"mackay"`` (no grid search);
* the Kronecker factors of a convolution follow KFAC-expand (as laplace-torch's ASDL and
  Curvlinops backends do; its BackPack backend does not), with exact log-determinants.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch
from torch import nn

from equilib.laplace.backprop import CurvatureBackend, per_example_grads
from equilib.laplace.curvature import inspect_model, layer_inputs
from equilib.laplace.kfac import KronFactors, kron_layer_inputs
from equilib.laplace.output_hessian import FitChecks, check_likelihood_and_hessian

__all__ = ["BaseLaplace", "FullLaplace", "DiagLaplace", "KronLaplace", "Laplace"]


class BaseLaplace:
    """Shared logic: likelihood, prior, fit loop over a loader, evidence and MacKay's update.

    model: an ``nn.Module`` built from supported primitives (see ``equilib.laplace.curvature``).
    likelihood: ``"classification"`` (softmax cross-entropy, outputs (B, C) logits) or
    ``"regression"`` (Gaussian with ``sigma_noise``, outputs (B, D)).
    Everything after ``likelihood`` is keyword-only: laplace-torch's positional order is
    ``sigma_noise`` before ``prior_precision``, so a ported positional call raises a TypeError
    instead of setting the wrong hyperparameter.
    prior_precision: a positive scalar or a 1-D tensor with one value per trainable tensor.
    hessian: ``"ggn"`` (exact output Hessian), ``"mc"`` (Monte-Carlo Fisher, one sampled label)
    or ``"ef"`` (empirical Fisher).
    logdet_dtype: dtype of the eigen/Cholesky decompositions and of the evidence (float64).
    generator: random numbers of the MC Fisher. vectorize: push all output-Hessian columns back
    in one batched backward (``is_grads_batched``) instead of one backward per column.
    bottleneck: ``'auto'`` finds the submodule that produces the output from the narrowest input
    (e.g. an MLP head after global pooling); when that input has D < K values per example, only
    min(D, K) columns travel further back (exact for every block of Kron and Diag; see
    ``curvature.backprop_rows``). None switches it off; a submodule name forces it.

    ``backend`` (``equilib.laplace.backprop.CurvatureBackend``) gives the loss and the rows of
    every primitive layer per batch; ``fit`` accumulates them into the class's curvature.
    """

    _blockwise = True  # only blocks of the GGN are needed (False for the dense FullLaplace)
    _strided = False  # only g g^T summed over rows is needed (KFAC): see Recorder.strided_outputs
    _input_rows = staticmethod(layer_inputs)  # what _accumulate takes of the recorded inputs

    def __init__(
        self,
        model: nn.Module,
        likelihood: str = "classification",
        *,
        sigma_noise=1.0,
        prior_precision=1.0,
        temperature: float = 1.0,
        hessian: str = "ggn",
        logdet_dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
        vectorize: bool = False,
        bottleneck: str | None = "auto",
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_likelihood_and_hessian(likelihood, hessian)
        if isinstance(temperature, torch.Tensor) and temperature.numel() == 1:
            temperature = float(temperature)
        if not (
            isinstance(temperature, numbers.Real)
            and not isinstance(temperature, bool)
            and math.isfinite(temperature)
            and temperature > 0
        ):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if logdet_dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"logdet_dtype must be torch.float32 or torch.float64, got {logdet_dtype!r}"
            )
        self.model = model
        self.likelihood = likelihood
        self.hessian = hessian
        self.temperature = float(temperature)
        self.logdet_dtype = logdet_dtype
        self.generator = generator
        self.vectorize = bool(vectorize)
        if bottleneck not in (None, "auto") and bottleneck not in dict(model.named_modules()):
            raise ValueError(
                f"bottleneck must be None, 'auto' or a submodule name of the model, "
                f"got {bottleneck!r}"
            )
        self.bottleneck = bottleneck
        self.params, self.layers = inspect_model(model)
        # the tensors the prior and the curvature are about, fixed here (see _check_tensors)
        self._tensors = [p for p in model.parameters() if p.requires_grad]
        self.backend = CurvatureBackend(
            model,
            self.layers,
            likelihood,
            hessian,
            generator=generator,
            vectorize=self.vectorize,
            bottleneck=bottleneck,
            blockwise=self._blockwise,
            strided=self._strided,
            input_rows=self._input_rows,
            loss_dtype=logdet_dtype,
        )
        self.param_names = [p.name for p in self.params]
        first = next(p for p in model.parameters() if p.requires_grad)
        self.device, self.dtype = first.device, first.dtype
        self.n_tensors = len(self.params)
        self.numels = [p.numel for p in self.params]
        self.n_params = sum(self.numels)
        self._numel_t = torch.tensor(self.numels, device=self.device, dtype=logdet_dtype)
        self.prior_precision = prior_precision
        self.sigma_noise = sigma_noise
        self.n_data = 0
        self.n_outputs = 0
        self.loss = None
        self._fitted = False

    # ---------------------------------------------------------------- hyperparameters ----
    @property
    def prior_precision(self) -> torch.Tensor:
        """Per-tensor prior precisions delta: (n_tensors,) (autograd graph kept)."""
        return self._prior_precision

    @prior_precision.setter
    def prior_precision(self, value) -> None:
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value, dtype=self.logdet_dtype)
        delta = value.to(self.device)
        if not torch.is_floating_point(delta):
            delta = delta.to(self.logdet_dtype)
        if delta.dim() == 0 or (delta.dim() == 1 and delta.numel() == 1):
            delta = delta.reshape(1).expand(self.n_tensors)
        elif delta.dim() != 1 or delta.numel() != self.n_tensors:
            raise ValueError(
                f"prior_precision must be a scalar or a 1-D tensor with one value per trainable "
                f"parameter tensor: expected {self.n_tensors} values for {self.param_names}, got "
                f"shape {tuple(delta.shape)}"
            )
        if not bool(torch.all(torch.isfinite(delta) & (delta > 0))):
            bad = [n for n, d in zip(self.param_names, delta.tolist()) if not (0 < d < math.inf)]
            raise ValueError(
                f"prior_precision must be positive and finite; got non-positive or non-finite "
                f"values for {bad}"
            )
        self._prior_precision = delta

    @property
    def sigma_noise(self) -> torch.Tensor:
        """Observation noise standard deviation (regression; 1 for classification)."""
        return self._sigma_noise

    @sigma_noise.setter
    def sigma_noise(self, value) -> None:
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value, dtype=self.logdet_dtype)
        sigma = value.to(self.device)
        if not torch.is_floating_point(sigma):
            sigma = sigma.to(self.logdet_dtype)
        if sigma.numel() != 1:
            raise ValueError(f"sigma_noise must be a scalar, got shape {tuple(sigma.shape)}")
        sigma = sigma.reshape(())
        if not bool(torch.isfinite(sigma) & (sigma > 0)):
            raise ValueError(f"sigma_noise must be positive and finite, got {float(sigma)}")
        if self.likelihood == "classification" and float(sigma) != 1.0:
            raise ValueError("sigma_noise must be 1 for classification (it has no noise scale)")
        self._sigma_noise = sigma

    @property
    def _H_factor(self) -> torch.Tensor:
        """1 / (sigma^2 T): the factor multiplying the unit-noise GGN in the posterior."""
        return 1.0 / (self.sigma_noise.to(self.logdet_dtype) ** 2 * self.temperature)

    def _delta(self) -> torch.Tensor:
        return self.prior_precision.to(self.logdet_dtype)

    @property
    def prior_precision_diag(self) -> torch.Tensor:
        """delta expanded to one value per parameter: (n_params,)."""
        return torch.repeat_interleave(self._delta(), self._numel_t.long())

    # ---------------------------------------------------------------------------- fit ----
    def fit(self, loader: Iterable) -> BaseLaplace:
        """Compute the curvature and the summed loss at the current parameters over ``loader``.

        loader: iterable of (X, y) batches, e.g. a DataLoader. Batches are moved to the model's
        device (floating inputs cast to its dtype). Returns self. Per batch the backend gives the
        summed loss and the rows of every layer, which ``_accumulate`` adds to the curvature.
        Classification labels must lie in ``[0, C)``: an ignore index such as -100 would drop an
        example from the likelihood but not from the curvature, so it is refused (drop such
        examples from the loader); regression targets must be finite. Both are checked once
        after the pass over the data (``FitChecks``: no device synchronisation per batch).
        """
        self._check_tensors()
        was_training = self.model.training
        self.model.eval()
        self._init_curvature()
        loss = torch.zeros((), device=self.device, dtype=self.logdet_dtype)
        checks = FitChecks(self.likelihood, self.device)
        try:
            for X, y in self._batches(loader):
                with self.backend.batch(X, y) as batch:
                    checks.add(batch.outputs, batch.targets, X.shape[0])
                    loss = loss + batch.loss
                    for first, grads in enumerate(batch.grads):
                        self._accumulate(batch.inputs, grads, first == 0)
        finally:
            self.model.train(was_training)
        checks.raise_problems(
            lambda: self.backend.where_nonfinite(self._to_model(b[0]) for b in loader)
        )
        self.n_data, self.n_outputs = checks.n_data, checks.n_outputs
        self.loss = loss
        self._sqnorm = self._weight_sqnorms()
        self._finalize()
        self._fitted = True
        return self

    def _batches(self, loader: Iterable):
        """The (X, y) batches of ``loader`` on the model's device."""
        for i, batch in enumerate(loader):
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise TypeError("the loader must yield (X, y) batches")
            if len(batch[0]) == 0:
                raise ValueError(f"batch {i} of the loader holds no examples")
            yield self._to_model(batch[0]), batch[1].to(self.device)

    def _to_model(self, X: torch.Tensor) -> torch.Tensor:
        """A batch of inputs on the model's device (floating inputs in its dtype)."""
        return X.to(self.device, dtype=self.dtype if torch.is_floating_point(X) else None)

    def _check_tensors(self) -> None:
        """Refuse to fit when the model's trainable tensors are no longer those this object was
        built for (``requires_grad`` switched since): its prior and curvature layout are theirs."""
        now = [p for p in self.model.parameters() if p.requires_grad]
        if [id(p) for p in now] != [id(p) for p in self._tensors]:
            names = {id(p): n for n, p in self.model.named_parameters()}
            before = {names.get(id(p), "?") for p in self._tensors}
            after = {names.get(id(p), "?") for p in now}
            raise ValueError(
                "the model's trainable parameters changed since this "
                f"{type(self).__name__} was built (now trainable: {sorted(after - before)}; "
                f"no longer: {sorted(before - after)}); build a new one for the model as it is"
            )

    def _weight_sqnorms(self) -> torch.Tensor:
        """Per trainable tensor, its squared norm now: (n_tensors,) in ``logdet_dtype``."""
        with torch.no_grad():
            return torch.stack(
                [p.detach().to(self.logdet_dtype).pow(2).sum() for p in self._tensors]
            )

    @property
    def fitted_here(self) -> bool:
        """Whether :meth:`fit` has run and the model's weights are still the ones it was fit at
        (judged by every tensor's squared norm, exactly; a curvature reused after the weights
        moved on would describe another point)."""
        if not self._fitted:
            return False
        now = self._weight_sqnorms()
        return now.shape == self._sqnorm.shape and bool(torch.equal(now, self._sqnorm))

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError(f"call {type(self).__name__}.fit(loader) first")

    def _check_finite(self, tensor: torch.Tensor, index: int | None, what: str) -> None:
        if not bool(torch.isfinite(tensor).all()):
            where = (
                f"parameter {self.params[index].name!r} (module {self.params[index].module_name!r})"
                if index is not None
                else "the model"
            )
            raise ValueError(f"the curvature ({what}) of {where} contains NaN or inf")

    # subclasses
    def _init_curvature(self) -> None:
        raise NotImplementedError

    def _accumulate(self, inputs, grads, first: bool) -> None:
        """Add one chunk of output-Hessian columns of one batch.

        inputs: per layer, per call, a: (B, R, G, D_in) (the same for every chunk of a batch);
        grads: per layer, per call, g: (k, B, R, G, D_out); first: first chunk of the batch.
        """
        raise NotImplementedError

    def _finalize(self) -> None:
        raise NotImplementedError

    @property
    def log_det_posterior_precision(self) -> torch.Tensor:
        raise NotImplementedError

    def _posterior_trace_terms(self) -> torch.Tensor:
        """Per tensor l: sum over its parameters of delta_l * Sigma_ii, (n_tensors,)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------ evidence ----
    @property
    def log_likelihood(self) -> torch.Tensor:
        """log p(D | theta*) = -loss / (sigma^2 T) - N D log(sigma sqrt(2 pi)) (regression)."""
        self._check_fitted()
        ll = -self._H_factor * self.loss
        if self.likelihood == "regression":
            sigma = self.sigma_noise.to(self.logdet_dtype)
            ll = ll - self.n_data * self.n_outputs * torch.log(sigma * math.sqrt(2 * math.pi))
        return ll

    @property
    def scatter(self) -> torch.Tensor:
        """theta*^T P0 theta* = sum_l delta_l |theta_l|^2."""
        self._check_fitted()
        return (self._delta() * self._sqnorm).sum()

    @property
    def log_det_prior_precision(self) -> torch.Tensor:
        """log det P0 = sum_l n_l log delta_l."""
        return (self._numel_t * torch.log(self._delta())).sum()

    @property
    def log_det_ratio(self) -> torch.Tensor:
        """log det P - log det P0."""
        return self.log_det_posterior_precision - self.log_det_prior_precision

    def log_marginal_likelihood(self, prior_precision=None, sigma_noise=None) -> torch.Tensor:
        """Laplace log evidence, a scalar differentiable in ``prior_precision`` and ``sigma_noise``.

        log p(D) ~ log p(D|theta*) - 1/2 (log det P - log det P0 + theta*^T P0 theta*).
        Arguments, when given, replace the stored hyperparameters (as in laplace-torch).
        """
        self._check_fitted()
        if prior_precision is not None:
            self.prior_precision = prior_precision
        if sigma_noise is not None:
            self.sigma_noise = sigma_noise
        return self.log_likelihood - 0.5 * (self.log_det_ratio + self.scatter)

    # --------------------------------------------------------- effective dimensions ----
    def effective_dimensions(self) -> torch.Tensor:
        """Per-tensor effective number of parameters gamma_l = n_l - delta_l tr_l(Sigma).

        For Kron / Diag this is sum_i lambda_i / (lambda_i + delta_l) over the eigenvalues of
        the tensor's (scaled) curvature block. Shape (n_tensors,).
        """
        self._check_fitted()
        return self._numel_t - self._posterior_trace_terms()

    def mackay_update(self) -> torch.Tensor:
        """One MacKay fixed-point step delta_l <- gamma_l / |theta_l|^2 (stored and returned)."""
        with torch.no_grad():
            gamma = self.effective_dimensions().detach()
            new = gamma / self._sqnorm.clamp_min(torch.finfo(self._sqnorm.dtype).tiny)
            new = new.clamp_min(torch.finfo(torch.float32).tiny)
        self.prior_precision = new
        return new

    def optimize_prior_precision(
        self, *, method: str = "marglik", n_steps: int = 100, lr: float = 0.1
    ) -> torch.Tensor:
        """Maximise the evidence in delta: ``method="marglik"`` (laplace-torch's name: Adam on
        log delta with learning rate ``lr``) or ``"mackay"`` (MacKay's fixed-point steps, an
        equilib addition). Keyword-only: laplace-torch's first positional argument is
        ``pred_type``, which has no counterpart here (no predictive is formed). Returns and
        stores the new per-tensor precisions."""
        self._check_fitted()
        if method == "mackay":
            for _ in range(n_steps):
                self.mackay_update()
            return self.prior_precision
        if method != "marglik":
            raise ValueError(f"method must be one of ('marglik', 'mackay'), got {method!r}")
        log_delta = self._delta().detach().log().clone().requires_grad_(True)
        opt = torch.optim.Adam([log_delta], lr=lr)
        for _ in range(n_steps):
            opt.zero_grad()
            loss = -self.log_marginal_likelihood(log_delta.exp())
            loss.backward()
            opt.step()
        self.prior_precision = log_delta.detach().exp()
        return self.prior_precision


class _EigenLaplace(BaseLaplace):
    """Laplace whose curvature is a list of eigenvalues per tensor (diagonal and Kronecker)."""

    def _set_eigenvalues(self, lams: list[torch.Tensor]) -> None:
        """lams: per tensor l, the n_l eigenvalues of its (unit-noise) curvature block."""
        for i, lam in enumerate(lams):
            self._check_finite(lam, i, "eigenvalues")
        # kept per tensor: each term below is then one fused pass over a tensor's eigenvalues
        # with its own scalar delta_l, whose gradient is a plain sum (gathering delta per
        # eigenvalue and scattering its gradient back cost 3x more on a million eigenvalues).
        # Zero eigenvalues (a third of a wide FC layer's Kronecker products: its input factor
        # has rank at most the number of examples) are only counted: each adds log delta_l to
        # log det P and exactly 1 to the posterior trace term.
        lams = [lam.reshape(-1).to(self.logdet_dtype) for lam in lams]
        self._lams = [lam[lam > 0] for lam in lams]
        self._n_zero = torch.tensor(
            [lam.numel() - pos.numel() for lam, pos in zip(lams, self._lams)],
            device=self.device,
            dtype=self.logdet_dtype,
        )

    @property
    def log_det_posterior_precision(self) -> torch.Tensor:
        """log det P = sum_i log(lambda_i / (sigma^2 T) + delta_{l(i)})."""
        self._check_fitted()
        h, delta = self._H_factor, self._delta()
        positive = torch.stack(
            [torch.log(h * lam + delta[i]).sum() for i, lam in enumerate(self._lams)]
        )
        return (positive + self._n_zero * torch.log(delta)).sum()

    def _posterior_trace_terms(self) -> torch.Tensor:
        h, delta = self._H_factor, self._delta()
        return (
            torch.stack(
                [(delta[i] / (h * lam + delta[i])).sum() for i, lam in enumerate(self._lams)]
            )
            + self._n_zero
        )


class KronLaplace(_EigenLaplace):
    """Laplace with a KFAC (Kronecker-factored) GGN per parameter tensor.

    Weight blocks: ``B (x) A`` per (group of a) layer, bias blocks: ``B`` (see
    ``equilib.laplace.kfac``). The log-determinant is exact for Kronecker plus isotropic prior:
    log det(B (x) A / (sigma^2 T) + delta I) = sum_ij log(lB_i lA_j / (sigma^2 T) + delta),
    from one eigendecomposition of each factor made in ``fit``.
    """

    _strided = True
    _input_rows = staticmethod(kron_layer_inputs)  # a circular conv's input factor needs no rows

    def _init_curvature(self) -> None:
        for layer in self.layers:
            if not layer.primitive.kronecker:
                raise ValueError(
                    f"module {layer.name!r} ({type(layer.module).__name__}) has no Kronecker "
                    "factors: its parameters enter through a map of the weight its rows see; "
                    "use FullLaplace or DiagLaplace"
                )
        self._kron = KronFactors(self.layers)

    def _accumulate(self, inputs, grads, first: bool) -> None:
        if first:
            self._kron.update_inputs(inputs)
        self._kron.update_grads(grads)

    def _finalize(self) -> None:
        lams: list[torch.Tensor | None] = [None] * self.n_tensors
        self._factors = None
        self.eigenvalues = {}
        for li, layer in enumerate(self.layers):
            first = layer.weight if layer.weight is not None else layer.bias
            self._kron._check(li)
            for what, acc in (("A", self._kron.A[li]), ("B", self._kron.B[li])):
                if not acc.empty() and not acc.finite():
                    raise ValueError(
                        f"the curvature (KFAC factor {what}) of parameter "
                        f"{self.param_names[first]!r} (module {layer.name!r}, "
                        f"{type(layer.module).__name__}) contains NaN or inf"
                    )
            lA, lB = self._kron.eigenvalues(li, self.logdet_dtype)
            if layer.weight is not None:
                lams[layer.weight] = (lB.unsqueeze(-1) * lA.unsqueeze(-2)).reshape(-1)
                self.eigenvalues[self.param_names[layer.weight]] = (lA, lB)
            if layer.bias is not None:
                lams[layer.bias] = lB.reshape(-1)
                self.eigenvalues[self.param_names[layer.bias]] = (None, lB)
        self._set_eigenvalues(lams)  # type: ignore[arg-type]

    @property
    def factors(self) -> dict[str, tuple[torch.Tensor | None, torch.Tensor]]:
        """Per parameter name, the KFAC factors (A, B): A (G, D_in, D_in) the mean of a a^T
        over rows (None for a bias), B (G, D_out, D_out) the sum of g g^T."""
        self._check_fitted()
        if self._factors is None:
            self._factors = {}
            for li, layer in enumerate(self.layers):
                A, B = self._kron.factors(li)
                if layer.weight is not None:
                    self._factors[self.param_names[layer.weight]] = (A, B)
                if layer.bias is not None:
                    self._factors[self.param_names[layer.bias]] = (None, B)
        return self._factors

    def ggn_block(self, name: str) -> torch.Tensor:
        """The dense KFAC approximation of the unit-noise GGN block of one tensor: (n, n).

        Block diagonal over groups of ``B_g (x) A_g`` (weights) or ``B_g`` (biases).
        """
        self._check_fitted()
        if name not in self.factors:
            raise KeyError(f"unknown parameter {name!r}; expected one of {self.param_names}")
        A, B = self.factors[name]
        blocks = [B[g] if A is None else torch.kron(B[g], A[g]) for g in range(B.shape[0])]
        return torch.block_diag(*blocks)


class DiagLaplace(_EigenLaplace):
    """Laplace with the exact diagonal of the GGN (from per-example gradients)."""

    def _init_curvature(self) -> None:
        self._diag: list[torch.Tensor | None] = [None] * self.n_tensors

    def _accumulate(self, inputs, grads, first: bool) -> None:
        for li, layer in enumerate(self.layers):
            if not inputs[li] or grads[li] is None:
                continue
            if (
                len(inputs[li]) == 1
                and inputs[li][0].shape[1] == 1
                and layer.weight is not None
                and layer.primitive.param_grad is None
            ):
                a, g = inputs[li][0][:, 0], grads[li][0][:, :, 0]  # one row per example:
                g2 = g**2  # the diagonal of sum (g a^T)^2 factorises
                self._add(layer.weight, torch.einsum("kbgo,bgi->goi", g2, a**2).reshape(-1))
                if layer.bias is not None:
                    self._add(layer.bias, g2.sum((0, 1)).reshape(-1))
                continue
            for idx, G in per_example_grads(layer, inputs[li], grads[li], self.params).items():
                self._add(idx, G.pow(2).sum((0, 1)))

    def _add(self, idx: int, d: torch.Tensor) -> None:
        self._diag[idx] = d if self._diag[idx] is None else self._diag[idx] + d

    def _finalize(self) -> None:
        for i, d in enumerate(self._diag):
            if d is None:
                raise ValueError(
                    f"parameter {self.param_names[i]!r} was never used in the forward pass"
                )
        self.H = torch.cat([d.reshape(-1) for d in self._diag])  # type: ignore[union-attr]
        self._set_eigenvalues(self._diag)  # type: ignore[arg-type]


class FullLaplace(BaseLaplace):
    """Laplace with the dense GGN ``H = sum_n J_n^T Lambda_n J_n``: (P, P). For small models.

    ``H`` is summed in ``logdet_dtype``: summed in float32, the rounding of thousands of
    rank-one terms leaves it with eigenvalues below zero of the order of 1e-5, and the
    Cholesky factor of the posterior precision fails for small prior precisions."""

    _blockwise = False

    def _init_curvature(self) -> None:
        self.H = torch.zeros(
            self.n_params, self.n_params, device=self.device, dtype=self.logdet_dtype
        )
        self._offsets = [0]
        for n in self.numels:
            self._offsets.append(self._offsets[-1] + n)

    def _accumulate(self, inputs, grads, first: bool) -> None:
        G = None
        for li, layer in enumerate(self.layers):
            if not inputs[li]:
                continue
            for idx, Gi in per_example_grads(layer, inputs[li], grads[li], self.params).items():
                if G is None:
                    G = Gi.new_zeros(Gi.shape[0], Gi.shape[1], self.n_params)
                G[:, :, self._offsets[idx] : self._offsets[idx + 1]] += Gi
        if G is not None:
            G = G.reshape(-1, self.n_params).to(self.H.dtype)
            self.H += G.transpose(0, 1) @ G

    def _finalize(self) -> None:
        for i in range(self.n_tensors):
            block = self.H[self._offsets[i] : self._offsets[i + 1]]
            self._check_finite(block, i, "GGN rows")
        self._H64 = self.H

    @property
    def posterior_precision(self) -> torch.Tensor:
        """P = H / (sigma^2 T) + diag(delta): (P, P)."""
        self._check_fitted()
        return self._H_factor * self._H64 + torch.diag(self.prior_precision_diag)

    @property
    def log_det_posterior_precision(self) -> torch.Tensor:
        """log det P from a Cholesky factor."""
        Lc = torch.linalg.cholesky(self.posterior_precision)
        return 2 * torch.log(torch.diagonal(Lc)).sum()

    def _posterior_trace_terms(self) -> torch.Tensor:
        Sigma_diag = torch.diagonal(
            torch.cholesky_inverse(torch.linalg.cholesky(self.posterior_precision))
        )
        idx = torch.repeat_interleave(
            torch.arange(self.n_tensors, device=self.device), self._numel_t.long()
        )
        per = torch.zeros(self.n_tensors, device=self.device, dtype=Sigma_diag.dtype)
        return per.index_add(0, idx, Sigma_diag) * self._delta()


def Laplace(
    model: nn.Module,
    likelihood: str,
    *,
    subset_of_weights: str = "all",
    hessian_structure: str = "kron",
    **kwargs,
) -> BaseLaplace:
    """Factory like laplace-torch's: ``Laplace(model, likelihood, subset_of_weights="all",
    hessian_structure="kron", **kwargs)`` with ``hessian_structure`` in {'full', 'diag',
    'kron'}; ``kwargs`` go to the class (``sigma_noise``, ``prior_precision``, ...).

    Differs on purpose: only ``subset_of_weights="all"`` exists (model selection needs the
    evidence of every layer), so it is the default where laplace-torch's is ``"last_layer"``;
    everything after ``likelihood`` is keyword-only.
    """
    if subset_of_weights != "all":
        raise ValueError(
            f"subset_of_weights must be 'all' (the only subset equilib supports; laplace-torch "
            f"also has 'last_layer' and 'subnetwork'), got {subset_of_weights!r}"
        )
    classes = {"full": FullLaplace, "diag": DiagLaplace, "kron": KronLaplace}
    if hessian_structure not in classes:
        raise ValueError(
            f"hessian_structure must be one of {sorted(classes)}, got {hessian_structure!r}"
        )
    return classes[hessian_structure](model, likelihood, **kwargs)
