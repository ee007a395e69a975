"""Curvature backend: which modules own which parameters, forward hooks, output-Hessian roots.

The generalised Gauss-Newton (GGN) of the summed negative log likelihood is
``H = sum_n J_n^T Lambda_n J_n`` with ``J_n = d f(x_n) / d theta`` and ``Lambda_n`` the Hessian of
the loss in the network output ``f``. Writing ``Lambda_n = L_n L_n^T`` (``L_n``: (C, K)), every
column ``L_n[:, k]`` is pushed backwards through the network once; at a primitive layer with
input rows ``a`` and backpropagated output rows ``g`` the gradient of ``L_n[:, k]^T f`` with
respect to the weight is ``sum_r g_r a_r^T``. Everything the Laplace classes need (KFAC factors,
per-example gradients for the dense and diagonal GGN) is built from these ``(a, g)`` pairs.

Every primitive is brought to one generic form: ``a: (B, R, G, D_in)`` and
``g: (K, B, R, G, D_out)`` with ``R`` the rows one example contributes (locations of a conv,
extra leading dims of a Linear, stacked copies...) and ``G`` the groups of an
``equilib.nn.GroupedLinear`` (1 for the others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

LIKELIHOODS = ("classification", "regression")
HESSIANS = ("ggn", "mc", "ef")


# --------------------------------------------------------------------------------------------
# Which parameters belong to which primitive
# --------------------------------------------------------------------------------------------


def _equilib_primitives() -> dict[str, type]:
    """The equilib.nn primitives the backend understands (empty while equilib.nn is absent)."""
    try:
        from equilib import nn as enn
    except ImportError:  # pragma: no cover - only while the package is being written
        return {}
    found = {}
    for name in ("GroupedLinear", "BasisConv2d", "LiftingConvCN"):
        cls = getattr(enn, name, None)
        if isinstance(cls, type):
            found[name] = cls
    return found


def primitive_kind(module: nn.Module) -> str | None:
    """``'linear' | 'conv2d' | 'grouped' | 'basisconv' | 'rotconv'`` for a supported primitive,
    else None (``'rotconv'``: ``equilib.nn.LiftingConvCN`` / ``GroupConvCN``)."""
    prims = _equilib_primitives()
    if "GroupedLinear" in prims and isinstance(module, prims["GroupedLinear"]):
        return "grouped"
    if "BasisConv2d" in prims and isinstance(module, prims["BasisConv2d"]):
        return "basisconv"
    if "LiftingConvCN" in prims and isinstance(module, prims["LiftingConvCN"]):
        return "rotconv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv2d"
    return None


SUPPORTED = (
    "torch.nn.Linear, torch.nn.Conv2d (groups=1), equilib.nn.GroupedLinear, equilib.nn.BasisConv2d,"
    " equilib.nn.LiftingConvCN / GroupConvCN"
)


@dataclass
class ParamInfo:
    """One trainable parameter tensor: its name, module, role and position in the prior vector."""

    index: int
    name: str
    module_name: str
    kind: str
    role: str  # "weight" or "bias"
    numel: int
    shape: tuple


@dataclass
class LayerInfo:
    """One primitive module and the indices of its trainable weight / bias tensors."""

    name: str
    module: nn.Module
    kind: str
    weight: int | None = None
    bias: int | None = None
    calls: list = field(default_factory=list)


def inspect_model(model: nn.Module) -> tuple[list[ParamInfo], list[LayerInfo]]:
    """Map every trainable parameter of ``model`` to its primitive layer.

    Raises ValueError naming the module and its type when a module that owns trainable parameters
    (or any BatchNorm) is not one of the supported primitives, instead of silently skipping it.
    """
    order = {}
    for i, (name, p) in enumerate((n, p) for n, p in model.named_parameters() if p.requires_grad):
        order[id(p)] = (i, name)
    if not order:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    params: list[ParamInfo | None] = [None] * len(order)
    layers: list[LayerInfo] = []
    for mname, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                f"module {mname!r} of type {type(module).__name__} is not supported by the "
                "Laplace curvature (batch statistics make examples interact); "
                f"supported primitives: {SUPPORTED}"
            )
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        kind = primitive_kind(module)
        if kind is None:
            raise ValueError(
                f"module {mname!r} of type {type(module).__name__} owns trainable parameters "
                f"{[n for n, _ in own]} but is not supported by the Laplace curvature; "
                f"supported primitives: {SUPPORTED}"
            )
        if kind == "conv2d":
            if module.groups != 1 or tuple(module.dilation) != (1, 1):
                raise ValueError(
                    f"module {mname!r} (Conv2d) has groups={module.groups}, dilation="
                    f"{tuple(module.dilation)}; only groups=1 and dilation=1 are supported"
                )
        layer = LayerInfo(name=mname, module=module, kind=kind)
        for pname, p in own:
            if pname not in ("weight", "bias"):
                raise ValueError(
                    f"module {mname!r} of type {type(module).__name__} has an unexpected "
                    f"parameter {pname!r}; expected only 'weight' and 'bias'"
                )
            if id(p) not in order:  # shared with an earlier module: counted there
                continue
            idx, full = order.pop(id(p))
            params[idx] = ParamInfo(idx, full, mname, kind, pname, p.numel(), tuple(p.shape))
            setattr(layer, pname, idx)
        if layer.weight is not None or layer.bias is not None:
            layers.append(layer)
    missing = [name for _, name in order.values()]
    if missing:  # pragma: no cover - named_modules covers every owner
        raise ValueError(f"could not find the modules owning parameters {missing}")
    return params, layers  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Layer inputs in the generic form a: (B, R, G, D_in)
# --------------------------------------------------------------------------------------------


def _pad_mode(mode: str) -> str:
    """``F.pad``'s name for a conv's padding mode; an unknown mode raises (no fallback)."""
    from equilib.nn.conv import torch_pad_mode

    return torch_pad_mode(mode)


def _pad_for_conv(x: torch.Tensor, kernel_size, padding, padding_mode: str) -> torch.Tensor:
    """x padded as a conv with ``padding`` ((ph, pw) or 'valid' / 'same') pads it."""
    kh, kw = kernel_size
    if isinstance(padding, str):
        if padding == "valid":
            ph = pw = (0, 0)
        else:  # 'same' (stride 1): torch puts the extra pixel at the end
            ph = ((kh - 1) // 2, kh - 1 - (kh - 1) // 2)
            pw = ((kw - 1) // 2, kw - 1 - (kw - 1) // 2)
    else:
        ph = (padding[0], padding[0])
        pw = (padding[1], padding[1])
    if any(ph) or any(pw):
        x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]), mode=_pad_mode(padding_mode))
    return x


def conv_patches(x: torch.Tensor, kernel_size, stride, padding, padding_mode: str) -> torch.Tensor:
    """Unfolded input patches of a 2-D convolution.

    x: (B, C, H, W) -> (B, C*kh*kw, L) with L = H' * W' output locations, ordered like
    ``weight.view(C', C*kh*kw)``. ``padding`` is (ph, pw) or the string 'valid' / 'same'.
    """
    kh, kw = kernel_size
    x = _pad_for_conv(x, kernel_size, padding, padding_mode)
    sh, sw = stride
    B, C, H, W = x.shape
    Ho, Wo = (H - kh) // sh + 1, (W - kw) // sw + 1
    # kh*kw strided slices instead of F.unfold (im2col), which is slow on CPU
    cols = [x[:, :, i : i + sh * (Ho - 1) + 1 : sh, j : j + sw * (Wo - 1) + 1 : sw]
            for i in range(kh) for j in range(kw)]
    return torch.stack(cols, dim=2).reshape(B, C * kh * kw, Ho * Wo)


def basis_patches(x: torch.Tensor, basis: torch.Tensor, kernel_size, stride, padding,
                  padding_mode: str) -> torch.Tensor:
    """Input patches of a conv projected on a filter basis, without forming the patches.

    ``basis: (M, kh*kw)``; returns (B, L, C*M) with entry ``[b, l, c*M + m] =
    sum_k basis[m, k] patch[b, c, k, l]``: one depthwise convolution of x with the M basis
    filters (k*k times less memory than unfolding the patches first).
    """
    kh, kw = kernel_size
    C = x.shape[1]
    M = basis.shape[0]
    x = _pad_for_conv(x, kernel_size, padding, padding_mode)
    w = basis.to(x.dtype).reshape(1, M, kh, kw).expand(C, M, kh, kw).reshape(C * M, 1, kh, kw)
    out = F.conv2d(x, w, stride=stride, groups=C)  # (B, C*M, H', W')
    return out.flatten(2).transpose(1, 2)


def layer_input_rows(layer: LayerInfo, x: torch.Tensor) -> torch.Tensor:
    """The input rows of one call of a primitive: (B, R, G, D_in) (see module docstring)."""
    m = layer.module
    if layer.kind == "linear":
        return x.reshape(x.shape[0], -1, 1, x.shape[-1])
    if layer.kind == "conv2d":
        p = conv_patches(x, m.kernel_size, m.stride, m.padding, m.padding_mode)
        return p.transpose(1, 2).unsqueeze(2)
    if layer.kind == "grouped":
        G = m.weight.shape[0]
        a = x.reshape(x.shape[0], -1, G, x.shape[-1])
        if getattr(m, "basis", None) is not None:
            a = a @ m.basis.transpose(0, 1)
        return a
    if layer.kind == "basisconv":
        padding = getattr(m, "padding", None)
        if padding is None:
            padding = tuple(k // 2 for k in m.kernel_size)
        a = basis_patches(x, m.basis, m.kernel_size, m.stride, padding, m.padding_mode)
        return a.unsqueeze(2)
    if layer.kind == "rotconv":
        return _rotconv_rows(m, x)
    raise AssertionError(layer.kind)  # pragma: no cover


def _rotconv_rows(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows of a C_N lifting / group conv with interpolated filter rotation.

    Output group g uses the filter F_g[d, c, n, p] = sum_q R_g[p, q] w[d, c, n - g, q], so
    y[b, d, g, l] = sum_{c, n, q} w[d, c, n, q] a[b, g, l, (c, n, q)] with
    a[b, g, l, (c, n, q)] = sum_p R_g[p, q] patch[b, c, n + g, p, l]: one row per (g, l).
    x: (B, C, H, W) or (B, C, N, H, W) -> (B, N*L, 1, C*N_in*k*k).
    """
    B = x.shape[0]
    k = m.k
    xf = x.reshape(B, -1, x.shape[-2], x.shape[-1])
    P = conv_patches(xf, (k, k), (1, 1), (k // 2, k // 2), m.padding_mode)
    n_in = xf.shape[1] // m.in_channels
    P = P.view(B, m.in_channels, n_in, k * k, -1)
    R = m.rotations.to(P.dtype)
    rows = []
    for g in range(m.N):
        Pg = torch.roll(P, -g, dims=2) if n_in > 1 else P
        rows.append(torch.einsum("pq,bcnpl->blcnq", R[g], Pg).reshape(B, P.shape[-1], -1))
    return torch.stack(rows, 1).reshape(B, -1, 1, rows[0].shape[-1])


def layer_output_rows(layer: LayerInfo, g: torch.Tensor) -> torch.Tensor:
    """Backpropagated output rows of one call: g (K, B, *out_shape) -> (K, B, R, G, D_out)."""
    K, B = g.shape[:2]
    if layer.kind == "linear":
        return g.reshape(K, B, -1, 1, g.shape[-1])
    if layer.kind in ("conv2d", "basisconv", "rotconv"):  # rotconv: (K, B, C', N, H, W)
        return g.reshape(K, B, g.shape[2], -1).transpose(2, 3).unsqueeze(3)
    if layer.kind == "grouped":
        G = layer.module.weight.shape[0]
        return g.reshape(K, B, -1, G, g.shape[-1])
    raise AssertionError(layer.kind)  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Output Hessian and its square roots
# --------------------------------------------------------------------------------------------


def nll_sum(f: torch.Tensor, y: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Summed negative log likelihood with unit noise (regression: 0.5 * squared error).

    f: (B, C) logits or means; y: (B,) class indices or (B, C) targets.
    """
    if likelihood == "classification":
        return F.cross_entropy(f, y, reduction="sum")
    return 0.5 * (f - y).pow(2).sum()


def output_hessian_sqrt(
    f: torch.Tensor,
    y: torch.Tensor,
    likelihood: str,
    hessian: str = "ggn",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A square root L of the loss Hessian in the outputs, per example: (B, C, K), L L^T ~ H_f.

    ``hessian='ggn'``: exact. Classification: H_f = diag(p) - p p^T, from the root with columns
    L[:, c] = sqrt(p_c) (e_c - p) reduced to K = C - 1 columns (H_f 1 = 0, see
    ``_drop_null_direction``); regression (unit noise): L = I, K = C.
    ``'mc'``: one sampled label, K = 1, E[L L^T] = H_f (L = p - e_yhat, yhat ~ Cat(p);
    regression: L = eps, eps ~ N(0, I)). ``'ef'``: empirical Fisher, K = 1, L = dloss/df at the
    observed label (p - e_y; regression f - y).
    """
    f = f.detach()
    B, C = f.shape
    if likelihood == "classification":
        p = torch.softmax(f, dim=-1)
        if hessian == "ggn":
            eye = torch.eye(C, device=f.device, dtype=f.dtype)
            L = (eye.unsqueeze(0) - p.unsqueeze(2)) * p.sqrt().unsqueeze(1)
            return L if C < 3 else _drop_null_direction(L)
        if hessian == "mc":
            yhat = torch.multinomial(p, 1, generator=generator).squeeze(1)
            return (p - F.one_hot(yhat, C).to(f.dtype)).unsqueeze(-1)
        return (p - F.one_hot(y, C).to(f.dtype)).unsqueeze(-1)
    if hessian == "ggn":
        eye = torch.eye(C, device=f.device, dtype=f.dtype)
        return eye.expand(B, C, C)
    if hessian == "mc":
        eps = torch.randn(f.shape, device=f.device, dtype=f.dtype, generator=generator)
        return eps.unsqueeze(-1)
    return (f - y).unsqueeze(-1)


def _drop_null_direction(L: torch.Tensor) -> torch.Tensor:
    """An exact (B, C, C-1) root of L L^T = diag(p) - p p^T, whose null vector is 1.

    With Q (C, C-1) an orthonormal basis of the complement of 1, H = Q (Q^T H Q) Q^T; the QR
    decomposition (Q^T L)^T = Q' R gives Q^T H Q = R^T R, so L' = Q R^T. One backward pass
    fewer per batch than the C columns of L.
    """
    C = L.shape[1]
    centre = torch.eye(C, device=L.device, dtype=L.dtype) - 1.0 / C
    Q = torch.linalg.qr(centre[:, : C - 1])[0]  # (C, C-1), orthogonal to 1
    R = torch.linalg.qr((Q.transpose(0, 1) @ L).transpose(1, 2), mode="r")[1]  # (B, C-1, C-1)
    return Q @ R.transpose(1, 2)


# --------------------------------------------------------------------------------------------
# One batch through the network: (a, g) pairs for every call of every primitive
# --------------------------------------------------------------------------------------------


# autograd nodes that only select or rearrange entries (a polyphase downsampling's gather)
_SELECTIONS = frozenset({"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0",
                         "GatherBackward0"})


class Recorder:
    """Forward hooks that keep the input and output of every call of every primitive layer.

    With ``model`` and ``find_cut=True`` it also records every submodule's call, so that
    ``choose_cut`` can find a bottleneck; with ``cut`` (a submodule name) it records that
    module's input.
    """

    def __init__(self, layers: list[LayerInfo], model: nn.Module | None = None,
                 cut: str | None = None, find_cut: bool = False, strided: bool = False):
        self.layers = layers
        self.model = model
        self.cut = cut
        self.find_cut = find_cut
        self.strided = strided
        self.handles = []
        self.seen: dict[str, list] = {}
        self.downsampled: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self) -> Recorder:
        for layer in self.layers:
            layer.calls = []
            self.handles.append(layer.module.register_forward_hook(self._hook(layer)))
        if self.model is not None and (self.find_cut or self.cut is not None):
            for name, module in self.model.named_modules():
                if name and (self.find_cut or name == self.cut):
                    self.handles.append(module.register_forward_hook(self._watch(name)))
        if self.model is not None and self.strided:
            from equilib.nn.conv import PolyphaseDownsample

            for module in self.model.modules():
                if isinstance(module, PolyphaseDownsample):
                    self.handles.append(module.register_forward_hook(self._downsampled))
        return self

    def _downsampled(self, module, inputs, output) -> None:
        if module.stride > 1 and isinstance(inputs[0], torch.Tensor):
            self.downsampled.append((inputs[0], output))

    def strided_outputs(self, f: torch.Tensor) -> dict[int, torch.Tensor]:
        """Recorded layer outputs that reach ``f`` only through a polyphase downsampling,
        mapped (by ``id``) to the downsampled tensor.

        The gradient at such an output is the downsampled tensor's gradient scattered into one
        polyphase component and zero elsewhere, so its Gram matrix over locations (all that a
        KFAC output factor needs) is that of the downsampled gradient: ``s * s`` times fewer
        rows, and the full-size gradient is never formed where nothing further back needs it.
        Checked on the autograd graph of ``f``: the output's only consumer is the view and gather
        of the downsampling.
        """
        if not self.downsampled or f.grad_fn is None:
            return {}
        outs = {id(out): out for layer in self.layers for _, out, _ in layer.calls}
        candidates = [(x, y) for x, y in self.downsampled
                      if id(x) in outs and x.grad_fn is not None and y.grad_fn is not None]
        if not candidates:
            return {}
        consumers: dict[tuple, list] = {}
        seen, stack = {f.grad_fn}, [f.grad_fn]
        while stack:
            node = stack.pop()
            for nxt, nr in node.next_functions:
                if nxt is None:
                    continue
                consumers.setdefault((nxt, nr), []).append(node)
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        proxies = {}
        for x, y in candidates:
            # from y back to x: only views and the gather, each the single consumer of the next
            node, target = y.grad_fn, (x.grad_fn, x.output_nr)
            for _ in range(8):
                edges = [e for e in node.next_functions if e[0] is not None]
                if node.name() not in _SELECTIONS or len(edges) != 1:
                    break
                if consumers.get(edges[0]) != [node]:
                    break
                if edges[0] == target:
                    proxies[id(x)] = y
                    break
                node = edges[0][0]
        return proxies

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    @staticmethod
    def _hook(layer: LayerInfo):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"module {layer.name!r} returned {type(output).__name__}, expected a tensor"
                )
            layer.calls.append((inputs[0].detach(), output, output._version))

        return hook

    def _watch(self, name: str):
        def hook(module, inputs, output):
            self.seen.setdefault(name, []).append((inputs, output))

        return hook

    def choose_cut(self, f: torch.Tensor, n_columns: int) -> str | None:
        """The submodule whose output is the model output ``f`` and whose single input is the
        narrowest (per example), if narrower than ``n_columns``; else None."""
        best = None
        for name, calls in self.seen.items():
            if len(calls) != 1:
                continue
            inputs, out = calls[0]
            if out is not f or len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor):
                continue
            x = inputs[0]
            if not x.requires_grad or x.dim() == 0 or x.shape[0] != f.shape[0]:
                continue
            width = x.numel() // x.shape[0]
            if best is None or width < best[1]:
                best = (name, width)
        return best[0] if best is not None and best[1] < n_columns else None

    def cut_input(self, f: torch.Tensor) -> torch.Tensor | None:
        """The recorded input of the cut module if its single call produced ``f``."""
        calls = self.seen.get(self.cut, []) if self.cut is not None else []
        if len(calls) != 1 or calls[0][1] is not f or len(calls[0][0]) != 1:
            return None
        return calls[0][0][0]


def check_targets(f: torch.Tensor, y: torch.Tensor, likelihood: str) -> tuple:
    """Validate model output f and targets y; regression with f: (B,) is seen as (B, 1)."""
    if likelihood == "regression":
        if f.dim() == 1:
            f = f.unsqueeze(-1)
        if y.dim() == 1 and f.shape[-1] == 1:
            y = y.unsqueeze(-1)
        if f.dim() != 2 or y.shape != f.shape:
            raise ValueError(
                f"regression expects outputs (B, D) and targets of the same shape, got outputs "
                f"{tuple(f.shape)} and targets {tuple(y.shape)}"
            )
        return f, y.to(f.dtype)
    if f.dim() != 2 or y.dim() != 1 or y.shape[0] != f.shape[0]:
        raise ValueError(
            f"classification expects logits (B, C) and integer labels (B,), got outputs "
            f"{tuple(f.shape)} and labels {tuple(y.shape)}"
        )
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"classification labels must be integers, got dtype {y.dtype}")
    return f, y.long()


