"""Train a partial G-CNN whose layers learn a density lambda over C4, and report it per layer.

``python -m equilib degree --data {upright,rotated,partial,double} --seed S --out DIR [--fast]
[--device cpu|cuda]`` writes ``DIR/result.json`` (``test_accuracy``, ``seconds``, ``layers``:
one ``{"name", "entropy"}`` per layer in depth order, entropy = H(lambda) / log|H| with 1 =
uniform, ``data_elements``: the indices into every layer's lambda of the rotations the data
contain, plus the run's settings and lambda per epoch in ``lambdas``) and ``DIR/lambda.png``
(lambda per layer on a polar plot; none for ``--model fc+conv``, which learns no lambda).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from equilib._argtypes import nonneg_int as _nonneg_int
from equilib._argtypes import out_folder as _out_folder
from equilib._argtypes import positive_int as _positive_int
from equilib.cache import atomic_savefig, atomic_write_text, claim_folder, refuse_other_commands

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``degree`` subcommand's options to ``parser``."""
    from equilib.data.mixed import DEGREE_TASKS
    from equilib.degree.training import LAMBDA_OBJECTIVES, MODEL_KINDS, experiment_config

    single, double = experiment_config("rotated"), experiment_config("double")
    double_fast = experiment_config("double", fast=True)

    parser.add_argument(
        "--data",
        required=True,
        choices=DEGREE_TASKS,
        help="upright digits, all of C4, half turns only (partial: the subgroup "
        "{0, 180} of C4, digits other than 6 and 9), or double digits (left "
        "C4-rotated, right upright; 100 classes)",
    )
    parser.add_argument("--seed", type=_nonneg_int, default=0, help="seed (default 0)")
    parser.add_argument(
        "--out",
        required=True,
        type=_out_folder,
        help="output folder (created if needed); one that already holds a result is refused "
        "unless --overwrite is given, one that holds another command's output always",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the result.json and lambda.png already in --out",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help=f"fewer epochs for the double digits ({double_fast['epochs']} in place of "
        f"{double['epochs']}); the other data sets train as without it (also EQUILIB_FAST=1)",
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="where to compute (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--model",
        choices=MODEL_KINDS,
        default="partial",
        help="partial (learned lambda, default), gcnn (lambda frozen uniform), "
        "cnn (trivial group) or fc+conv",
    )
    parser.add_argument(
        "--lambda-objective",
        choices=LAMBDA_OBJECTIVES,
        default="kl",
        help="learn lambda with the KL regularisers (default) or by the Laplace "
        "marginal likelihood",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        help=f"training epochs (default {single['epochs']}; double: {double['epochs']}, "
        f"{double_fast['epochs']} with --fast)",
    )
    parser.add_argument(
        "--n-train",
        type=_positive_int,
        help=f"training images (default {single['n_train']}; double: {double['n_train']})",
    )
    parser.add_argument("--share", action="store_true", help="one lambda shared by all layers")
    parser.add_argument(
        "--threads", type=_positive_int, help="CPU threads torch may use (default: torch's choice)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Train, then write ``result.json`` and ``lambda.png`` into ``args.out``; returns 0.

    The folder is claimed for this run while it trains (a second run into it is refused), and
    a folder that already holds a result is refused unless ``args.overwrite``.
    """
    from equilib import default_device

    default_device(getattr(args, "device", None))  # a bad device is refused before --out is made
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output folder {str(out)!r}: {e.strerror or e}") from e
    with claim_folder(out):
        refuse_other_commands(out, "degree")
        present = [name for name in ("result.json", "lambda.png") if (out / name).exists()]
        if present and not getattr(args, "overwrite", False):
            raise ValueError(
                f"{str(out)!r} already holds a result ({', '.join(present)}); pass "
                "--overwrite to replace it, or another --out"
            )
        return _train_and_write(args)


def _train_and_write(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from equilib import default_device, fast_mode
    from equilib.degree.training import run_experiment
    from equilib.viz.degree import plot_lambdas

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output folder {str(out)!r}: {e.strerror or e}") from e
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    device = default_device(getattr(args, "device", None))
    fast = bool(getattr(args, "fast", False)) or fast_mode()
    overrides = {
        "epochs": getattr(args, "epochs", None),
        "n_train": getattr(args, "n_train", None),
        "lambda_objective": getattr(args, "lambda_objective", "kl"),
    }
    if getattr(args, "share", False):
        overrides["share"] = True
    kind = getattr(args, "model", "partial")
    print(f"degree: {args.data} / {kind} on {device}{' (fast)' if fast else ''}", file=sys.stderr)
    result = run_experiment(
        args.data,
        kind=kind,
        seed=args.seed,
        fast=fast,
        device=device,
        progress=not getattr(args, "quiet", False),
        **overrides,
    )
    result["device"] = str(device)
    atomic_write_text(out / "result.json", json.dumps(result, indent=1))
    wrote = [out / "result.json"]
    if result["layers"]:
        fig = plot_lambdas(result)
        atomic_savefig(fig, out / "lambda.png", dpi=110)
        plt.close(fig)
        wrote.append(out / "lambda.png")
    else:  # no lambda to plot: a plot of the run this one replaced (--overwrite) would be stale
        (out / "lambda.png").unlink(missing_ok=True)
    print(f"test accuracy {100 * result['test_accuracy']:.1f}%  ({result['seconds']:.1f} s)")
    present = result.get("data_elements")
    lambdas = result["lambdas"][-1] if result["lambdas"] else {}
    if present is not None:
        print(f"the data contain the group elements {present} (indices into lambda)")
    for layer in result["layers"]:
        lam = [round(v, 3) for v in lambdas.get(layer["name"], [])]
        print(f"{layer['name']}: entropy {layer['entropy']:.3f}  lambda {lam}")
    print("wrote " + " and ".join(str(p) for p in wrote))
    return 0
