"""KFAC in one screen: the factors of every ``nn.Linear`` and ``nn.Conv2d`` from hooks, to read
and to test ``KronLaplace`` against (which computes the same factors for more layer types, over
many batches, with less memory).

For a weight used on rows ``r`` (examples, and locations of a convolution: KFAC-expand)
with inputs ``a_r`` and backpropagated output gradients ``g_rk`` (one per column ``k`` of a
square root of the output Hessian), the GGN block is approximated by ``B (x) A`` with

    A = (1 / #rows) sum_r a_r a_r^T,        B = sum_{r, k} g_rk g_rk^T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from equilib.laplace.output_hessian import check_likelihood_and_hessian, output_hessian_sqrt
from equilib.nn.conv import pad2d

__all__ = ["reference_kfac"]


def _rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input rows of one call: (rows, D_in), ordered like ``weight.view(D_out, -1)``."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if module.groups != 1 or tuple(module.dilation) != (1, 1) or isinstance(module.padding, str):
        raise ValueError(
            "the reference KFAC covers convolutions with groups=1, dilation=1 "
            f"and numeric padding, got {module}"
        )
    x = pad2d(x, *module.padding, module.padding_mode)  # as the forward pass pads
    patches = F.unfold(x, module.kernel_size, stride=module.stride)  # (B, D_in, locations)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def reference_kfac(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor | None = None,
    likelihood: str = "classification",
) -> dict[str, tuple]:
    """``{weight name: (A, B)}`` for every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` on the batch
    ``X`` (each layer called once), with the exact output Hessian of ``likelihood`` (unit noise
    for regression; ``y`` is not needed). ``A``: (D_in, D_in), ``B``: (D_out, D_out)."""
    check_likelihood_and_hessian(likelihood)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    seen = {}

    def keep(name):
        return lambda module, inputs, output: seen.__setitem__(name, (inputs[0].detach(), output))

    handles = [m.register_forward_hook(keep(name)) for name, m in layers.items()]
    try:
        with torch.enable_grad():
            f = model(X)
    finally:
        for handle in handles:
            handle.remove()
    L = output_hessian_sqrt(f, y, likelihood)  # (B, C, K): L L^T = output Hessian per example
    factors = {}
    for name, m in layers.items():
        x, s = seen[name]
        a = _rows(m, x)
        B = 0
        for k in range(L.shape[2]):  # one backward pass per column of the root
            (g,) = torch.autograd.grad(f, s, grad_outputs=L[:, :, k], retain_graph=True)
            g = g.flatten(2).transpose(1, 2) if isinstance(m, nn.Conv2d) else g
            g = g.reshape(-1, g.shape[-1])  # (rows, D_out)
            B = B + g.T @ g
        factors[name + ".weight"] = (a.T @ a / a.shape[0], B)
    return factors
