"""KFAC-Laplace evidence: equilib against laplace-torch, and the cost of a hyperparameter step.

    python benchmarks/bench_marglik.py                     # CUDA when available, else CPU
    python benchmarks/bench_marglik.py --device cpu --n 1000 --backends asdl,backpack
    python benchmarks/bench_marglik.py --device cpu --threads 1 --book --reps 2

Part 1 times ``fit`` + log marginal likelihood + its gradient in the per-tensor log prior
precisions for equilib's ``KronLaplace`` and, in the same process, for laplace-torch's
``Laplace(..., hessian_structure="kron")`` with each of its GGN backends, on a CNN of about one
million parameters (28x28 digits, 10 classes, ``--n`` examples). It prints both times, their
ratio, and the two log marginal likelihoods side by side (they agree on Linear layers; conv
layers follow different KFAC conventions for A and B, so the conv blocks differ somewhat).
laplace-torch is optional (``pip install equilib[bench]``, better in a separate environment);
without it the comparison is skipped with a message.

Part 2 (``--book``) trains the book's models on a task (``--book-task``) by marginal likelihood
with the chapter's settings and reports, from the training loop's own timings, one training epoch against
one hyperparameter update (KFAC refit + 20 Adam steps on log delta) and the update time per epoch
of the whole run.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

import equilib
from equilib.data import load_digits
from equilib.laplace import KronLaplace

BACKENDS = ("asdl", "backpack", "curvlinops")


def cnn(n_classes: int = 10) -> nn.Sequential:
    """A plain CNN for (B, 1, 28, 28): about one million parameters, most in the first Linear."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 288),
        nn.ReLU(),
        nn.Linear(288, n_classes),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(model, loader, epochs: int, device) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()


