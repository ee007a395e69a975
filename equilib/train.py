"""Training loop: MAP, and online marginal-likelihood learning of per-tensor prior precisions.

One function, :func:`fit`, trains a classifier either

* by **MAP**: minimise ``mean CE + 1/2 sum_l delta_l |theta_l|^2 / N`` with the prior precisions
  ``delta`` held fixed (the prior acts as a per-tensor weight decay), or
* by **marginal likelihood** (Immer et al. 2021, Algorithm 1): the same MAP steps, and every
  ``marglik_every`` epochs after ``burn_in`` epochs, refit the Kronecker-factored Laplace
  approximation at the current weights and take ``hyper_steps`` Adam steps on ``log delta`` of
  ``-log p(D | delta) / N`` with the curvature held fixed.

It records a :class:`History` (losses, accuracies, log marginal likelihood and every per-tensor
prior precision over time), shows a tqdm bar that works in a terminal and in a notebook, and writes
checkpoints atomically (temporary file, then rename) from which a run resumes exactly; their
format, checks and random state live in :mod:`equilib.checkpoint`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
    default_collate,
)

from equilib._checks import check_positive_int, is_int

# the checkpoint format and its readers live in equilib.checkpoint; the names that code and
# tests read from equilib.train stay importable from here
from equilib.checkpoint import CHECKPOINT_FORMAT as CHECKPOINT_FORMAT
from equilib.checkpoint import CHECKPOINT_KEYS as CHECKPOINT_KEYS
from equilib.checkpoint import (
    check_same_run,
    restore_training_state,
    set_rng_state,
    write_checkpoint,
)
from equilib.checkpoint import load_checkpoint as load_checkpoint
from equilib.checkpoint import save_checkpoint as save_checkpoint

OBJECTIVES = ("map", "marglik")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")


class TrainingDiverged(RuntimeError):
    """Training reached NaN or inf (in the loss, a weight tensor or a prior precision).

    Raised at the end of the epoch where it happened, before anything of that epoch is
    recorded or checkpointed, so a diverged run is never reported or resumed as a result.
    """


def check_labels(y: torch.Tensor, n_classes: int, where: str) -> None:
    """Refuse class labels that are not integers in ``[0, n_classes)`` (e.g. the ignore index
    -100, or 18 for 10 classes) with an error that says which were found."""
    if torch.is_floating_point(y) or torch.is_complex(y) or y.dtype == torch.bool:
        raise ValueError(f"{where}: class labels must be integers, got dtype {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(
            f"{where}: class labels must lie in [0, {n_classes - 1}] (the model "
            f"has {n_classes} outputs), found values from {int(y.min())} to "
            f"{int(y.max())}"
        )


def _check_finite_state(
    epoch: int, loss_sum: torch.Tensor, named, log_delta=None, log_ml: float | None = None
) -> None:
    """Raise :class:`TrainingDiverged` naming the epoch and the first non-finite tensor (or,
    when every tensor is finite, a non-finite log marginal likelihood ``log_ml``)."""
    finite = [torch.isfinite(loss_sum).all()] + [torch.isfinite(p).all() for _, p in named]
    if log_delta is not None:
        finite.append(torch.isfinite(log_delta).all())
    if bool(torch.stack([f.to(finite[0].device) for f in finite]).all()):
        if log_ml is not None and not math.isfinite(log_ml):
            raise TrainingDiverged(
                f"training diverged in epoch {epoch}: the log marginal likelihood is {log_ml}"
            )
        return
    bad = [n for (n, p) in named if not bool(torch.isfinite(p).all())]
    what = [f"the training loss is {float(loss_sum):g}"] if not bool(finite[0]) else []
    if bad:
        what.append(
            f"weight tensor {bad[0]!r}"
            + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
            + " holds NaN or inf"
        )
    if log_delta is not None and not bool(torch.isfinite(log_delta).all()):
        what.append("the learned prior precisions hold NaN or inf")
    raise TrainingDiverged(
        f"training diverged in epoch {epoch}: {'; '.join(what)}. Nothing of this epoch was "
        "recorded or checkpointed; check the inputs for NaN or inf, or lower the learning rate"
    )


@dataclass
class History:
    """What a run recorded, one entry per finished epoch.

    ``prior_precision[e][l]`` is the precision of tensor ``param_names[l]`` at the end of epoch
    ``epoch[e]``; ``log_marglik[e]`` is the log marginal likelihood after that epoch's
    hyperparameter steps (NaN on epochs without a curvature refit); ``seconds[e]`` is the wall
    time spent training up to the end of that epoch (summed over resumed runs), of which
    ``step_seconds[e]`` went into that epoch's pass of gradient steps and ``update_seconds[e]``
    into its hyperparameter update (curvature refit and steps on the precisions; 0 without one).
    """

    param_names: list[str]
    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    log_marglik: list[float] = field(default_factory=list)
    prior_precision: list[list[float]] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    update_seconds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A plain dict of lists (what the checkpoint stores)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> History:
        """Inverse of :meth:`to_dict` (timings that older records lack stay empty)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"not a training history: unknown fields {unknown}")
        return cls(**{k: list(v) for k, v in d.items()})

    def precision_of(self, name: str) -> list[float]:
        """The precision of one tensor over the epochs: a list of length ``len(self.epoch)``."""
        if name not in self.param_names:
            raise KeyError(f"{name!r} is not a parameter of this run; known: {self.param_names}")
        i = self.param_names.index(name)
        return [p[i] for p in self.prior_precision]

    def __len__(self) -> int:
        return len(self.epoch)


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable ``(name, parameter)`` pairs in ``model.named_parameters()`` order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def expand_prior_precision(prior_precision, n_tensors: int) -> torch.Tensor:
    """A scalar or per-tensor precision as a float64 vector of length ``n_tensors`` (all > 0)."""
    delta = torch.as_tensor(prior_precision, dtype=torch.float64).detach().clone().flatten()
    if delta.numel() == 1:
        delta = delta.expand(n_tensors).clone()
    if delta.numel() != n_tensors:
        raise ValueError(
            f"prior_precision must be a scalar or have one value per trainable parameter tensor "
            f"({n_tensors}), got {delta.numel()} values"
        )
    if not bool(torch.all(torch.isfinite(delta) & (delta > 0))):
        raise ValueError(f"prior_precision must be finite and > 0, got {delta.tolist()}")
    return delta


