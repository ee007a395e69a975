"""Layer-wise symmetry discovery experiments: one run (``discover``) and the table (``compare``).

A run builds a task (``equilib.data.tasks``), a model (``equilib.models.build``), trains it with
``equilib.train.fit`` by MAP or by marginal likelihood, and summarises the learned structure per
block: for every path (``fc``, ``conv``, ...) the prior precision the data chose and the norm of
its weights. A path whose precision grows large has its weights pulled to zero: it is pruned,
and the block becomes what the remaining path is (a convolution, or an unconstrained layer).

Per path, ``prior_precision`` is the parameter-weighted harmonic mean over the path's weight
tensors, ``n / sum_l (n_l / delta_l)`` (the inverse of the mean prior variance per weight;
biases excluded), and ``weight_norm`` is ``sqrt(sum_l |theta_l|^2)`` over the same tensors.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from equilib import models as zoo
from equilib._checks import check_positive_int, is_int
from equilib.cache import atomic_write_text, cached, with_code
from equilib.cache import code_fingerprint as files_fingerprint
from equilib.data.tasks import SOURCES, TASKS, make_task, n_classes
from equilib.laplace import KronLaplace
from equilib.laplace.curvature import HESSIANS
from equilib.nn.conv import STRIDINGS
from equilib.nn.linear import ImageLinear
from equilib.train import (
    CURVATURE_BATCH_SIZE,
    OBJECTIVES,
    History,
    curvature_loader_for,
    evaluate,
    fit,
    trainable_parameters,
)

__all__ = [
    "MODELS",
    "TASKS",
    "OBJECTIVES",
    "Config",
    "default_config",
    "build_model",
    "trained_model",
    "make_loaders",
    "layer_structure",
    "precision_ratios",
    "output_precisions",
    "knockout_accuracies",
    "knockout_everywhere",
    "probe_inputs",
    "run",
    "retrain",
    "run_cached",
    "compare",
    "markdown_table",
    "without_weights",
    "effective_dimensions",
    "run_many",
    "expected_cost",
    "cache_entry",
    "code_fingerprint",
]

# the models of the paper's table (section 6.1), in the order it lists them
MODELS = ("conv", "fc", "fc+conv", "f-fc+conv", "s-fc+s-conv")
INITS = ("lsuv", "default")
# where the scale of a factored path W = V * U lives: in V alone (every row of U kept at unit
# norm), or spread over both factors as training leaves it
FACTOR_SCALES = ("v", "both")


@dataclass(frozen=True)
class Config:
    """Everything that decides a run (and so keys its cache entry)."""

    task: str = "digits"
    model: str = "f-fc+conv"
    objective: str = "marglik"
    epochs: int = 40
    seed: int = 0
    n_train: int = 1200
    n_test: int = 500
    width: int = 16
    strides: tuple[int, ...] | None = None
    # the blocks that have an FC path (None: every block), for models with another path beside it
    fc_blocks: tuple[int, ...] | None = None
    # blocks stride by max pooling (equivariant to the shifts by multiples of 4 that move a digit
    # between quadrants); polyphase striding, equivariant to every shift, keeps one pixel of each
    # 2x2 window and left CONV at 94.9% on `digits` and FC at 91.6% on `quadrant` (three seeds)
    striding: str = "max"
    # shared by every model: batches of 32, Adam from 5e-3 cosine-annealed to 1e-4 over 40
    # epochs (batches of 64 at 1e-2 to 1e-3 over 30 left CONV at 93.8% on `digits` and FC at
    # 87.9% on `quadrant`, seed 0)
    batch_size: int = 32
    lr: float = 5e-3
    lr_min: float = 1e-4
    # the paper's schedule is a burn-in of 10 epochs and a refit every 5 (CIFAR, on a GPU); at
    # this scale refits are cheap and more of them help: burn-in 2, every 2 epochs raised
    # F-FC+CONV by the evidence from 92.6% to 93.9% on `digits` and from 91.5% to 93.2% on
    # `quadrant` (seed 0), with larger precision ratios
    burn_in: int = 2
    marglik_every: int = 2
    hyper_steps: int = 20
    hyper_lr: float = 0.1
    hessian: str = "ggn"
    # the initial prior precision of every weight tensor (the paper's delta = 1): a fixed
    # precision for MAP, the start of the learned ones for the evidence. 10 cost FC 3.4 points on
    # `quadrant` (91.3% against 94.7%) and CONV 0.6 on `digits` (seed 0)
    prior_precision: float = 1.0
    init: str = "lsuv"
    fc_scale: float = 0.1
    factor_scale: str = "v"
    optimizer: str = "adam"
    # a run by the evidence then trains the network again from its initial weights, by MAP
    # under the precisions the evidence chose (its structure, with the weights given a whole
    # learning-rate schedule at a fixed prior instead of one that rises while they train):
    # on `quadrant` that took the three seeds of chapter 07 from 92.3-94.6% to 93.3-96.3%
    retrain: bool = True
    # test the network after every epoch (the history's test-accuracy curve); False: only at
    # the end (the same run otherwise; the curve is then NaN)
    track_test: bool = True
    source: str = "sklearn"
    digit_size: int | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; valid tasks are {list(TASKS)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"unknown objective {self.objective!r}; valid objectives are {list(OBJECTIVES)}"
            )
        valid = model_names()
        if self.model not in valid:
            raise ValueError(f"unknown model {self.model!r}; valid models are {valid}")
        for name in (
            "epochs",
            "n_train",
            "n_test",
            "width",
            "batch_size",
            "marglik_every",
            "hyper_steps",
        ):
            check_positive_int(name, getattr(self, name))
        if self.strides is not None:
            strides = tuple(self.strides)
            if not strides or any(not is_int(v) or v < 1 for v in strides):
                raise ValueError(
                    f"strides must be positive ints, one per block, got {self.strides!r}"
                )
            object.__setattr__(self, "strides", strides)
        if self.fc_blocks is not None:
            blocks = tuple(self.fc_blocks)
            depth = 3 if self.strides is None else len(self.strides)
            if any(not is_int(b) for b in blocks) or not all(0 <= b < depth for b in blocks):
                raise ValueError(
                    f"fc_blocks must be block indices from 0 to {depth - 1}, got {self.fc_blocks!r}"
                )
            object.__setattr__(self, "fc_blocks", blocks)
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}; valid sources are {list(SOURCES)}")
        if self.hessian not in HESSIANS:
            raise ValueError(
                f"unknown hessian {self.hessian!r}; valid: {list(HESSIANS)} (exact "
                "GGN, Monte-Carlo Fisher, empirical Fisher)"
            )
        if self.factor_scale not in FACTOR_SCALES:
            raise ValueError(
                f"unknown factor_scale {self.factor_scale!r}; valid: {list(FACTOR_SCALES)}"
            )
        if self.striding not in STRIDINGS:
            raise ValueError(f"unknown striding {self.striding!r}; valid: {list(STRIDINGS)}")
        for name in ("retrain", "track_test"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; valid: {list(INITS)}")
        if not (self.lr > 0 and self.hyper_lr > 0 and self.prior_precision > 0):
            raise ValueError("lr, hyper_lr and prior_precision must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


# The source digits' size in the discovery experiments when ``Config.digit_size`` is None.
# scikit-learn's 8x8 digits are upsampled to 12x12 (a 24x24 canvas): at 8x8 pixels an FC
# network generalises across the quadrants about as well as a CONV network does, so the
# `digits` task would not show the contrast it exists for (chapter 07's ablations measure both).
DIGIT_SIZE = {"sklearn": 12, "mnist": 28}

# FAST mode keeps the network and the schedule of the evidence steps, and trains on 720 of the
# 1200 digits for 24 epochs (less than half the work), tested on fewer digits, so that chapter
# 07 runs in under three minutes on two cores (800 digits did before each run by the evidence
# was also retrained). Two seeds there still give every structure target, with every model a
# few points below its default accuracy; smaller settings (300
# digits, width 8, 12 epochs) left F-FC+CONV near chance, the precisions unseparated and MAP
# and the evidence alike, and 20 epochs on 1200 digits with a refit every epoch (to keep the
# number of refits) saved only a tenth of the time. The 24 epochs have 11 refits of the
# precisions instead of 19, and each takes steps three times as large (hyper_lr 0.3): at 0.1,
# one `digits` seed in 24 (seed 22) still used its last block's FC path when training stopped
# (fc/conv precision ratio 9.9, 6.6 points lost without it; 22.8 and 2.5 at 0.3), at no cost
# in time (twenty steps on a few precisions are cheap next to an epoch)
FAST = dict(n_train=720, epochs=24, n_test=200, hyper_lr=0.3)
# settings that only the marginal-likelihood objective reads: MAP runs share one cache entry
_MARGLIK_ONLY = dict(burn_in=2, marglik_every=2, hyper_steps=20, hyper_lr=0.1, retrain=True)


def default_config(fast: bool = False, **overrides) -> Config:
    """The default settings (``fast=True``: shrunken data and epochs for CI), with overrides."""
    base = dict(FAST) if fast else {}
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**base)


def model_names() -> list[str]:
    """The names ``equilib.models.build`` accepts (the table's models first)."""
    from equilib import models

    names = list(models.MODEL_NAMES)
    return [m for m in MODELS if m in names] + [m for m in names if m not in MODELS]


def build_model(config: Config, in_shape) -> nn.Module:
    """``equilib.models.build`` for the config's model, task, width and strides (one block per
    stride; default: the zoo's three blocks): a thin adapter, the zoo builds every model."""
    from equilib.models import build

    return build(
        config.model,
        in_shape=tuple(in_shape),
        n_classes=n_classes(config.task),
        width=config.width,
        striding=config.striding,
        fc_blocks=config.fc_blocks,
        **(
            {}
            if config.strides is None
            else {"depth": len(config.strides), "strides": config.strides}
        ),
    )


def trained_model(result: dict) -> nn.Module:
    """The trained model of a :func:`run` result kept with ``keep_model=True`` (weights loaded,
    eval mode), built by :func:`build_model` from the result's configuration and input shape
    (settings the result lacks take their defaults)."""
    if "state_dict" not in result:
        raise ValueError("this result has no weights: run it with keep_model=True")
    names = {f.name for f in fields(Config)}
    config = Config(**{k: v for k, v in result["config"].items() if k in names})
    model = build_model(config, result["in_shape"])
    model.load_state_dict(result["state_dict"])
    return model.eval()


def digit_size_of(config: Config) -> int:
    """The size of the source digits of a run: ``config.digit_size``, else ``DIGIT_SIZE``."""
    return config.digit_size if config.digit_size is not None else DIGIT_SIZE[config.source]


def make_loaders(config: Config, data_root=None):
    """Train and test DataLoaders of the config's task (train shuffled, seeded).

    ``data_root``: the MNIST folder when ``config.source == "mnist"``.
    """
    from equilib.data.digits import make_loader

    Xtr, ytr, Xte, yte = make_task(
        config.task,
        config.n_train,
        config.n_test,
        config.seed,
        source=config.source,
        digit_size=digit_size_of(config),
        root=data_root,
    )
    train = make_loader(Xtr, ytr, batch_size=config.batch_size, shuffle=True, seed=config.seed)
    test = make_loader(Xte, yte, batch_size=512, shuffle=False)
    return train, test


def _path_of(name: str):
    from equilib.models import path_of

    return path_of(name)


def _per_tensor(prior_precision, n_tensors: int) -> list[float]:
    """A scalar or one precision per trainable tensor, as a list of ``n_tensors`` floats."""
    delta = torch.as_tensor(prior_precision, dtype=torch.float64).flatten().tolist()
    if len(delta) == 1:
        delta = delta * n_tensors
    if len(delta) != n_tensors:
        raise ValueError(f"need {n_tensors} prior precisions (one per tensor), got {len(delta)}")
    return delta


def _summarised(name: str, factor_scale: str) -> bool:
    """Whether a path's tensor counts in its summaries: weights only (no biases), and not a
    factored path's unit-norm ``u`` when its scale lives in ``v``."""
    return name.endswith("weight") and not (factor_scale == "v" and name.split(".")[-2:-1] == ["u"])


def layer_structure(model: nn.Module, prior_precision, factor_scale: str = "both") -> list[dict]:
    """Per block, per path: prior precision (harmonic mean over weight tensors) and weight norm.

    ``prior_precision``: one value per trainable tensor (``model.named_parameters()`` order).
    ``factor_scale="v"``: a factored path's scale lives in its V factor (see
    ``equilib.models.scale_in_v``),
    so its precision and norm are those of ``v.weight`` alone (its unit-norm U is left out).
    Returns ``[{"name": "block0", "paths": {"fc": {"prior_precision", "weight_norm",
    "n_params"}, ...}}, ...]``, one entry per block of ``model.blocks`` (``n_params``: the
    weights summarised).
    """
    if factor_scale not in FACTOR_SCALES:
        raise ValueError(f"factor_scale must be one of {list(FACTOR_SCALES)}, got {factor_scale!r}")
    named = trainable_parameters(model)
    delta = _per_tensor(prior_precision, len(named))
    acc: dict[tuple[int, str], list[float]] = {}
    for (name, p), d in zip(named, delta):
        where = _path_of(name)
        if where is None or not _summarised(name, factor_scale):
            continue
        n, inv, sq = acc.setdefault(where, [0, 0.0, 0.0])
        acc[where] = [n + p.numel(), inv + p.numel() / d, sq + float(p.detach().pow(2).sum())]
    blocks = []
    for b in range(len(model.blocks)):
        paths = {}
        for (bi, path), (n, inv, sq) in acc.items():
            if bi == b:
                paths[path] = {
                    "prior_precision": n / inv,
                    "weight_norm": math.sqrt(sq),
                    "n_params": n,
                }
        blocks.append({"name": f"block{b}", "paths": paths})
    return blocks


def effective_dimensions(
    model: nn.Module, loader, prior_precision, hessian: str = "ggn", *, fitted=None
) -> list[dict]:
    """Per block, per path: effective dimensions ``gamma`` and parameter count ``n``.

    Fits ``equilib.laplace.KronLaplace`` (curvature ``hessian``) at the model's weights on
    ``loader`` with the given per-tensor precisions; ``gamma_l = sum_i lambda_i / (lambda_i +
    delta_l)`` over the eigenvalues of tensor ``l``'s curvature, summed over the path's tensors
    (biases included). Unlike a precision, ``gamma`` does not change when a tensor is rescaled
    together with its precision (the curvature scales the other way). ``fitted``: a Laplace
    approximation of ``model`` already fit at its current weights (such as the last refit of a
    run by the evidence), whose curvature is used instead of a new pass over ``loader`` (which
    may then be None); its prior precision is set to ``prior_precision``. Returns
    ``[{"name": "block0", "paths": {"fc": {"gamma": ..., "n": ...}, ...}}, ...]``.
    """
    if fitted is None:
        la = _kron_laplace(model, prior_precision, hessian).fit(loader)
    else:
        _check_fitted_here(fitted, model, hessian)
        la = fitted
        la.prior_precision = torch.as_tensor(prior_precision, dtype=torch.float64).detach()
    gamma = la.effective_dimensions().detach().cpu().tolist()
    out = [{"name": f"block{b}", "paths": {}} for b in range(len(model.blocks))]
    for (name, p), g in zip(trainable_parameters(model), gamma):
        where = _path_of(name)
        if where is None:
            continue
        entry = out[where[0]]["paths"].setdefault(where[1], {"gamma": 0.0, "n": 0})
        entry["gamma"] += g
        entry["n"] += p.numel()
    return out


def _check_fitted_here(fitted, model: nn.Module, hessian: str) -> None:
    """Refuse a Laplace approximation that is not of ``model``, not fit, of another curvature,
    or fit at other weights."""
    if getattr(fitted, "model", None) is not model:
        raise ValueError("fitted must be a Laplace approximation of this model")
    if not fitted.fitted_here:
        raise ValueError(
            "fitted has not been fit at the weights the model has now; call its fit(loader) "
            "(or pass fitted=None to fit a new one)"
        )
    if fitted.hessian != hessian:
        raise ValueError(f"fitted uses the curvature {fitted.hessian!r}, not {hessian!r}")


def precision_ratios(
    layers: list[dict], a: str = "fc", b: str = "conv", key: str = "prior_precision"
) -> list[float | None]:
    """Per block, ``key[a] / key[b]`` (None where a block lacks a path or the value).

    ``key``: ``"prior_precision"`` (the weights' precisions) or ``"output_precision"`` (the
    precisions of the paths' outputs, see :func:`output_precisions`).
    """
    out = []
    for layer in layers:
        p = layer["paths"]
        ok = a in p and b in p and p[a].get(key) is not None and p[b].get(key) is not None
        out.append(p[a][key] / p[b][key] if ok else None)
    return out


def _output_entry(var: float, o: torch.Tensor) -> dict:
    return {
        "output_precision": 1.0 / var if var > 0 else math.inf,
        "output_rms": float(o.double().pow(2).mean().sqrt()),
    }


def output_precisions(
    model: nn.Module,
    x: torch.Tensor,
    prior_precision,
    factor_scale: str = "both",
    *,
    probes: int = 8,
    seed: int = 0,
    chunk: int = 64,
) -> list[dict]:
    """Per block, per path: the precision the prior gives the path's output, and its size.

    A weight's prior precision means little on its own: how much a weight moves the output
    depends on how the path is parametrised. A factored path ``W = V * U`` computes the same
    function with ``U`` scaled by ``r`` and ``V`` by ``1 / r``, and ``V``'s precision then
    scales by ``r^2``; a conv kernel entry multiplies one pixel, a row of ``V`` a projection of
    the whole image. The prior variance of the path's *output* does not depend on such choices:
    with the output ``o`` linear in each weight tensor ``theta_l`` (prior ``N(0, 1 / delta_l)``),
    it is ``sum_l |d o_k / d theta_l|^2 / delta_l`` (the linearised prior, summed over the
    tensors :func:`layer_structure` summarises), averaged over the outputs ``k`` of the path and
    over the inputs ``x: (B, C, H, W)``. ``output_precision`` is the inverse of that average: a
    path with a large one is held near zero by the prior, whatever its parametrisation.
    ``output_rms`` is the root mean square of the path's output on ``x`` at the current weights
    (what it does contribute). Each block reads the previous block's output on ``x``.

    The squared Jacobian norms are estimated per input with ``probes`` random sign vectors
    (``E |J^T v|^2 = |J|_F^2``, seeded by ``seed``; ``chunk`` inputs at a time), except for a
    dense FC path (``ImageLinear``), where every output's gradient is the input itself. Returns
    ``[{"name": "block0", "paths": {"fc": {"output_precision", "output_rms"}, ...}}, ...]``.
    """
    from torch.func import functional_call, grad, vmap

    if factor_scale not in FACTOR_SCALES:
        raise ValueError(f"factor_scale must be one of {list(FACTOR_SCALES)}, got {factor_scale!r}")
    check_positive_int("probes", probes)
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or len(x) == 0:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a non-empty batch of images (B, C, H, W), got {got}")
    named = trainable_parameters(model)
    delta = _per_tensor(prior_precision, len(named))
    delta_of = {name: d for (name, _), d in zip(named, delta)}
    first = next(model.parameters())
    h = x.to(device=first.device, dtype=first.dtype)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b, block in enumerate(model.blocks):
        paths = {}
        for pname, path in block.paths.items():
            counted = {  # the summarised tensors of the path, with their precisions
                n: delta_of[f"blocks.{b}.paths.{pname}.{n}"]
                for n, _ in path.named_parameters()
                if _summarised(n, factor_scale) and f"blocks.{b}.paths.{pname}.{n}" in delta_of
            }
            with torch.no_grad():
                o = path(h)
            if isinstance(path, ImageLinear):
                # every output reads the whole input: |d o_k / d W|^2 = |x|^2, exactly
                sq = float(h.double().flatten(1).pow(2).sum(1).mean())
                paths[pname] = _output_entry(sum(sq / d for d in counted.values()), o)
                continue
            params = {n: p.detach() for n, p in path.named_parameters()}
            buffers = dict(path.named_buffers())

            def dot(weights, xi, v, path=path, params=params, buffers=buffers):
                o = functional_call(path, ({**params, **weights}, buffers), (xi[None],))
                return (o[0] * v).sum()

            per_input = vmap(grad(dot), in_dims=(None, 0, 0), chunk_size=chunk)
            var = 0.0
            for _ in range(probes):
                v = (torch.randint(0, 2, o.shape, generator=gen) * 2 - 1).to(o)
                g = per_input({n: params[n] for n in counted}, h, v)
                var += sum(float(g[n].double().pow(2).sum()) / d for n, d in counted.items())
            paths[pname] = _output_entry(var / (probes * o.numel()), o)
        out.append({"name": f"block{b}", "paths": paths})
        with torch.no_grad():
            h = block(h)
    return out


def _silence(module, args, output):
    return torch.zeros_like(output)


def _accuracy_silenced(model: nn.Module, loader, paths: list, device=None) -> float:
    """The accuracy on ``loader`` with the outputs of ``paths`` (modules) replaced by zeros."""
    handles = [path.register_forward_hook(_silence) for path in paths]
    try:
        return evaluate(model, loader, device)[1]
    finally:
        for handle in handles:
            handle.remove()


def knockout_accuracies(model: nn.Module, loader, device=None) -> list[dict]:
    """Per block, per path: the accuracy on ``loader`` with that path's output set to zero.

    A precision says how hard the prior holds a path near zero; this says whether the trained
    network needs what the path does. The path's output is replaced by zeros (a forward hook;
    the weights are not touched) and the other paths of the block are left as they are, so a
    path the network does not use leaves the accuracy where it was, and one it relies on takes
    the accuracy down with it. Blocks with a single path get none (removing their only path
    removes the block). Returns ``[{"name": "block0", "paths": {"fc": {"knockout_accuracy"},
    ...}}, ...]``; compare with ``equilib.train.evaluate(model, loader)[1]``.
    """
    out = []
    for b, block in enumerate(model.blocks):
        paths = {}
        if len(block.paths) > 1:
            for pname, path in block.paths.items():
                paths[pname] = {
                    "knockout_accuracy": _accuracy_silenced(model, loader, [path], device)
                }
        out.append({"name": f"block{b}", "paths": paths})
    return out


def knockout_everywhere(model: nn.Module, loader, device=None) -> dict[str, float]:
    """``{path: accuracy}``: the accuracy on ``loader`` with that path silenced in every block
    of several paths at once (as :func:`knockout_accuracies` silences it in one block).

    Silencing every FC path of F-FC+CONV leaves a CNN with the trained conv weights: a network
    whose blocks all became convolutions keeps its accuracy, one that reads something only its
    FC paths can see loses it, however that reading is spread over the blocks.
    """
    blocks = [block for block in model.blocks if len(block.paths) > 1]
    names = sorted({pname for block in blocks for pname in block.paths})
    return {
        pname: _accuracy_silenced(
            model, loader, [block.paths[pname] for block in blocks if pname in block.paths], device
        )
        for pname in names
    }


def _kron_laplace(model: nn.Module, prior_precision, hessian: str) -> KronLaplace:
    return KronLaplace(model, "classification", prior_precision=prior_precision, hessian=hessian)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _clean(x):
    """NaN/inf to None, recursively, so the result is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def layers_history_path(checkpoint) -> Path:
    """Where :func:`run` keeps the per-epoch layer structure of a checkpointed run:
    ``checkpoint.pt`` -> ``checkpoint.layers.json`` beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".layers.json")


