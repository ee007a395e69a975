"""The command line: ``python -m equilib discover ...`` and ``python -m equilib compare ...``.

``discover`` trains one model on one task and writes ``OUT/result.json`` (accuracy, objective,
time, and per block the learned prior precision and weight norm of every path) and
``OUT/structure.png``; ``compare`` runs the table of models x objectives and prints it as
Markdown; ``degree`` (from :mod:`equilib.degree.cli`) learns the degree of equivariance per
layer. Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from equilib._argtypes import nonneg_int as _nonneg_int
from equilib._argtypes import out_folder as _out_folder
from equilib._argtypes import positive_float as _positive_float
from equilib._argtypes import positive_int as _positive_int
from equilib.cache import (
    COMMAND_FILES,
    atomic_savefig,
    atomic_write_text,
    claim_folder,
    refuse_other_commands,
)
from equilib.degree import cli as degree_cli

EPILOG = """examples:
  python -m equilib discover --task digits --model f-fc+conv --objective marglik --out runs/d
  python -m equilib discover --task quadrant --model f-fc+conv --objective marglik --fast --out r
  python -m equilib compare --task digits quadrant --fast
"""


def _add_training_options(p: argparse.ArgumentParser) -> None:
    from equilib.discover import FACTOR_SCALES, FAST, INITS, Config
    from equilib.laplace.curvature import HESSIANS
    from equilib.nn.conv import STRIDINGS

    d = Config()
    g = p.add_argument_group(
        "training (defaults: the chapter's settings; --fast shrinks the data and epochs)"
    )
    g.add_argument("--epochs", type=_positive_int, help=f"training epochs (default {d.epochs})")
    g.add_argument(
        "--seed",
        type=_nonneg_int,
        default=0,
        help="seed of the data split, the initialisation and the shuffling (default 0)",
    )
    g.add_argument(
        "--fast",
        action="store_true",
        help=f"a quick look: {FAST['n_train']} training and {FAST['n_test']} test digits, "
        f"{FAST['epochs']} epochs, steps of {FAST['hyper_lr']} on the log precisions; the "
        "network is the same (also EQUILIB_FAST=1)",
    )
    g.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="where to compute (default: cuda if available, else cpu)",
    )
    g.add_argument(
        "--threads",
        type=_positive_int,
        help="CPU threads torch may use (default: torch's choice; 1 is often "
        "fastest for these small models on a busy machine)",
    )
    g.add_argument(
        "--n-train",
        type=_positive_int,
        help=f"training digits, each in a random quadrant (default {d.n_train})",
    )
    g.add_argument(
        "--n-test",
        type=_positive_int,
        help=f"test digits, each shown in all four quadrants (default {d.n_test})",
    )
    g.add_argument("--width", type=_positive_int, help=f"channels per block (default {d.width})")
    g.add_argument(
        "--strides",
        type=_positive_int,
        nargs="+",
        metavar="S",
        help="one stride per block, e.g. 1 2 2 (default: the zoo's 2 2 1); the "
        "canvas size must be divisible by their product",
    )
    g.add_argument(
        "--fc-blocks",
        type=_nonneg_int,
        nargs="+",
        metavar="B",
        help="give the FC path only to these blocks, counted from 0 (default: every block; "
        "for models with a path beside it, such as f-fc+conv)",
    )
    g.add_argument(
        "--striding",
        choices=STRIDINGS,
        help=f"how blocks stride: polyphase (equivariant to every shift), max (max pooling) "
        f"or plain (keep every S-th pixel, like a strided convolution); max and plain are "
        f"equivariant only to shifts by multiples of the stride (default {d.striding})",
    )
    g.add_argument("--batch-size", type=_positive_int, help=f"batch size (default {d.batch_size})")
    g.add_argument(
        "--lr",
        type=_positive_float,
        help=f"Adam learning rate, cosine-annealed to --lr-min (default {d.lr})",
    )
    g.add_argument("--lr-min", type=float, help=f"final learning rate (default {d.lr_min})")
    g.add_argument(
        "--prior-precision",
        type=_positive_float,
        help=f"initial (MAP: fixed) prior precision of every tensor (default {d.prior_precision})",
    )
    g.add_argument(
        "--burn-in",
        type=_nonneg_int,
        help=f"marglik: epochs before the first curvature refit (default {d.burn_in})",
    )
    g.add_argument(
        "--marglik-every",
        type=_positive_int,
        help=f"marglik: refit the curvature every this many epochs (default {d.marglik_every})",
    )
    g.add_argument(
        "--hyper-steps",
        type=_positive_int,
        help=f"marglik: Adam steps on log prior precisions per refit (default {d.hyper_steps})",
    )
    g.add_argument(
        "--hyper-lr",
        type=_positive_float,
        help=f"marglik: learning rate of those steps (default {d.hyper_lr}; "
        f"{FAST['hyper_lr']} with --fast)",
    )
    g.add_argument(
        "--no-retrain",
        dest="retrain",
        action="store_false",
        default=None,
        help="marglik: skip training the network again by MAP at the precisions the evidence "
        "chose (by default a run by the evidence reports that accuracy too)",
    )
    g.add_argument(
        "--factor-scale",
        choices=FACTOR_SCALES,
        help=f"where a factored FC path keeps its scale: in V, with every row of U at "
        f"unit norm, or spread over both factors (default {d.factor_scale})",
    )
    g.add_argument(
        "--fc-scale",
        type=_positive_float,
        help=f"initial output scale of the FC paths relative to the conv paths (default "
        f"{d.fc_scale})",
    )
    g.add_argument(
        "--init",
        choices=INITS,
        help=f"initialisation: every path rescaled to unit output variance on a batch, or "
        f"the zoo's initialisation as built (default {d.init})",
    )
    g.add_argument(
        "--hessian",
        choices=HESSIANS,
        help=f"marglik: curvature of the refits: exact GGN, Monte-Carlo Fisher (one "
        f"sampled label, cheaper) or empirical Fisher (default {d.hessian})",
    )
    g.add_argument(
        "--source",
        choices=["sklearn", "mnist"],
        help="source digits: scikit-learn's 8x8 digits (default, bundled) or MNIST "
        "from local IDX files (see --data-root)",
    )
    g.add_argument(
        "--data-root",
        help="with --source mnist: folder with the MNIST IDX files (default $EQUILIB_DATA/mnist)",
    )
    g.add_argument(
        "--digit-size",
        type=_positive_int,
        help="resize the source digits to this size, canvas = twice it (default 12 "
        "for scikit-learn's digits, 28 for MNIST)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m equilib`` argument parser with all its subcommands."""
    from equilib.discover import MODELS, OBJECTIVES, TASKS, model_names

    parser = argparse.ArgumentParser(
        prog="python -m equilib",
        description="Learn which symmetry each layer of a network should have, from data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser(
        "discover",
        help="train one model on one task and report its learned per-layer structure",
        description="Train one model on the digits or quadrant task, by MAP or by marginal "
        "likelihood, and write OUT/result.json and OUT/structure.png (the learned "
        "prior precision and weight norm of every path of every block).",
    )
    d.add_argument(
        "--task",
        required=True,
        choices=TASKS,
        help="digits: label = digit; quadrant: label = digit + 10 x quadrant",
    )
    d.add_argument(
        "--model",
        default="f-fc+conv",
        choices=model_names(),
        metavar="MODEL",
        help=f"architecture (default f-fc+conv); one of: {', '.join(model_names())}",
    )
    d.add_argument(
        "--objective",
        default="marglik",
        choices=OBJECTIVES,
        help="map: fixed prior as weight decay; marglik: learn the per-tensor prior "
        "precisions by the Laplace marginal likelihood (default marglik)",
    )
    d.add_argument(
        "--out",
        required=True,
        type=_out_folder,
        help="output folder (created if missing; one that holds another command's output is "
        "refused)",
    )
    d.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt (written after every epoch; a run by the "
        "evidence also checkpoints its retraining, in OUT/checkpoint.retrain.pt); without it, "
        "a folder that already holds a run is refused",
    )
    d.add_argument(
        "--overwrite",
        action="store_true",
        help=f"start over in an OUT that holds a run: its files wait in OUT/{STASH}/ until "
        "the new run has written its result, and come back if the new run fails or is "
        "interrupted",
    )
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_training_options(d)

    c = sub.add_parser(
        "compare",
        help="run the table of models x objectives and print it as Markdown",
        description="Train every model by every objective on each task (cached by "
        "configuration under EQUILIB_CACHE) and print the accuracy table.",
    )
    c.add_argument(
        "--task",
        nargs="+",
        default=["digits", "quadrant"],
        choices=TASKS,
        help="task(s) to run (default both)",
    )
    c.add_argument(
        "--models",
        nargs="+",
        default=list(MODELS),
        choices=model_names(),
        metavar="MODEL",
        help=f"models (default {' '.join(MODELS)})",
    )
    c.add_argument(
        "--objectives",
        nargs="+",
        default=list(OBJECTIVES),
        choices=OBJECTIVES,
        help="objectives (default map marglik)",
    )
    c.add_argument(
        "--out",
        type=_out_folder,
        help="also write the table (table.md) and all results (results.json) to this folder "
        "(created if missing; one that holds a table is refused unless --overwrite is given, "
        "one that holds a run of discover or degree always)",
    )
    c.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the table.md and results.json already in --out (they stay until the "
        "new table is written)",
    )
    c.add_argument("--no-cache", action="store_true", help="recompute even if cached")
    c.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars and no line as each run starts and ends: nothing is printed "
        "until every run has finished",
    )
    _add_training_options(c)

    g = sub.add_parser(
        "degree",
        help="learn the degree of equivariance per layer",
        description=degree_cli.__doc__.strip().splitlines()[0],
    )
    degree_cli.add_arguments(g)
    return parser