def layer_inputs(layers: list[LayerInfo], batch: int) -> list[list[torch.Tensor]]:
    """Input rows of every recorded call: per layer, a list over calls of a: (B, R, G, D_in)."""
    return [[_fold(layer, layer_input_rows(layer, x), batch, 0) for x, _, _ in layer.calls]
            for layer in layers]


def backprop_rows(
    layers: list[LayerInfo],
    f: torch.Tensor,
    L: torch.Tensor,
    vectorize: bool = False,
    cut: tuple[torch.Tensor, set[int]] | None = None,
    proxies: dict[int, torch.Tensor] | None = None,
):
    """Push the K columns of L back from the outputs to every recorded primitive call.

    f: (B, C) outputs (with graph), L: (B, C, K). Yields chunks of columns (one column at a
    time, or all at once with ``vectorize=True``: one batched backward). Each chunk is, per
    layer, a list over its calls of g: (k, B, R, G, D_out), or None for layers the chunk does
    not reach.

    ``cut = (x, inner)``: every path from the layers outside ``inner`` to f passes through the
    tensor x (the input of the module that produced f; ``inner``: indices of the layers inside
    it). The K columns are first pushed to x and to the inner layers; at x, with
    V_n = (v_n1 ... v_nK) (D x K), they are replaced by the r = min(D, K) rows of R in the QR
    decomposition V_n^T = Q R (R^T R = V_n V_n^T), which then travel on to the outer layers.
    This keeps every block of the GGN exact (not the blocks coupling inner and outer layers).

    ``proxies`` (from ``Recorder.strided_outputs``): for a layer output listed there, the
    gradient of its downsampled stand-in is returned instead (rows of only the kept locations;
    for the KFAC output factor alone, which sums g g^T over rows).
    """
    for layer in layers:
        for _, out, version in layer.calls:
            if out._version != version:
                raise RuntimeError(
                    f"the output of module {layer.name!r} ({type(layer.module).__name__}) was "
                    "modified in place after the layer ran (e.g. ReLU(inplace=True)); use "
                    "out-of-place operations so that the curvature sees the layer's output"
                )
    batch = f.shape[0]
    cols = L.permute(2, 0, 1)  # (K, B, C)
    if cut is None:
        yield from _push(layers, set(range(len(layers))), f, cols, vectorize, batch,
                         proxies=proxies)
        return
    x, inner = cut
    V = []
    for chunk in _push(layers, inner, f, cols, vectorize, batch, extra=x, proxies=proxies):
        V.append(chunk.pop())
        yield chunk
    V = torch.cat(V).reshape(len(cols), batch, -1).transpose(0, 1)  # (B, K, D)
    R = torch.linalg.qr(V, mode="r")[1]  # (B, r, D)
    W = R.transpose(0, 1).reshape(R.shape[1], *x.shape)  # (r, *x.shape)
    outer = set(range(len(layers))) - inner
    yield from _push(layers, outer, x, W, vectorize, batch, proxies=proxies)