def _refuse_existing_run_files(checkpoint) -> None:
    """A run that does not resume must not write over the files another checkpointed run left
    (its checkpoint, its retraining's checkpoint, its per-epoch structure): refused before any
    training, not after the first part of the run."""
    files = (Path(checkpoint), retrain_checkpoint_path(checkpoint), layers_history_path(checkpoint))
    present = [str(f) for f in files if os.path.lexists(f)]
    if present:
        raise FileExistsError(
            f"a checkpointed run already left {present}; pass resume=True to continue it, or "
            "delete them (or name another checkpoint) to start afresh"
        )


def retrain_checkpoint_path(checkpoint) -> Path:
    """Where :func:`run` checkpoints the retraining of a checkpointed run by the evidence:
    ``checkpoint.pt`` -> ``checkpoint.retrain.pt`` beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".retrain" + checkpoint.suffix)


def _resumed_layers_history(
    layers_file: Path, checkpoint, model: nn.Module, config: Config
) -> list:
    """The per-epoch layer structure up to the checkpoint's epoch, read back from
    ``layers_file``; an epoch the file lacks (the run stopped between writing the checkpoint and
    the file) is recomputed from the checkpoint's weights when it is the last one, else None."""
    from equilib.train import load_checkpoint

    try:
        saved = json.loads(layers_file.read_text()) if layers_file.is_file() else []
    except (OSError, ValueError):
        saved = []
    if not isinstance(saved, list):
        saved = []
    state = load_checkpoint(checkpoint)
    done = int(state["epoch"])
    saved = saved[:done]
    if len(saved) < done:
        saved.extend([None] * (done - 1 - len(saved)))
        try:
            at_checkpoint = copy.deepcopy(model)
            at_checkpoint.load_state_dict(state["model"])
            saved.append(
                _clean(
                    layer_structure(
                        at_checkpoint, state["history"]["prior_precision"][-1], config.factor_scale
                    )
                )
            )
        except (RuntimeError, KeyError, IndexError, ValueError, TypeError):
            saved.append(None)  # a checkpoint of another run: fit refuses it with the reason
    return saved


