"""Forward+backward time and memory of every named model, relative to ``conv`` in the same run.

    python benchmarks/bench_models.py                 # the book's sizes on the default device
    python benchmarks/bench_models.py --device cpu --batch 128 --reps 20

For each model size the book uses (1x16x16 canvases at width 8 and 16, the 1x24x24 canvases of
chapter 07's discovery runs at width 16, and a 3x32x32 CIFAR-sized input at width 16) it prints, per model, the
number of parameters, the best time (over ``--reps``, models timed round-robin) of one
forward+backward pass of a batch and its memory, each also as a ratio to ``conv`` measured in
the same process. Memory is the bytes of the
parameters, their gradients and the tensors autograd saves for the backward pass (counted with
``torch.autograd.graph.saved_tensors_hooks``, identical on every device); on CUDA the peak
allocated memory is printed too. F-FC+CONV should stay within a small factor of CONV; FC
(a dense C'Y x CX weight per block) should not.

It then times two building blocks against their textbook forms in the same process: circular
padding (``equilib.nn.circular_pad`` vs ``F.pad(mode="circular")``) and shift-equivariant
striding (``PolyphaseDownsample``'s single gather vs stacking the ``s*s`` components and
indexing the chosen one), forward+backward on a feature map of the book's size, and max pooling
without gradients (``MaxPoolDownsample`` in an evaluation pass vs ``max_pool2d``), forward only.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import equilib
from equilib.models import MODEL_NAMES, build
from equilib.nn import (
    MaxPoolDownsample,
    PolyphaseDownsample,
    circular_pad,
    polyphase_components,
)

SIZES = [((1, 16, 16), 8), ((1, 16, 16), 16), ((1, 24, 24), 16), ((3, 32, 32), 16)]


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass (deduplicated)."""
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor):
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(v for k, v in seen.items() if k not in param_ptrs)


class Case:
    """One model with its batch, ready to time a forward+backward step."""

    def __init__(self, name: str, in_shape, width: int, batch: int, device):
        torch.manual_seed(0)
        self.device = device
        self.model = build(name, in_shape, n_classes=10, width=width).to(device)
        self.x = torch.randn(batch, *in_shape, device=device)
        self.y = torch.randint(10, (batch,), device=device)
        self.times: list[float] = []
        self.cuda_peak = 0

    def step(self) -> None:
        self.model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(self.model(self.x), self.y).backward()

    def timed_step(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.cuda_peak = max(self.cuda_peak, torch.cuda.max_memory_allocated())
        self.times.append(time.perf_counter() - t0)

    def result(self) -> dict:
        n_params = sum(p.numel() for p in self.model.parameters())
        mem = 2 * 4 * n_params + saved_bytes(self.model, self.x)
        # best of reps: the least disturbed by other processes
        return {
            "params": n_params,
            "time": min(self.times),
            "mem": mem,
            "cuda_peak": self.cuda_peak,
        }


def measure_all(names, in_shape, width: int, batch: int, reps: int, device) -> dict:
    """Time all models round-robin (rep by rep), so that load changes hit every model alike."""
    cases = {n: Case(n, in_shape, width, batch, device) for n in names}
    for case in cases.values():  # warm-up
        case.step()
        case.step()
    for _ in range(reps):
        for case in cases.values():
            case.timed_step()
    return {n: c.result() for n, c in cases.items()}


def _best_time(fn, x: torch.Tensor, reps: int, device, backward: bool = True) -> float:
    """Best time of ``fn(x)`` forward plus a backward pass of ones (``backward=False``: the
    forward alone, to be called under ``torch.no_grad``)."""
    times = []
    for i in range(reps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        y = fn(x)
        if backward:
            y.backward(torch.ones_like(y))
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # two warm-up calls
            times.append(time.perf_counter() - t0)
    return min(times)


def stacked_polyphase(x: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """The textbook form: stack the s*s components, pick each example's largest."""
    comps = polyphase_components(x, stride)
    phase = comps.detach().flatten(2).pow(2).sum(2).argmax(dim=1)
    return comps[torch.arange(x.shape[0], device=x.device), phase]


def layer_ops(batch: int, reps: int, device) -> None:
    x = torch.randn(batch, 16, 24, 24, device=device, requires_grad=True)
    down = PolyphaseDownsample(2)
    pairs = {
        "circular padding by 1": (
            lambda t: F.pad(t, (1, 1, 1, 1), mode="circular"),
            lambda t: circular_pad(t, 1),
        ),
        "polyphase striding by 2": (stacked_polyphase, down),
    }
    print(f"\nbuilding blocks on ({batch}, 16, 24, 24), forward+backward")
    print(f"{'operation':<26}{'textbook ms':>12}{'equilib ms':>12}{'speed-up':>10}")
    for name, (textbook, ours) in pairs.items():
        assert torch.equal(textbook(x), ours(x))
        t_ref = _best_time(textbook, x, reps, device)
        t_eq = _best_time(ours, x, reps, device)
        print(f"{name:<26}{1e3 * t_ref:>12.3f}{1e3 * t_eq:>12.3f}{t_ref / t_eq:>10.2f}")
    # evaluation passes: max pooling without gradients, against max_pool2d on the same input
    pool = MaxPoolDownsample(2)
    textbook_pool = lambda t: F.max_pool2d(t.reshape(-1, 1, 24, 24), 2)  # noqa: E731
    with torch.no_grad():
        ours = pool(x)
        assert torch.equal(textbook_pool(x).reshape(ours.shape), ours)
        t_ref = _best_time(textbook_pool, x, reps, device, backward=False)
        t_eq = _best_time(pool, x, reps, device, backward=False)
    name = "max pooling by 2, no grad"
    print(f"{name:<26}{1e3 * t_ref:>12.3f}{1e3 * t_eq:>12.3f}{t_ref / t_eq:>10.2f}  (forward)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--models", default=",".join(MODEL_NAMES))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = equilib.default_device(args.device)
    names = [n.strip() for n in args.models.split(",")]
    if "conv" not in names:
        names = ["conv"] + names
    print(
        f"device={device} batch={args.batch} reps={args.reps} threads={torch.get_num_threads()} "
        f"torch={torch.__version__}"
    )
    for in_shape, width in SIZES:
        rows = measure_all(names, in_shape, width, args.batch, args.reps, device)
        base = rows["conv"]
        print(f"\ninput {in_shape}, width {width}")
        head = f"{'model':<18}{'params':>10}{'ms':>9}{'x conv':>8}{'MiB':>9}{'x conv':>8}"
        if device.type == "cuda":
            head += f"{'cuda MiB':>10}"
        print(head)
        for n, r in rows.items():
            line = (
                f"{n:<18}{r['params']:>10}{1e3 * r['time']:>9.2f}"
                f"{r['time'] / base['time']:>8.2f}{r['mem'] / 2**20:>9.2f}"
                f"{r['mem'] / base['mem']:>8.2f}"
            )
            if device.type == "cuda":
                line += f"{r['cuda_peak'] / 2**20:>10.1f}"
            print(line)
    layer_ops(args.batch, 10 * args.reps, device)


if __name__ == "__main__":
    main()