def _push(layers, which: set[int], f, cols, vectorize: bool, batch: int, extra=None,
          proxies=None):
    """Backward passes from f with grad_outputs ``cols`` (k, *f.shape) to the outputs of the
    layers in ``which`` (or their ``proxies``) and to the tensor ``extra``, appended to each
    chunk."""
    proxies = proxies or {}
    outs, where = [], []
    for li in sorted(which):
        for ci, (_, out, _) in enumerate(layers[li].calls):
            if out.requires_grad:
                outs.append(proxies.get(id(out), out))
                where.append((li, ci))
    targets = outs + ([extra] if extra is not None else [])
    K = cols.shape[0]
    chunks = [cols] if vectorize and K > 1 else [cols[k : k + 1] for k in range(K)]
    for chunk in chunks:
        k = chunk.shape[0]
        if not targets:
            grads: tuple = ()
        elif k > 1:
            grads = torch.autograd.grad(f, targets, grad_outputs=chunk, is_grads_batched=True,
                                        allow_unused=True, retain_graph=True)
        else:
            grads = torch.autograd.grad(f, targets, grad_outputs=chunk[0], allow_unused=True,
                                        retain_graph=True)
            grads = tuple(None if g is None else g.unsqueeze(0) for g in grads)
        lookup = dict(zip(where, grads))
        result: list = []
        for li, layer in enumerate(layers):
            if li not in which:
                result.append(None)
                continue
            per_call = []
            for ci, (_, out, _) in enumerate(layer.calls):
                g = lookup.get((li, ci))
                if g is None:
                    out = proxies.get(id(out), out)
                    g = torch.zeros((k,) + tuple(out.shape), device=out.device, dtype=out.dtype)
                per_call.append(_fold(layer, layer_output_rows(layer, g), batch, 1))
            result.append(per_call)
        if extra is not None:
            g = grads[-1] if targets else None
            result.append(torch.zeros((k,) + tuple(extra.shape), device=extra.device,
                                      dtype=extra.dtype) if g is None else g)
        yield result