def probe_inputs(X: torch.Tensor, seed: int, n: int = 128) -> torch.Tensor:
    """The ``n`` training inputs on which :func:`run` measures the paths' outputs (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    return X[torch.randperm(len(X), generator=gen)[:n]]


def _merged(layers: list[dict], *more: list[dict]) -> list[dict]:
    """:func:`layer_structure`'s entries with the per-path values of ``more`` merged in (entries
    shaped like :func:`output_precisions`' and :func:`knockout_accuracies`')."""
    for extra in more:
        for layer, entry in zip(layers, extra):
            for name, values in entry["paths"].items():
                layer["paths"].setdefault(name, {}).update(values)
    return layers


def _effective_entries(
    model: nn.Module, loader, prior_precision, config: Config, fitted=None
) -> list[dict]:
    """``effective_dimension`` per path for a run trained by the evidence (what its precisions
    were chosen against), in the shape of :func:`effective_dimensions`; nothing for MAP, and
    nothing for models with a dense FC path, whose curvature factors are too large to
    decompose after every run. ``fitted``: the run's last refit, at its final weights."""
    if config.objective != "marglik" or any(isinstance(m, ImageLinear) for m in model.modules()):
        return []
    # read in the batches of the refits, so that a run resumed after its last epoch (no refit
    # left to reuse) reports the same values
    loader = curvature_loader_for(loader, CURVATURE_BATCH_SIZE)
    eff = effective_dimensions(model, loader, prior_precision, config.hessian, fitted=fitted)
    return [
        {"paths": {p: {"effective_dimension": v["gamma"]} for p, v in layer["paths"].items()}}
        for layer in eff
    ]