class Clock:
    """Wall-clock and process CPU time of a block (CPU time is robust to a busy machine)."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        sync(self.device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def time_equilib(model, loader, device, n_tensors: int):
    log_delta = torch.zeros(n_tensors, device=device, requires_grad=True)
    with Clock(device) as clock:
        la = KronLaplace(model, "classification")
        la.fit(loader)
        lml = la.log_marginal_likelihood(log_delta.exp())
        lml.backward()
    return clock, float(lml.detach())


def time_laplace_torch(model, loader, device, n_tensors: int, backend_name: str):
    from laplace import Laplace
    from laplace import curvature as lc

    backend = {"asdl": lc.AsdlGGN, "backpack": lc.BackPackGGN, "curvlinops": lc.CurvlinopsGGN}[
        backend_name
    ]
    log_delta = torch.zeros(n_tensors, device=device, requires_grad=True)
    model = copy.deepcopy(model)  # backends leave hooks behind on the model
    with Clock(device) as clock:
        la = Laplace(
            model,
            "classification",
            subset_of_weights="all",
            hessian_structure="kron",
            backend=backend,
        )
        la.fit(loader)
        lml = la.log_marginal_likelihood(prior_precision=log_delta.exp())
        lml.backward()
    return clock, float(lml.detach())


def compare(args, device) -> None:
    X, y = load_digits(size=28)
    X, y = X[: args.n].to(device), y[: args.n].to(device)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, y), batch_size=args.batch
    )
    torch.manual_seed(0)
    model = cnn().to(device)
    train(model, loader, args.epochs, device)
    n_params = sum(p.numel() for p in model.parameters())
    n_tensors = len(list(model.parameters()))
    print(
        f"CNN with {n_params} parameters ({n_tensors} tensors), {len(X)} examples, "
        f"batch {args.batch}, device {device}"
    )
    warmup = args.warmup if args.warmup is not None else int(device.type == "cuda")
    for _ in range(warmup):  # CUDA's libraries load on first use: keep that out of the timings
        time_equilib(model, loader, device, n_tensors)
    runs = [time_equilib(model, loader, device, n_tensors) for _ in range(args.reps)]
    c_eq, lml_eq = min(runs, key=lambda r: r[0].wall)
    print(
        f"equilib KronLaplace      : wall {c_eq.wall:7.2f} s  cpu {c_eq.cpu:7.2f} s   "
        f"log p(D) = {lml_eq:.2f}"
    )
    try:
        import laplace  # noqa: F401
    except ImportError:
        print(
            "laplace-torch is not installed: comparison skipped "
            "(pip install 'equilib[bench]', ideally in a separate environment)"
        )
        return
    for name in [n for n in args.backends.split(",") if n]:
        try:
            runs = [
                time_laplace_torch(model, loader, device, n_tensors, name)
                for _ in range(warmup + args.reps)
            ][warmup:]
        except Exception as err:  # a backend that cannot handle this model or device
            print(f"laplace-torch {name:10s}: failed ({type(err).__name__}: {err})")
            continue
        c_lt, lml_lt = min(runs, key=lambda r: r[0].wall)
        print(
            f"laplace-torch {name:10s}: wall {c_lt.wall:7.2f} s  cpu {c_lt.cpu:7.2f} s   "
            f"log p(D) = {lml_lt:.2f}   ratio laplace-torch / equilib: wall "
            f"{c_lt.wall / c_eq.wall:.2f}, cpu {c_lt.cpu / c_eq.cpu:.2f}"
        )


def book(args, device) -> None:
    """Time the hyperparameter step inside the book's own training runs (``equilib.discover``).

    For each model: one marginal-likelihood run at the chapter's default settings (or
    ``--book-epochs``); from its history, the mean time of a training epoch (the pass of gradient
    steps), the mean time of one hyperparameter update (KFAC refit + ``hyper_steps`` Adam steps
    on log delta), their ratio, the hyperparameter time per epoch of the whole run (sum over
    refits / sum over epochs, what the schedule costs on average) and per epoch after the
    burn-in (one update every ``marglik_every`` epochs: the ratio / ``marglik_every``).
    """
    from equilib.discover import default_config, run

    print(
        f"\nbook models: marginal-likelihood training runs on {args.book_task!r}, device {device}"
    )
    print(
        f"{'model':14s}{'hessian':>8s}{'params':>8s}{'epoch s':>9s}{'update s':>10s}"
        f"{'update/epoch':>14s}{'per epoch of run':>18s}{'after burn-in':>15s}"
    )
    for name in args.models.split(","):
        for hessian in args.hessian.split(","):
            config = default_config(
                task=args.book_task,
                model=name,
                objective="marglik",
                hessian=hessian,
                epochs=args.book_epochs,
            )
            result = run(config, device=device, progress=False)
            h = result["history"]
            train, hyper = h["step_seconds"], h["update_seconds"]
            n_up = sum(t > 0 for t in hyper)
            epoch_s, update_s = sum(train) / len(train), sum(hyper) / max(n_up, 1)
            print(
                f"{name:14s}{hessian:>8s}{result['n_params']:8d}{epoch_s:9.3f}{update_s:10.3f}"
                f"{update_s / epoch_s:14.2f}{sum(hyper) / sum(train):18.2f}"
                f"{update_s / epoch_s / config.marglik_every:15.2f}"
            )
    print(
        f"(update = refit + {config.hyper_steps} steps, every {config.marglik_every} epochs "
        f"after {config.burn_in}; {config.epochs} epochs of {config.n_train} examples, "
        f"batch {config.batch_size})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1, help="training epochs before timing")
    parser.add_argument("--reps", type=int, default=1, help="timed runs of each (the best counts)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed runs of each first (default: 1 on CUDA, 0 on the CPU)",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="laplace-torch backends to compare with ('' for none)",
    )
    parser.add_argument("--book", action="store_true", help="also time the book's models")
    parser.add_argument("--models", default="conv,fc,fc+conv,f-fc+conv,s-fc+s-conv")
    parser.add_argument(
        "--hessian",
        default="ggn,mc",
        help="curvatures to time in --book (comma-separated: ggn, mc, ef)",
    )
    parser.add_argument(
        "--book-task",
        default="digits",
        choices=("digits", "quadrant"),
        help="task of the --book runs",
    )
    parser.add_argument(
        "--book-epochs",
        type=int,
        default=None,
        help="epochs of the --book runs (default: the chapter's)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = equilib.default_device(args.device)
    compare(args, device)
    if args.book:
        book(args, device)


if __name__ == "__main__":
    main()
