"""KFAC-Laplace evidence: equilib against laplace-torch, and the cost of a hyperparameter step.

    python benchmarks/bench_marglik.py                     # CUDA when available, else CPU
    python benchmarks/bench_marglik.py --device cpu --n 1000 --backends asdl,backpack

Part 1 times ``fit`` + log marginal likelihood + its gradient in the per-tensor log prior
precisions for equilib's ``KronLaplace`` and, in the same process, for laplace-torch's
``Laplace(..., hessian_structure="kron")`` with each of its GGN backends, on a CNN of about one
million parameters (28x28 digits, 10 classes, ``--n`` examples). It prints both times, their
ratio, and the two log marginal likelihoods side by side (they agree on Linear layers; conv
layers follow different KFAC conventions for A and B, so the conv blocks differ somewhat).
laplace-torch is optional (``pip install equilib[bench]``, better in a separate environment);
without it the comparison is skipped with a message.

Part 2 (``--book``) times, for the book's models on 1x16x16 canvases, one training epoch (Adam)
against one hyperparameter step (refit KFAC + 20 Adam steps on log delta).
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
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 288), nn.ReLU(),
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

    backend = {"asdl": lc.AsdlGGN, "backpack": lc.BackPackGGN,
               "curvlinops": lc.CurvlinopsGGN}[backend_name]
    log_delta = torch.zeros(n_tensors, device=device, requires_grad=True)
    model = copy.deepcopy(model)  # backends leave hooks behind on the model
    with Clock(device) as clock:
        la = Laplace(model, "classification", subset_of_weights="all",
                     hessian_structure="kron", backend=backend)
        la.fit(loader)
        lml = la.log_marginal_likelihood(prior_precision=log_delta.exp())
        lml.backward()
    return clock, float(lml.detach())


def compare(args, device) -> None:
    X, y = load_digits(size=28)
    X, y = X[: args.n].to(device), y[: args.n].to(device)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y),
                                         batch_size=args.batch)
    torch.manual_seed(0)
    model = cnn().to(device)
    train(model, loader, args.epochs, device)
    n_params = sum(p.numel() for p in model.parameters())
    n_tensors = len(list(model.parameters()))
    print(f"CNN with {n_params} parameters ({n_tensors} tensors), {len(X)} examples, "
          f"batch {args.batch}, device {device}")
    runs = [time_equilib(model, loader, device, n_tensors) for _ in range(args.reps)]
    c_eq, lml_eq = min(runs, key=lambda r: r[0].wall)
    print(f"equilib KronLaplace      : wall {c_eq.wall:7.2f} s  cpu {c_eq.cpu:7.2f} s   "
          f"log p(D) = {lml_eq:.2f}")
    try:
        import laplace  # noqa: F401
    except ImportError:
        print("laplace-torch is not installed: comparison skipped "
              "(pip install 'equilib[bench]', ideally in a separate environment)")
        return
    for name in args.backends.split(","):
        try:
            runs = [time_laplace_torch(model, loader, device, n_tensors, name)
                    for _ in range(args.reps)]
        except Exception as err:  # a backend that cannot handle this model or device
            print(f"laplace-torch {name:10s}: failed ({type(err).__name__}: {err})")
            continue
        c_lt, lml_lt = min(runs, key=lambda r: r[0].wall)
        print(f"laplace-torch {name:10s}: wall {c_lt.wall:7.2f} s  cpu {c_lt.cpu:7.2f} s   "
              f"log p(D) = {lml_lt:.2f}   ratio laplace-torch / equilib: wall "
              f"{c_lt.wall / c_eq.wall:.2f}, cpu {c_lt.cpu / c_eq.cpu:.2f}")


def book(args, device) -> None:
    from equilib.data import make_task
    from equilib.models import build

    Xtr, ytr, _, _ = make_task("digits", n_train=args.n, n_test=10, seed=0)
    Xtr, ytr = Xtr.to(device), ytr.to(device)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr, ytr),
                                         batch_size=args.batch, shuffle=False)
    print(f"\nbook models on {tuple(Xtr.shape[1:])}, {len(Xtr)} examples, device {device}")
    print(f"{'model':18s}{'params':>9s}{'epoch s':>9s}{'hyper s':>9s}{'ratio':>7s}"
          f"{'epoch cpu':>11s}{'hyper cpu':>11s}{'ratio':>7s}   (hyper = refit + 20 steps)")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build(name, in_shape=tuple(Xtr.shape[1:]), n_classes=10, width=8).to(device)
        with Clock(device) as epoch:
            train(model, loader, 1, device)
        log_delta = torch.zeros(len(list(model.parameters())), device=device, requires_grad=True)
        opt = torch.optim.Adam([log_delta], lr=0.1)
        with Clock(device) as hyper:
            la = KronLaplace(model, "classification", hessian=args.hessian).fit(loader)
            for _ in range(20):
                opt.zero_grad()
                (-la.log_marginal_likelihood(log_delta.exp()) / len(Xtr)).backward()
                opt.step()
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{name:18s}{n_params:9d}{epoch.wall:9.2f}{hyper.wall:9.2f}"
              f"{hyper.wall / epoch.wall:7.2f}{epoch.cpu:11.2f}{hyper.cpu:11.2f}"
              f"{hyper.cpu / epoch.cpu:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1, help="training epochs before timing")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--book", action="store_true", help="also time the book's models")
    parser.add_argument("--models", default="conv,fc+conv,f-fc+conv,s-fc+s-conv,gconv-c4")
    parser.add_argument("--hessian", default="ggn", choices=("ggn", "mc", "ef"))
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