def _initial(config: Config, device=None, data_root=None):
    """The loaders and the initialised model of a run: ``(train_loader, test_loader, model)``,
    the same for every call with the same configuration (the random state is seeded here)."""
    torch.manual_seed(config.seed)
    train_loader, test_loader = make_loaders(config, data_root)
    model = build_model(config, train_loader.dataset.tensors[0].shape[1:])
    if config.init == "lsuv":
        zoo.init_from_data(
            model,
            probe_inputs(train_loader.dataset.tensors[0], config.seed, 256),
            path_std={"fc": config.fc_scale},
        )
    if config.factor_scale == "v":
        zoo.scale_in_v(model)
    if device is not None:
        model.to(device)
    return train_loader, test_loader, model


def _fit_settings(config: Config) -> dict:
    """The settings of ``equilib.train.fit`` that a run and its retraining share: the schedule,
    the optimiser, the seed, and for factored paths with their scale in V the steps that keep
    the rows of U on the unit sphere."""
    unit_rows = config.factor_scale == "v"
    return dict(
        epochs=config.epochs,
        lr=config.lr,
        lr_min=config.lr_min,
        optimizer=config.optimizer,
        reparametrize=zoo.retract_factors if unit_rows else None,
        project=zoo.project_factor_grads if unit_rows else None,
        seed=config.seed,
    )


