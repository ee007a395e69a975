"""One training epoch of chapter 07's models: the fused Adam step against the per-tensor loop.

    python benchmarks/bench_train.py                  # CPU, the chapter's sizes
    python benchmarks/bench_train.py --device cuda --reps 5

``equilib.train.fit`` builds Adam with ``fused=True``. For each model of chapter 07's table
(1x24x24 canvases, width 16, batches of 32, 1200 examples) this prints the best time (over
``--reps``, the two settings timed alternately) of one epoch of gradient steps and of the
optimiser steps inside it, with the default per-tensor Adam as the baseline in the same process,
and the ratio baseline / fused. The two settings start from the same weights and their updates
agree to rounding (the largest difference after one epoch is printed too).

A second table times one epoch of the MAP steps with the prior term ``prior_penalty`` (fused Adam
in both): its gradient through autograd (the penalty in the loss's graph) against
``add_prior_grads`` (the same gradient added by hand after the backward pass), with the ratio,
and checks that the two give bitwise the same weights.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from equilib.models import build
from equilib.train import add_prior_grads, prior_penalty


def epoch(model, X, y, fused: bool, batch: int, device) -> tuple[float, float]:
    """Seconds of one epoch of Adam steps on ``(X, y)``, and of its optimiser steps alone."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0, t_opt = time.perf_counter(), 0.0
    for i in range(0, len(X), batch):
        loss = F.cross_entropy(model(X[i : i + batch]), y[i : i + batch])
        opt.zero_grad()
        loss.backward()
        sync()
        t1 = time.perf_counter()
        opt.step()
        sync()
        t_opt += time.perf_counter() - t1
    return time.perf_counter() - t0, t_opt


def prior_epoch(model, X, y, by_hand: bool, batch: int, device) -> float:
    """Seconds of one epoch of fused Adam steps on the cross-entropy plus the prior term."""
    params = list(model.parameters())
    delta = torch.linspace(0.5, 2.0, len(params), device=device)
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for i in range(0, len(X), batch):
        out = model(X[i : i + batch])
        opt.zero_grad()
        if by_hand:
            F.cross_entropy(out, y[i : i + batch]).backward()
            add_prior_grads(params, delta, len(X))
        else:
            loss = F.cross_entropy(out, y[i : i + batch]) + prior_penalty(params, delta, len(X))
            loss.backward()
        opt.step()
    sync()
    return time.perf_counter() - t0


def prior_table(X, y, reps: int, batch: int, device) -> None:
    print("\nthe prior's gradient, one epoch with fused Adam: autograd against add_prior_grads")
    print(f"{'model':10s} {'autograd s':>10s} {'by hand s':>10s} {'ratio':>6s}   same weights")
    for name in ("conv", "fc", "f-fc+conv"):
        torch.manual_seed(0)
        start = build(name, (1, 24, 24), 10, 16, striding="max").to(device)
        best = {False: float("inf"), True: float("inf")}
        final = {}
        for _ in range(reps):
            for by_hand in (False, True):
                model = build(name, (1, 24, 24), 10, 16, striding="max").to(device)
                model.load_state_dict(start.state_dict())
                best[by_hand] = min(best[by_hand], prior_epoch(model, X, y, by_hand, batch, device))
                final[by_hand] = torch.cat([q.detach().flatten() for q in model.parameters()])
        same = torch.equal(final[False], final[True])
        a, b = best[False], best[True]
        print(f"{name:10s} {a:10.2f} {b:10.2f} {a / b:6.2f}   {'bitwise' if same else 'NO'}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1, as a worker)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    X = torch.rand(1200, 1, 24, 24, generator=g).to(device)
    y = torch.randint(0, 10, (1200,), generator=g).to(device)
    print(f"device {device}, {args.threads} thread(s), best of {args.reps}")
    print(
        f"{'model':10s} {'epoch s':>8s} {'(fused)':>8s} {'ratio':>6s}   {'adam s':>7s} "
        f"{'(fused)':>8s} {'ratio':>6s}   max |diff|"
    )
    for name in ("conv", "fc", "f-fc+conv"):
        torch.manual_seed(0)
        start = build(name, (1, 24, 24), 10, 16, striding="max").to(device)
        best = {False: (float("inf"),) * 2, True: (float("inf"),) * 2}
        final = {}
        for _ in range(args.reps):
            for fused in (False, True):
                model = build(name, (1, 24, 24), 10, 16, striding="max").to(device)
                model.load_state_dict(start.state_dict())
                t = epoch(model, X, y, fused, args.batch, device)
                best[fused] = tuple(min(a, b) for a, b in zip(best[fused], t))
                final[fused] = torch.cat([q.detach().flatten() for q in model.parameters()])
        diff = (final[True] - final[False]).abs().max().item()
        (e0, a0), (e1, a1) = best[False], best[True]
        print(
            f"{name:10s} {e0:8.2f} {e1:8.2f} {e0 / e1:6.2f}   {a0:7.2f} {a1:8.2f} "
            f"{a0 / a1:6.2f}   {diff:.1e}"
        )
    prior_table(X, y, args.reps, args.batch, device)


if __name__ == "__main__":
    main()