def prior_penalty(params: list[torch.Tensor], delta: torch.Tensor, n_data: int) -> torch.Tensor:
    """The MAP prior term ``1/2 sum_l delta_l |theta_l|^2 / N`` (``delta`` treated as constant)."""
    sq = torch.stack([p.pow(2).sum() for p in params])
    return 0.5 * (sq * delta.detach().to(sq.dtype)).sum() / n_data


def add_prior_grads(params: list[torch.Tensor], delta: torch.Tensor, n_data: int) -> None:
    """Add the gradient of :func:`prior_penalty`, ``delta_l theta_l / N``, to every ``.grad``.

    The same floating-point operations as autograd's backward pass of the penalty, ``2 * ((1 /
    N) * 0.5 * delta_l)`` times ``theta_l`` (doubling is exact), summed onto the gradient that
    is already there: bitwise the gradient of ``loss + prior_penalty``, without recording the
    penalty's graph, whose backward pass takes several passes over every weight (for a dense FC
    network about as long as its optimiser step).
    """
    if not params:
        return
    with torch.no_grad():
        dtype = params[0].dtype
        unit = torch.ones((), dtype=dtype, device=delta.device)
        coef = (unit.div(n_data).mul(0.5) * delta.to(dtype)).mul(2.0)
        for p, c in zip(params, coef):
            g = p * c
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)


def cosine_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    """Cosine annealing from ``lr`` at step 0 to ``lr_min`` at step ``total``."""
    t = min(step, total) / max(total, 1)
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * t))