def retrain(
    config: Config,
    prior_precision,
    *,
    device=None,
    progress: bool = True,
    data_root=None,
    checkpoint=None,
    resume: bool = False,
) -> dict:
    """Train the network of ``config`` again from its initial weights, by MAP under the given
    per-tensor ``prior_precision`` (the precisions a run by the evidence ended with).

    The evidence chooses the prior while the weights train: its precisions keep rising to the
    end of the run, so the weights spend the learning-rate schedule chasing a moving prior. The
    retrained network keeps the structure the evidence found (the same precisions) and gives
    its weights a whole schedule at that fixed prior. It starts from the run's initial weights
    and sees the batches in the run's order (the same seed), with the run's settings otherwise.

    ``checkpoint`` and ``resume`` are those of ``equilib.train.fit``: a retraining that was
    stopped goes on from its last finished epoch.

    Returns ``test_accuracy``, ``train_accuracy``, ``train_seconds``, ``history`` (``epoch``
    and ``train_loss``, the training loss per epoch) and ``layers`` (:func:`layer_structure` of
    the retrained network).
    """
    import sys

    train_loader, test_loader, model = _initial(config, device, data_root)
    delta = _per_tensor(prior_precision, len(trainable_parameters(model)))
    if progress:
        print(
            "retraining from the initial weights by MAP, at the precisions the evidence chose",
            file=sys.stderr,
            flush=True,
        )
    history = fit(
        model,
        train_loader,
        None,  # tested once, at the end
        objective="map",
        prior_precision=delta,
        device=device,
        progress=progress,
        checkpoint=checkpoint,
        resume=resume,
        run_info={**config.to_dict(), "retrained_at": [float(d) for d in delta]},
        **_fit_settings(config),
    )
    return {
        "test_accuracy": evaluate(model, test_loader)[1],
        "train_accuracy": evaluate(model, train_loader)[1],
        "train_seconds": history.seconds[-1],
        "history": {"epoch": history.epoch, "train_loss": history.train_loss},
        "layers": layer_structure(model, delta, config.factor_scale),
    }


