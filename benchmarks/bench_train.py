"""One training epoch of chapter 07's models: the fused Adam step against the per-tensor loop.

    python benchmarks/bench_train.py                  # CPU, the chapter's sizes
    python benchmarks/bench_train.py --device cuda --reps 5

``equilib.train.fit`` builds Adam with ``fused=True``. For each model of chapter 07's table
(1x24x24 canvases, width 16, batches of 32, 1200 examples) this prints the best time (over
``--reps``, the two settings timed alternately) of one epoch of gradient steps and of the
optimiser steps inside it, with the default per-tensor Adam as the baseline in the same process,
and the ratio baseline / fused. The two settings start from the same weights and their updates
agree to rounding (the largest difference after one epoch is printed too).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from equilib.models import build


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


if __name__ == "__main__":
    main()