def _fold(layer: LayerInfo, t: torch.Tensor, batch: int, axis: int) -> torch.Tensor:
    """Move stacked copies of the batch (n*B at ``axis``) into the rows of their example.

    Lifting / group convolutions apply their inner conv once to ``torch.cat`` of n transformed
    copies of the batch (copy-major); row ``i`` then belongs to example ``i % B``.
    a: (n*B, R, G, D) -> (B, n*R, G, D) (axis 0); g: (K, n*B, R, G, D) -> (K, B, n*R, G, D).
    """
    lead = t.shape[axis]
    if lead == batch:
        return t
    if lead % batch:
        raise ValueError(
            f"module {layer.name!r} ({type(layer.module).__name__}) was called on a batch of "
            f"{lead} rows for {batch} examples; expected a multiple (stacked copies)"
        )
    n = lead // batch
    pre = t.shape[:axis]
    t = t.reshape(*pre, n, batch, *t.shape[axis + 1 :]).transpose(axis, axis + 1)
    return t.reshape(*pre, batch, -1, *t.shape[axis + 3 :])


def per_example_grads(
    layer: LayerInfo, inputs: list[torch.Tensor], grads: list[torch.Tensor],
    params: list[ParamInfo],
) -> dict[int, torch.Tensor]:
    """Per-example, per-column gradients of one layer's tensors: {index: (K, B, numel)}.

    weight: sum over calls and rows of g a^T; bias: sum of g.
    """
    out: dict[int, torch.Tensor] = {}
    for a, g in zip(inputs, grads):
        K, B = g.shape[:2]
        if layer.weight is not None:
            gw = torch.einsum("kbrgo,brgi->kbgoi", g, a).reshape(K, B, -1)
            out[layer.weight] = out[layer.weight] + gw if layer.weight in out else gw
        if layer.bias is not None:
            gb = g.sum(2).reshape(K, B, -1)
            out[layer.bias] = out[layer.bias] + gb if layer.bias in out else gb
    for idx, v in out.items():
        if v.shape[-1] != params[idx].numel:  # pragma: no cover - guards the generic form
            raise RuntimeError(f"gradient of {params[idx].name} has {v.shape[-1]} entries")
    return out


def sqrt2pi() -> float:
    return math.sqrt(2 * math.pi)