def _training_overrides(args) -> dict:
    """The settings of the training options (``_add_training_options``) that ``run`` and
    ``compare`` share, as ``default_config`` overrides (None: the default)."""
    return dict(
        epochs=args.epochs,
        seed=args.seed,
        n_train=args.n_train,
        n_test=args.n_test,
        width=args.width,
        strides=args.strides,
        fc_blocks=args.fc_blocks,
        striding=args.striding,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_min=args.lr_min,
        burn_in=args.burn_in,
        marglik_every=args.marglik_every,
        hyper_steps=args.hyper_steps,
        hyper_lr=args.hyper_lr,
        retrain=args.retrain,
        hessian=args.hessian,
        factor_scale=args.factor_scale,
        fc_scale=args.fc_scale,
        init=args.init,
        prior_precision=args.prior_precision,
        source=args.source,
        digit_size=args.digit_size,
    )


def _config(args):
    from equilib import fast_mode
    from equilib.discover import default_config

    return default_config(
        args.fast or fast_mode(),
        task=args.task,
        model=args.model,
        objective=args.objective,
        **_training_overrides(args),
    )


def _check_data_root(args, source: str) -> None:
    """``--data-root`` names the MNIST folder: refused with any other ``source``, where it would
    be silently ignored."""
    if args.data_root is not None and source != "mnist":
        raise ValueError(
            f"--data-root names the folder of the MNIST files and needs --source mnist "
            f"(the source here is {source})"
        )