def evaluate(model: nn.Module, loader, device=None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``loader`` (batches of ``(x, y)``).

    Outputs with NaN or inf raise a ``ValueError``: an accuracy read off them means nothing.
    """
    device = _model_device(model) if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    bad_output = torch.zeros((), dtype=torch.bool, device=device)
    n = 0
    with torch.no_grad():
        for x, y_in in _sliced(loader):
            x, y = x.to(device), y_in.to(device)
            out = model(x)
            if y_in.device.type == "cpu":
                check_labels(y_in, out.shape[-1], "evaluation labels")
            loss += F.cross_entropy(out, y, reduction="sum").double()
            correct += (out.argmax(-1) == y).sum()
            bad_output |= ~torch.isfinite(out).all()
            n += y.shape[0]
    model.train(was_training)
    if n == 0:
        raise ValueError("evaluate() got an empty loader")
    if bool(bad_output):
        raise ValueError(
            "the model's outputs on the evaluated data contain NaN or inf; check "
            "those inputs (and the weights) for NaN or inf"
        )
    return loss.item() / n, correct.item() / n


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall-clock timings on CUDA are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def count_examples(loader) -> int:
    """How many examples ``loader`` yields in one epoch: the ``N`` that divides the prior term.

    A ``DataLoader`` that yields its whole dataset once (see :func:`yields_whole_dataset`) has
    ``len(loader.dataset)``; one whose sampler has a length (a subset, sampling with
    replacement) has that many, less those of a dropped last batch; any other loader is
    counted by iterating it once."""
    if isinstance(loader, DataLoader):
        if yields_whole_dataset(loader):
            n = len(loader.dataset)
        elif type(loader.batch_sampler) is BatchSampler and hasattr(loader.sampler, "__len__"):
            n = len(loader.sampler)
            if loader.drop_last:
                n -= n % loader.batch_size
        else:
            n = None
        if n is not None:
            if n == 0:
                raise ValueError("the training loader yields no examples")
            return n
    else:
        try:
            return len(loader.dataset)
        except (AttributeError, TypeError):
            pass
    n = sum(int(y.shape[0]) for _, y in loader)
    if n == 0:
        raise ValueError("the training loader yields no examples")
    return n


def yields_whole_dataset(loader: DataLoader) -> bool:
    """Whether a ``DataLoader`` yields every example of its dataset once per epoch: sequential
    or random sampling without replacement, the standard batching, no dropped batch."""
    sampler = loader.sampler
    whole = isinstance(sampler, SequentialSampler) or (
        isinstance(sampler, RandomSampler)
        and not sampler.replacement
        and sampler.num_samples == len(loader.dataset)
    )
    return whole and not loader.drop_last and type(loader.batch_sampler) is BatchSampler


# the batches in which fit's curvature refits read the training set, by default
CURVATURE_BATCH_SIZE = 256


def curvature_loader_for(loader, batch_size: int | None):
    """The loader a curvature refit reads: ``loader``'s examples in order, ``batch_size`` at a
    time, when ``loader`` is a ``DataLoader`` that yields its whole dataset once per epoch
    (sequential or random sampling without replacement, no dropped batch); else ``loader``."""
    if batch_size is None or not isinstance(loader, DataLoader):
        return loader
    if not yields_whole_dataset(loader):
        return loader
    if isinstance(loader.dataset, TensorDataset) and loader.collate_fn is default_collate:
        return TensorBatches(loader.dataset, batch_size)
    return DataLoader(
        loader.dataset, batch_size=batch_size, shuffle=False, collate_fn=loader.collate_fn
    )


class TensorBatches:
    """A ``TensorDataset``'s examples in order, ``batch_size`` at a time: the batches a
    sequential ``DataLoader`` collates, copied from slices of the tensors instead of stacked
    example by example (the collation took about a twentieth of a small model's refit)."""

    def __init__(self, dataset: TensorDataset, batch_size: int):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        for i in range(0, n, self.batch_size):
            # copies, as a DataLoader's: a model that changes its input in place cannot
            # change the dataset
            yield tuple(t[i : i + self.batch_size].clone() for t in self.dataset.tensors)


def _sliced(loader):
    """A sequential ``DataLoader``'s batches as :func:`curvature_loader_for` reads them (sliced
    from the tensors of a ``TensorDataset``: the same batches in the same order, without stacking
    them example by example, a tenth of the time of evaluating a small model); any other loader
    as it is."""
    if isinstance(loader, DataLoader) and isinstance(loader.sampler, SequentialSampler):
        return curvature_loader_for(loader, loader.batch_size)
    return loader


def _default_laplace(model: nn.Module, prior_precision: torch.Tensor):
    from equilib.laplace import KronLaplace

    return KronLaplace(model, likelihood="classification", prior_precision=prior_precision)


def fit(
    model: nn.Module,
    train_loader,
    test_loader=None,
    *,
    objective: str = "map",
    epochs: int,
    lr: float = 1e-3,
    lr_min: float = 0.0,
    schedule: str = "cosine",
    warmup: int = 0,
    optimizer: str = "adam",
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    prior_precision=1.0,
    marglik_every: int = 5,
    burn_in: int = 10,
    hyper_steps: int = 20,
    hyper_lr: float = 0.1,
    laplace: Callable | None = None,
    device=None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    seed: int = 0,
    callback: Callable[[int, History, nn.Module], None] | None = None,
    run_info: dict | None = None,
    reparametrize: Callable[[nn.Module], None] | None = None,
    project: Callable[[nn.Module], None] | None = None,
    curvature_batch_size: int | None = CURVATURE_BATCH_SIZE,
) -> History:
    """Train ``model`` on ``train_loader`` by MAP or by online marginal-likelihood learning.

    x: (B, ...) batches from the loaders, y: (B,) class indices; ``model(x)``: (B, n_classes).
    MAP step: minimise ``mean_i CE(f(x_i), y_i) + 1/2 sum_l delta_l |theta_l|^2 / N`` (+
    ``extra_loss(model)``) with ``delta`` detached, learning rate cosine-annealed from ``lr`` to
    ``lr_min`` over all steps (``schedule="constant"``: ``lr`` throughout), and for the first
    ``warmup`` epochs multiplied by a ramp that rises linearly from ``1 / steps`` to 1 over their
    ``steps`` (a start at full rate can leave a network on a plateau for epochs). With
    ``objective="marglik"``, after every epoch ``e`` (1-based) with ``e > burn_in`` and
    ``(e - burn_in) % marglik_every == 0``, and after the last epoch (also when it ends before
    the burn-in does), ``laplace(model, delta)`` is fit on ``train_loader`` and ``hyper_steps``
    Adam steps (lr ``hyper_lr``, state kept across refits) minimise ``-log p(D | delta) / N``
    over ``log delta``. ``laplace`` defaults to ``equilib.laplace.KronLaplace`` for classification.

    In laplace-torch's ``marglik_training`` the same schedule reads: ``epochs`` is
    ``n_epochs``, ``marglik_every`` is ``marglik_frequency``, ``hyper_steps`` is
    ``n_hypersteps``, ``hyper_lr`` is ``lr_hyp``, ``prior_precision`` is ``prior_prec_init``
    (with ``prior_structure="layerwise"``: one precision per tensor). It steps at the epochs
    ``e`` with ``e % marglik_frequency == 0`` and ``e >= n_epochs_burnin``, so ``burn_in=b``
    with ``b`` a multiple of ``marglik_every=k`` matches ``n_epochs_burnin=b + k``. Differs on
    purpose: the extra step after the last epoch, the objective divided by N (Adam barely
    notices), and the model of the last epoch is kept (laplace-torch returns the one with the
    best evidence).

    ``checkpoint``: a file written (atomically) after every epoch; a run that does not resume
    refuses a file that already exists there (it would replace another run's checkpoint). With
    ``resume=True`` the run continues from it exactly (same model, optimizers, precisions,
    history and random state), and it must have been written by a run with the same settings
    and parameter shapes.
    ``run_info`` (any picklable dict, e.g. the experiment's configuration) is stored with the
    checkpoint and must match on resume too. ``callback(epoch, history, model)`` is called after
    every epoch. ``reparametrize(model)``, if given, is called before training and after every
    optimizer step; it either changes the parameters without changing the function (e.g. moves
    the scale of a factored layer from one factor to the other) or puts them back on a
    constraint set (e.g. rows of unit norm). ``project(model)``, if given, is called after every
    backward pass and before the optimizer step, to project the gradients onto what such a
    constraint allows (see ``equilib.discover.UnitRowFactors``). ``curvature_batch_size``: the
    refits read the training set in batches of this size, in order (see
    ``curvature_loader_for``; other loaders are used as they are; None: ``train_loader``). The
    curvature is a sum over examples, so this changes only its rounding, not its value; larger
    batches mean fewer, larger backward passes. Returns the :class:`History`.

    Class labels must be integers in ``[0, n_classes)`` (checked on labels the loader yields
    on the CPU). A loss, weight tensor or prior precision that becomes NaN or inf stops the run
    with :class:`TrainingDiverged`, naming the epoch and the tensor, before that epoch is
    recorded, checkpointed or passed to ``callback``.
    """
    settings = dict(
        objective=objective, epochs=epochs, lr=lr, lr_min=lr_min, schedule=schedule,
        optimizer=optimizer, marglik_every=marglik_every, burn_in=burn_in,
        hyper_steps=hyper_steps, hyper_lr=hyper_lr,
    )  # fmt: skip
    _check_fit_args(
        **settings, warmup=warmup, checkpoint=checkpoint, resume=resume,
        curvature_batch_size=curvature_batch_size,
    )  # fmt: skip
    if warmup:  # absent when 0, so that checkpoints written before the option existed resume
        settings["warmup"] = warmup
    device = _model_device(model) if device is None else torch.device(device)
    model.to(device)
    named = trainable_parameters(model)
    if not named:
        raise ValueError("the model has no trainable parameters")
    params = [p for _, p in named]
    n_data = count_examples(train_loader)
    settings.update(params=[(n, list(p.shape)) for n, p in named], n_data=n_data, run_info=run_info)
    log_delta = expand_prior_precision(prior_precision, len(params)).log().to(device)
    log_delta.requires_grad_(objective == "marglik")
    opt = _optimizer(optimizer, params, lr)
    hyper_opt = torch.optim.Adam([log_delta], lr=hyper_lr) if objective == "marglik" else None
    if resume:
        history, start_epoch = _resume(
            checkpoint, settings, model, opt, log_delta, hyper_opt, train_loader
        )
    else:
        history, start_epoch = History(param_names=[n for n, _ in named]), 0
        torch.manual_seed(seed)
        if reparametrize is not None:
            reparametrize(model)
    lr_at, step = _lr_schedule(train_loader, schedule, epochs, start_epoch, lr, lr_min, warmup)
    elapsed = history.seconds[-1] if history.seconds else 0.0
    # the two steps of Algorithm 1, and the checkpoint, with everything fixed bound in
    map_steps = partial(
        _train_epoch, model, train_loader, opt, params, log_delta, n_data, lr=lr, lr_at=lr_at,
        extra_loss=extra_loss, project=project, reparametrize=reparametrize,
    )  # fmt: skip
    curvature_loader = curvature_loader_for(train_loader, curvature_batch_size)
    evidence_steps = partial(
        _marglik_update, model, curvature_loader, log_delta, hyper_opt, hyper_steps, n_data,
        _default_laplace if laplace is None else laplace,
    )  # fmt: skip
    save = partial(
        write_checkpoint, checkpoint, settings=settings, model=model, optimizer=opt,
        log_prior_precision=log_delta, hyper_optimizer=hyper_opt, loader=train_loader,
    )  # fmt: skip

    has_test = test_loader is not None
    with _progress(progress, epochs, start_epoch, objective, has_test, n_data) as advance:
        for epoch in range(start_epoch + 1, epochs + 1):
            t0 = time.perf_counter()
            # MAP steps: one pass over the data with the prior precisions held fixed
            stats, t_train = _timed(device, map_steps, epoch, step)
            step = stats.step
            _check_finite_state(epoch, stats.loss_sum, named)
            # every marglik_every epochs after the burn-in, and after the last epoch (also when
            # the run ends before the burn-in does): refit the curvature, then the hyper-steps
            log_ml, t_hyper = math.nan, 0.0
            if objective == "marglik" and _refit_after(epoch, epochs, burn_in, marglik_every):
                log_ml, t_hyper = _timed(device, evidence_steps)
                _check_finite_state(epoch, stats.loss_sum, named, log_delta.detach(), log_ml)
            test_acc = evaluate(model, test_loader, device)[1] if has_test else math.nan
            elapsed += time.perf_counter() - t0
            _record_epoch(
                history, epoch, stats, test_acc, log_ml, log_delta, elapsed, t_train, t_hyper
            )
            if checkpoint is not None:
                save(epoch=epoch, history=history.to_dict())
            advance(history)
            if callback is not None:
                callback(epoch, history, model)
    return history


def _check_fit_args(
    *, objective, optimizer, schedule, epochs, lr, lr_min, marglik_every, burn_in, hyper_steps,
    hyper_lr, warmup, checkpoint, resume, curvature_batch_size,
) -> None:  # fmt: skip
    """Refuse :func:`fit` arguments outside their range, naming the argument and what it got."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {list(OBJECTIVES)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {list(OPTIMIZERS)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {list(SCHEDULES)}")
    for name, value in (
        ("epochs", epochs),
        ("marglik_every", marglik_every),
        ("hyper_steps", hyper_steps),
    ):
        check_positive_int(name, value)
    if not is_int(burn_in) or burn_in < 0:
        raise ValueError(f"burn_in must be a non-negative int, got {burn_in!r}")
    if not is_int(warmup) or not 0 <= warmup <= epochs:
        raise ValueError(f"warmup must be an int from 0 to epochs ({epochs}), got {warmup!r}")
    if not (lr > 0 and hyper_lr > 0 and 0 <= lr_min <= lr):
        raise ValueError(
            f"need lr > 0, hyper_lr > 0 and 0 <= lr_min <= lr; got {lr}, {hyper_lr}, {lr_min}"
        )
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    if checkpoint is not None and not resume and os.path.lexists(checkpoint):
        # a fresh run would replace, epoch by epoch, a checkpoint another run may still need
        raise FileExistsError(
            f"checkpoint {os.fspath(checkpoint)!r} already exists; pass resume=True to continue "
            "the run that wrote it, or delete it (or name another file) to start afresh"
        )
    if curvature_batch_size is not None and (
        not is_int(curvature_batch_size) or curvature_batch_size <= 0
    ):
        raise ValueError(
            f"curvature_batch_size must be a positive int or None, got {curvature_batch_size!r}"
        )


def _refit_after(epoch: int, epochs: int, burn_in: int, every: int) -> bool:
    """Whether the evidence steps follow epoch ``epoch`` (1-based): every ``every`` epochs after
    the burn-in, and after the last epoch."""
    return epoch == epochs or (epoch > burn_in and (epoch - burn_in) % every == 0)


def _optimizer(name: str, params: list, lr: float) -> torch.optim.Optimizer:
    """Adam (fused: one kernel per tensor, several times faster than the per-tensor loop on CPU,
    benchmarks/bench_train.py) or SGD with momentum 0.9."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused)


def _resume(
    path, settings: dict, model: nn.Module, opt, log_delta: torch.Tensor, hyper_opt, loader
) -> tuple[History, int]:
    """Continue a run from its checkpoint: the same settings are required; the model, both
    optimizers, the precisions, the history and the random state are restored. Returns the
    history and the last finished epoch."""
    state = load_checkpoint(path)
    check_same_run(state, settings, path)
    restore_training_state(state, model, opt, log_delta, hyper_opt)
    history = History.from_dict(state["history"])
    set_rng_state(state["rng"], loader)
    return history, state["epoch"]


def _lr_schedule(
    loader,
    schedule: str,
    epochs: int,
    start_epoch: int,
    lr: float,
    lr_min: float,
    warmup: int = 0,
) -> tuple[Callable[[int], float] | None, int]:
    """The learning rate as a function of the step (None: ``lr`` throughout, also for a cosine
    schedule over a loader of unknown length; a warm-up over one is refused) and the number of
    steps before ``start_epoch``."""
    steps_per_epoch = max(len(loader), 1) if hasattr(loader, "__len__") else None
    step = start_epoch * (steps_per_epoch or 0)
    if warmup and not steps_per_epoch:
        raise ValueError("warmup needs a train_loader with a length (epochs of known size)")
    if not steps_per_epoch or (schedule != "cosine" and not warmup):
        return None, step
    total, ramp = epochs * steps_per_epoch, warmup * steps_per_epoch

    def lr_at(s: int) -> float:
        base = cosine_lr(s, total, lr, lr_min) if schedule == "cosine" else lr
        return base * min(1.0, (s + 1) / ramp) if ramp else base

    return lr_at, step


@dataclass
class _EpochPass:
    """What one pass of MAP steps over the training data left: the loss summed over examples
    (float64), the number classified correctly and seen, the last learning rate and the step
    counter after the pass."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int
    lr: float
    step: int


def _train_epoch(
    model,
    loader,
    opt,
    params,
    log_delta,
    n_data,
    epoch,
    step,
    lr,
    lr_at,
    extra_loss,
    project,
    reparametrize,
) -> _EpochPass:
    """One epoch of MAP steps on ``mean CE + prior_penalty (+ extra_loss)``, with the prior
    precisions ``exp(log_delta)`` held fixed."""
    device = log_delta.device
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    delta = log_delta.detach().exp().to(params[0].dtype)
    cur_lr = lr
    for i, (x, y_in) in enumerate(loader):
        if len(y_in) == 0:
            raise ValueError(f"batch {i} of the training loader holds no examples")
        x, y = x.to(device), y_in.to(device)
        if lr_at is not None:
            cur_lr = lr_at(step)
            for group in opt.param_groups:
                group["lr"] = cur_lr
        out = model(x)
        if y_in.device.type == "cpu":  # checked where it costs no device sync
            check_labels(y_in, out.shape[-1], f"training labels (epoch {epoch})")
        opt.zero_grad(set_to_none=True)
        if extra_loss is None:
            # the prior's gradient is added by hand (the same value, far cheaper); with an extra
            # loss it stays in the graph, so that its terms are summed in the same order
            ce = F.cross_entropy(out, y)
            ce.backward()
            add_prior_grads(params, delta, n_data)
            with torch.no_grad():
                loss = ce + prior_penalty(params, delta, n_data)
        else:
            loss = F.cross_entropy(out, y) + prior_penalty(params, delta, n_data)
            loss = loss + extra_loss(model)
            loss.backward()
        if project is not None:
            project(model)
        opt.step()
        if reparametrize is not None:
            reparametrize(model)
        step += 1
        loss_sum += loss.detach().double() * y.shape[0]
        correct += (out.detach().argmax(-1) == y).sum()
        seen += y.shape[0]
    if seen == 0:
        raise ValueError("the training loader yielded no batches")
    return _EpochPass(loss_sum, correct, seen, cur_lr, step)


def _timed(device: torch.device, fn, *args):
    """``fn(*args)`` and the wall time it took, including the device work it queued."""
    t0 = time.perf_counter()
    out = fn(*args)
    _synchronize(device)
    return out, time.perf_counter() - t0


def _record_epoch(
    history: History,
    epoch: int,
    stats: _EpochPass,
    test_acc: float,
    log_ml: float,
    log_delta: torch.Tensor,
    elapsed: float,
    t_train: float,
    t_hyper: float,
) -> None:
    """Append one finished epoch to ``history``."""
    history.epoch.append(epoch)
    history.train_loss.append(stats.loss_sum.item() / stats.seen)
    history.train_acc.append(stats.correct.item() / stats.seen)
    history.test_acc.append(test_acc)
    history.log_marglik.append(log_ml)
    history.prior_precision.append(log_delta.detach().exp().cpu().tolist())
    history.lr.append(stats.lr)
    history.seconds.append(elapsed)
    history.step_seconds.append(t_train)
    history.update_seconds.append(t_hyper)


@contextmanager
def _progress(
    show: bool, epochs: int, start_epoch: int, objective: str, has_test: bool, n_data: int
):
    """A tqdm bar over the epochs (terminal or notebook), closed on the way out; yields the
    function that advances it by one recorded epoch (a no-op when ``show`` is false)."""
    if not show:
        yield lambda history: None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=epochs, initial=start_epoch, desc=f"{objective}", unit="epoch", leave=True)

    def advance(history: History) -> None:
        post = {"loss": f"{history.train_loss[-1]:.3f}", "acc": f"{history.train_acc[-1]:.3f}"}
        if has_test:
            post["test"] = f"{history.test_acc[-1]:.3f}"
        if not math.isnan(history.log_marglik[-1]):
            post["logml/N"] = f"{history.log_marglik[-1] / n_data:.3f}"
        bar.set_postfix(post, refresh=False)
        bar.update(1)

    try:
        yield advance
    finally:
        bar.close()


def _marglik_update(
    model, train_loader, log_delta, hyper_opt, hyper_steps, n_data, laplace
) -> float:
    """Refit the curvature at the current weights, then Adam steps on log delta; returns log p(D|delta)."""
    was_training = model.training
    model.eval()
    la = laplace(model, log_delta.detach().exp())
    la.fit(train_loader)
    for _ in range(hyper_steps):
        hyper_opt.zero_grad(set_to_none=True)
        nlml = -la.log_marginal_likelihood(prior_precision=log_delta.exp()) / n_data
        nlml.backward()
        hyper_opt.step()
    with torch.no_grad():
        log_ml = float(la.log_marginal_likelihood(prior_precision=log_delta.exp()))
    for p in model.parameters():
        p.grad = None
    model.train(was_training)
    return log_ml