def run(
    config: Config,
    *,
    device=None,
    progress: bool = True,
    checkpoint=None,
    resume: bool = False,
    keep_model: bool = False,
    data_root=None,
) -> dict:
    """Train one model on one task with one objective and summarise what it learned.

    Returns a JSON-ready dict: ``task``, ``model``, ``objective``, ``test_accuracy``,
    ``train_accuracy``, ``log_marglik`` (final, None for MAP), ``seconds``, ``layers`` (see
    :func:`layer_structure`; each path also has the ``output_precision`` and ``output_rms`` of
    :func:`output_precisions` on :func:`probe_inputs`, and in blocks of several paths the
    ``knockout_accuracy`` of :func:`knockout_accuracies` on the test data, and for runs by the
    evidence the ``effective_dimension`` of :func:`effective_dimensions` on the training data
    at the final precisions), ``knockout_everywhere`` (:func:`knockout_everywhere` on the test
    data), ``layers_history`` (the structure of :func:`layer_structure` per
    epoch), ``history`` (:class:`equilib.train.History` as lists) and ``config``; plus
    ``state_dict`` (CPU tensors, not JSON) if ``keep_model``. With a ``checkpoint``, the
    per-epoch layer structure is also written beside it (:func:`layers_history_path`), so that a
    resumed run reports every epoch, and the retraining of a run by the evidence has a
    checkpoint of its own (:func:`retrain_checkpoint_path`), so that resuming a run stopped
    while it retrained does not start the retraining over; a run that does not resume refuses
    a checkpoint (or either file beside it) that is already there.
    A run that diverges raises ``equilib.train.TrainingDiverged`` and returns nothing.
    """
    if checkpoint is not None and not resume:
        _refuse_existing_run_files(checkpoint)
    t0, c0 = time.perf_counter(), time.process_time()
    train_loader, test_loader, model = _initial(config, device, data_root)
    in_shape = train_loader.dataset.tensors[0].shape[1:]
    # the per-epoch structure is kept beside the checkpoint, so a resumed run's history is whole
    layers_file = None if checkpoint is None else layers_history_path(checkpoint)
    layers_history: list = (
        _resumed_layers_history(layers_file, checkpoint, model, config) if resume else []
    )

    def record(epoch, history: History, m):
        del layers_history[epoch - 1 :]
        layers_history.extend([None] * (epoch - 1 - len(layers_history)))
        layers_history.append(layer_structure(m, history.prior_precision[-1], config.factor_scale))
        if layers_file is not None:
            atomic_write_text(layers_file, json.dumps(_clean(layers_history)))

    # the refits of a run by the evidence end with one at the final weights (fit refits after
    # its last epoch), whose curvature then gives the effective dimensions without another pass
    refits: list = []

    def laplace(m, delta):
        refits[:] = [_kron_laplace(m, delta, config.hessian)]
        return refits[0]

    history = fit(
        model,
        train_loader,
        test_loader if config.track_test else None,
        objective=config.objective,
        prior_precision=config.prior_precision,
        marglik_every=config.marglik_every,
        burn_in=config.burn_in,
        hyper_steps=config.hyper_steps,
        hyper_lr=config.hyper_lr,
        device=device,
        laplace=laplace,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
        callback=record,
        run_info=config.to_dict(),
        **_fit_settings(config),
    )
    if resume and len(layers_history) < len(history):
        # epochs before the resume: only the precisions are known, not the weight norms
        missing = len(history) - len(layers_history)
        layers_history = [None] * missing + layers_history
    _, test_acc = evaluate(model, test_loader)
    _, train_acc = evaluate(model, train_loader)
    final_ml = [v for v in history.log_marglik if not math.isnan(v)]
    result = {
        "task": config.task,
        "model": config.model,
        "objective": config.objective,
        "test_accuracy": test_acc,
        "train_accuracy": train_acc,
        "log_marglik": final_ml[-1] if final_ml and config.objective == "marglik" else None,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "train_seconds": history.seconds[-1],
        "epoch_seconds": _mean(history.step_seconds),
        "update_seconds": _mean([t for t in history.update_seconds if t > 0]),
        "n_params": sum(p.numel() for p in model.parameters()),
        "in_shape": list(in_shape),
        "layers": _merged(
            layer_structure(model, history.prior_precision[-1], config.factor_scale),
            output_precisions(
                model,
                probe_inputs(train_loader.dataset.tensors[0], config.seed),
                history.prior_precision[-1],
                config.factor_scale,
            ),
            knockout_accuracies(model, test_loader),
            _effective_entries(
                model,
                train_loader,
                history.prior_precision[-1],
                config,
                fitted=refits[0] if refits and refits[0].fitted_here else None,
            ),
        ),
        "knockout_everywhere": knockout_everywhere(model, test_loader),
        "layers_history": layers_history,
        "history": history.to_dict(),
        "config": config.to_dict(),
    }
    if config.objective == "marglik" and config.retrain:
        again = None if checkpoint is None else retrain_checkpoint_path(checkpoint)
        result["retrained"] = retrain(
            config,
            history.prior_precision[-1],
            device=device,
            progress=progress,
            data_root=data_root,
            checkpoint=again,
            resume=resume and again is not None and again.exists(),
        )
        result["seconds"] = time.perf_counter() - t0
        result["cpu_seconds"] = time.process_time() - c0
    result = _clean(result)
    if keep_model:
        result["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return result


# the source files whose code decides a run's result: a change to any of them gives new keys
CODE_FILES = ("discover.py", "train.py", "checkpoint.py", "models.py", "nn", "laplace", "data")


def code_fingerprint() -> str:
    """A hash of the library code a discovery run depends on (``equilib.cache.code_fingerprint``
    of ``CODE_FILES``; part of every cache key)."""
    return files_fingerprint(CODE_FILES)


def _config_key(config: Config) -> dict:
    """The configuration part of a run's cache key (see :func:`cache_entry`)."""
    key = config.to_dict()
    if config.objective == "map":
        key.update(_MARGLIK_ONLY, hessian=Config.hessian)
    if config.strides is not None:
        key["strides"] = list(config.strides)
    return key


def cache_entry(config: Config) -> dict:
    """The cache key of a run: its configuration and the code that computes it.

    MAP ignores the schedule of the evidence steps and the Hessian, so those take their default
    values in a MAP run's key (MAP runs of different schedules share one entry). ``Config``
    rebuilt from the entry (less ``code``) runs the same computation: see :func:`_run_entry`.
    """
    return with_code(_config_key(config), CODE_FILES)


def _run_entry(entry: dict, device=None) -> dict:
    """Run the configuration of a cache entry (less ``code``), keeping the weights (a worker
    process's job)."""
    config = Config(**{k: v for k, v in entry.items() if k != "code"})
    return run(config, device=device, progress=False, keep_model=True)


def run_cached(
    config: Config, *, device=None, progress: bool = True, cache: bool = True, data_root=None
) -> dict:
    """:func:`run` with the trained weights kept, computed once per configuration.

    Results are stored by ``equilib.cache.cached`` under :func:`cache_entry`, so the command
    line's ``compare`` and the chapter share them. ``cache=False`` recomputes.
    """

    def compute():
        return run(config, device=device, progress=progress, keep_model=True, data_root=data_root)

    if not cache or config.source != "sklearn":  # local data files are not part of the key
        return compute()
    return cached("discover", cache_entry(config), compute)


def run_many(
    configs: dict, *, device=None, workers: int | None = None, progress: bool = True
) -> dict:
    """``{key: result}`` for ``{key: Config}``: cached runs loaded, the others trained.

    The missing runs train side by side in ``workers`` processes, printing what starts and
    finishes: on the CPU, one PyTorch thread each, by default up to two; on a GPU, every
    process on that device, by default up to four (one of these small models keeps a GPU
    mostly idle, waiting for the Python that launches its kernels). ``EQUILIB_WORKERS``
    overrides the default; with one worker the runs go one after the other in this process.
    """
    import os

    from equilib.runs import Job, run_jobs

    dev = torch.device(device) if device is not None else torch.device("cpu")
    if workers is None:
        cores = os.cpu_count() or 1
        default = min(2, cores) if dev.type == "cpu" else min(4, cores)
        text = os.environ.get("EQUILIB_WORKERS", str(default))
        try:
            workers = int(text)
        except ValueError:
            raise ValueError(
                f"EQUILIB_WORKERS={text!r} is not a number; expected how many runs train at "
                "once, a positive integer"
            ) from None
        if workers < 1:
            raise ValueError(
                f"EQUILIB_WORKERS={text!r}: expected how many runs train at once, a positive "
                "integer"
            )
    if workers == 1:
        out = {}
        for key, config in configs.items():
            if progress:
                print(f"  {key}: ...", flush=True)
            out[key] = run_cached(config, device=device, progress=False)
        return out
    names = {
        key: key
        if isinstance(key, str)
        else " ".join(map(str, key))
        if isinstance(key, tuple)
        else str(key)
        for key in configs
    }
    jobs = {
        names[key]: Job(
            "discover",
            _config_key(c),
            _run_entry,
            code=CODE_FILES,
            device=None if dev.type == "cpu" else str(dev),
        )
        for key, c in sorted(configs.items(), key=lambda kc: -expected_cost(kc[1]))
    }
    done = run_jobs(jobs, workers=workers, progress=progress)
    return {key: done[names[key]] for key in configs}


#: training time per epoch and digit relative to CONV's (one CPU thread, chapter 07's default
#: runs: CONV 29 s, F-FC+CONV 38 s, FC 42 s); only the order in which runs start depends on it
_MODEL_COST = {"conv": 1.0, "f-fc+conv": 1.3, "fc": 1.45}


def expected_cost(config: Config) -> float:
    """A rough estimate of a run's training time (arbitrary units), for scheduling.

    :func:`run_many` starts the longest runs first, so that short ones fill the workers at the
    end instead of one long run finishing alone (in chapter 07's default grid, the evidence
    runs take about twice as long as MAP ones, and three times with the retraining).
    """
    per_epoch = config.n_train * _MODEL_COST.get(config.model, 1.5)
    if config.objective == "map":
        return config.epochs * per_epoch
    return config.epochs * per_epoch * (3.0 if config.retrain else 2.0)


def without_weights(result: dict) -> dict:
    """The result without its ``state_dict`` (what goes into JSON)."""
    return {k: v for k, v in result.items() if k != "state_dict"}


def compare(
    tasks=("digits",),
    models=MODELS,
    objectives=OBJECTIVES,
    *,
    fast: bool = False,
    device=None,
    progress: bool = True,
    cache: bool = True,
    log=None,
    data_root=None,
    workers: int | None = None,
    **overrides,
) -> list:
    """Run every task x model x objective (cached) and return the results as a list of dicts.

    With the cache on and scikit-learn's digits, missing runs train in parallel worker
    processes (:func:`run_many`); otherwise one after the other here.
    """
    configs = {
        f"{task} {model} {objective}": default_config(
            fast, task=task, model=model, objective=objective, **overrides
        )
        for task in tasks
        for model in models
        for objective in objectives
    }
    if cache and all(c.source == "sklearn" for c in configs.values()):
        results = run_many(configs, device=device, workers=workers, progress=progress)
        rows = list(results.values())
    else:
        rows = [
            run_cached(c, device=device, progress=progress, cache=cache, data_root=data_root)
            for c in configs.values()
        ]
    if log is not None:
        for key, res in zip(configs, rows):
            log(
                f"{key}: test accuracy {res['test_accuracy']:.3f} ({res['seconds']:.1f} s to train)"
            )
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The compare table as Markdown: accuracy (a run by the evidence also that of its network
    retrained at the precisions it chose, see :func:`retrain`), log evidence, per-block fc/conv
    ratios of the weights' and of the outputs' prior precisions (see
    :func:`output_precisions`), time."""
    lines = [
        "| task | model | objective | test acc. | log p(D)/N | prior prec. fc/conv per block "
        "| output prec. fc/conv per block | seconds |",
        "| --- | --- | --- | ---: | ---: | --- | --- | ---: |",
    ]
    for r in rows:
        ratio, output = (
            ", ".join(
                "-" if v is None else f"{v:.3g}" for v in precision_ratios(r["layers"], key=k)
            )
            for k in ("prior_precision", "output_precision")
        )
        n = r["config"]["n_train"]
        ml = "-" if r.get("log_marglik") is None else f"{r['log_marglik'] / n:.3f}"
        again = r.get("retrained")
        again = "" if again is None else f" (retrained {100 * again['test_accuracy']:.1f}%)"
        lines.append(
            f"| {r['task']} | {r['model']} | {r['objective']} | "
            f"{100 * r['test_accuracy']:.1f}%{again} | {ml} | {ratio} | {output} | "
            f"{r['seconds']:.1f} |"
        )
    return "\n".join(lines)