def _check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and make sure a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(
            f"cannot write to the output folder {str(folder)!r}: {e.strerror or e}"
        ) from e


# where --overwrite keeps the run it replaces until the new one has written its result
STASH = ".replaced-run"
# the files of a discover run (of COMMAND_FILES["discover"], all but the stash)
RUN_FILES = tuple(name for name in COMMAND_FILES["discover"] if name != STASH)


def _refuse_or_clear_old_run(out: Path, resume: bool, overwrite: bool) -> Path | None:
    """A folder holding a run (finished or interrupted) is never started over silently.

    With ``overwrite`` the old run's files move to ``out/STASH`` and the folder is returned:
    :func:`_settle_stash` deletes it once the new run has finished, or puts the old run back if
    the new one fails. A stash left by a killed ``--overwrite`` holds the run it replaced, so it
    is kept, and the files beside it (the killed run's) are the ones deleted.
    """
    if resume and overwrite:
        raise ValueError("--resume continues the run in OUT and --overwrite deletes it: pass one")
    present = [name for name in RUN_FILES if (out / name).exists()]
    if not present or resume:
        return None
    if not overwrite:
        what = "a finished run" if "result.json" in present else "an interrupted run"
        if (out / STASH).is_dir():
            # a killed --overwrite: its own files beside the run it was replacing
            replaced = ", ".join(sorted(p.name for p in (out / STASH).iterdir())) or "nothing"
            raise ValueError(
                f"{str(out)!r} holds {what} of an --overwrite that was stopped "
                f"({', '.join(present)}) and, in {STASH}/, the run it was replacing "
                f"({replaced}); pass --resume to continue the new run or --overwrite to start "
                f"it over (either deletes {STASH}/ once it finishes; an --overwrite that fails "
                f"or is interrupted brings it back), or, to keep the old run, delete "
                f"{', '.join(present)} and move the files of {STASH}/ back into {str(out)!r}"
            )
        raise ValueError(
            f"{str(out)!r} already holds {what} ({', '.join(present)}); pass --resume to "
            "continue it, --overwrite to delete it and start over, or another --out"
        )
    stash = out / STASH
    if stash.is_dir():
        for name in present:
            (out / name).unlink()
    else:
        stash.mkdir()
        for name in present:
            (out / name).replace(stash / name)
    return stash


def _settle_stash(out: Path, stash: Path | None, finished: bool) -> None:
    """After a run: once it has ``finished``, drop any replaced run left in ``out/STASH`` (also
    one a killed ``--overwrite`` left before this run resumed); if an ``--overwrite`` run
    failed, put the run it was to replace (``stash``) back."""
    if finished:
        if (out / STASH).is_dir():
            shutil.rmtree(out / STASH)
        return
    if stash is None or not stash.is_dir():
        return
    for name in RUN_FILES:
        if (out / name).exists():
            (out / name).unlink()
    for path in stash.iterdir():
        path.replace(out / path.name)
    stash.rmdir()


def _fmt(value, spec: str = ".3g") -> str:
    """A number as text; a value that is missing (None: NaN or inf in the result) as 'n/a'."""
    return "n/a" if value is None else format(value, spec)


def _setup(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a command, with what the interrupted run left behind (``str``)."""


def _interrupted_discover(out: Path, args, restored: bool) -> str:
    """What an interrupted ``discover`` left in ``out``, and how to go on from there."""
    if restored:
        return (
            f"{str(out)!r} holds the run --overwrite was to replace again; the same command "
            "starts over"
        )
    if (out / "checkpoint.pt").is_file():
        how = (
            "the same command"
            if args.resume
            else "the same command with --resume in place of --overwrite"
            if args.overwrite
            else "the same command and --resume"
        )
        return f"continue with {how} (the checkpoint in {str(out)!r} holds the last finished epoch)"
    return (
        f"no epoch had finished, so {str(out)!r} holds no checkpoint; the same command starts over"
    )


def cmd_discover(args) -> int:
    """Run ``discover``: train, then write result.json and structure.png into ``--out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from equilib import default_device
    from equilib.discover import precision_ratios, run
    from equilib.viz.priors import plot_structure

    _setup(args)
    config = _config(args)
    _check_data_root(args, config.source)
    device = default_device(args.device)  # a bad device is refused before --out is created
    out = Path(args.out)
    checkpoint = out / "checkpoint.pt"
    if args.resume and not checkpoint.is_file():  # refused before --out is created
        raise ValueError(
            f"nothing to resume: {str(out)!r} holds no checkpoint.pt; run the same command "
            "without --resume to start"
        )
    _check_writable(out)
    stash = None
    try:
        with claim_folder(out):  # one run at a time per folder; released at the end
            refuse_other_commands(out, "discover")
            stash = _refuse_or_clear_old_run(out, args.resume, args.overwrite)
            finished = False
            try:
                print(
                    f"discover: {config.task} / {config.model} / {config.objective}, "
                    f"{config.epochs} epochs on {device}",
                    file=sys.stderr,
                )
                result = run(
                    config,
                    device=device,
                    progress=not args.quiet,
                    checkpoint=checkpoint,
                    resume=args.resume,
                    data_root=args.data_root,
                )
                result["device"] = str(device)
                fig = plot_structure(result)
                atomic_savefig(fig, out / "structure.png")
                plt.close(fig)
                atomic_write_text(out / "result.json", json.dumps(result, indent=1))
                finished = True
            finally:
                _settle_stash(out, stash, finished)
    except KeyboardInterrupt:
        raise Interrupted(_interrupted_discover(out, args, restored=stash is not None)) from None
    print(
        f"test accuracy {_fmt(100 * result['test_accuracy'], '.1f')}%  ({result['seconds']:.1f} s)"
    )
    if result.get("retrained") is not None:
        print(
            "retrained from the initial weights by MAP at the precisions the evidence chose: "
            f"test accuracy {_fmt(100 * result['retrained']['test_accuracy'], '.1f')}%"
        )
    ratios = precision_ratios(result["layers"])
    outputs = precision_ratios(result["layers"], key="output_precision")
    for layer, r, o in zip(result["layers"], ratios, outputs):
        parts = ", ".join(
            f"{p}: precision {_fmt(v['prior_precision'])}, |w| {_fmt(v['weight_norm'])}"
            + (
                ""
                if v.get("effective_dimension") is None
                else f", gamma {v['effective_dimension']:.3g}"
            )
            for p, v in layer["paths"].items()
        )
        extra = ""
        if r is not None:
            of_outputs = "" if o is None else f", of the outputs {o:.3g}"
            extra = f"  (fc/conv precision ratio {r:.3g}{of_outputs})"
        print(f"{layer['name']}: {parts}{extra}")
        without = [
            f"{p} {_fmt(100 * v['knockout_accuracy'], '.1f')}%"
            for p, v in layer["paths"].items()
            if v.get("knockout_accuracy") is not None
        ]
        if without:
            print(f"    test accuracy without one path: {', '.join(without)}")
    everywhere = result.get("knockout_everywhere") or {}
    if everywhere:
        print(
            "test accuracy without a path in every block: "
            + ", ".join(f"{p} {_fmt(100 * v, '.1f')}%" for p, v in everywhere.items())
        )
    print(f"wrote {out / 'result.json'} and {out / 'structure.png'}")
    return 0


COMPARE_FILES = COMMAND_FILES["compare"]


def _refuse_compare_folder(out: Path, overwrite: bool) -> None:
    """Before any training: a folder that holds another command's run, or (without
    ``overwrite``) a table of an earlier ``compare``, is refused."""
    refuse_other_commands(out, "compare")
    present = [name for name in COMPARE_FILES if (out / name).exists()]
    if present and not overwrite:
        raise ValueError(
            f"{str(out)!r} already holds a table ({', '.join(present)}); pass --overwrite to "
            "replace it, or another --out"
        )


def cmd_compare(args) -> int:
    """Run ``compare``: the table of models x objectives per task, printed as Markdown (the
    table alone on stdout; progress and the time taken on stderr)."""
    import contextlib
    import time

    from equilib import default_device, fast_mode
    from equilib.discover import Config, compare, markdown_table, without_weights

    _setup(args)
    _check_data_root(args, args.source or Config.source)
    device = default_device(args.device)
    out = Path(args.out) if args.out else None
    if out is not None:
        _check_writable(out)
    fast = args.fast or fast_mode()
    overrides = _training_overrides(args)
    # the folder is claimed, and checked, before the training: a refusal loses no run
    with claim_folder(out) if out is not None else contextlib.nullcontext():
        if out is not None:
            _refuse_compare_folder(out, args.overwrite)
        t0 = time.perf_counter()
        # the library prints its progress to stdout (a chapter shows it as the cell's output);
        # here stdout is for the table alone
        with contextlib.redirect_stdout(sys.stderr):
            rows = compare(
                args.task,
                args.models,
                args.objectives,
                fast=fast,
                device=device,
                progress=not args.quiet,
                cache=not args.no_cache,
                log=lambda s: print(s, file=sys.stderr),
                data_root=args.data_root,
                **overrides,
            )
        table = markdown_table(rows)
        total = time.perf_counter() - t0
        if out is not None:
            atomic_write_text(out / "table.md", table + "\n")
            atomic_write_text(
                out / "results.json", json.dumps([without_weights(r) for r in rows], indent=1)
            )
    print(table)
    print(
        f"{len(rows)} run{'' if len(rows) == 1 else 's'} in {total:.1f} s (seconds column: "
        "time to train each run; cached runs are read back)",
        file=sys.stderr,
    )
    return 0


def main(argv=None) -> int:
    """Entry point of ``python -m equilib`` and of the ``equilib`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "discover":
            return cmd_discover(args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "degree":
            return int(degree_cli.run(args) or 0)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        hint = f"; {e}" if isinstance(e, Interrupted) and str(e) else ""
        print(f"interrupted{hint}", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
