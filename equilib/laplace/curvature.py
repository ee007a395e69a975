"""Curvature backend: which module owns each parameter, and the rows of every primitive layer.

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

Every layer type the backend understands has one entry in ``PRIMITIVES`` (``Primitive``): the
module types it covers, how a call's input ``x`` becomes the rows ``a`` and how the gradient at
its output becomes the rows ``g``, and what it checks of a module; adding a layer type means
registering one entry (``register_primitive``). The output Hessian's roots and the loss checks
live in ``equilib.laplace.output_hessian``; the per-batch backend (``CurvatureBackend``), the
recorder and the backward passes in ``equilib.laplace.backprop`` (the names that lived here
are importable from here too).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from equilib import nn as enn
from equilib.nn.conv import torch_pad_mode

# --------------------------------------------------------------------------------------------
# Padding and patches of a convolution, exactly as its forward pass pads
# --------------------------------------------------------------------------------------------


def _pad_mode(mode: str) -> str:
    """``F.pad``'s name for a conv's padding mode; an unknown mode raises (no fallback)."""
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
    cols = [
        x[:, :, i : i + sh * (Ho - 1) + 1 : sh, j : j + sw * (Wo - 1) + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    return torch.stack(cols, dim=2).reshape(B, C * kh * kw, Ho * Wo)


def basis_patches(
    x: torch.Tensor, basis: torch.Tensor, kernel_size, stride, padding, padding_mode: str
) -> torch.Tensor:
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


# --------------------------------------------------------------------------------------------
# The registry: one entry per layer type
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Primitive:
    """One layer type of the curvature backend.

    ``types``: the module classes it covers (subclasses included); ``input_rows(module, x)``:
    a call's input -> a: (B, R, G, D_in); ``output_rows(module, g)``: the gradient at the
    call's output (K, B, *out_shape) -> g: (K, B, R, G, D_out); ``check(module, name)``: raises
    for a configuration the rows do not cover; ``patch_basis(module)``: for a convolution whose
    rows are the (basis-projected) patches of its input, the basis (None: plain patches); KFAC
    uses it for the patch Gram of circular convolutions (``equilib.laplace.kfac.torus_conv``);
    ``param_grad(module, role, grad)``: for a layer whose parameters enter through a linear map
    of the weight the rows see, the adjoint of that map applied to the per-example gradients
    (K, B, D) of the "weight" or "bias" rows (then the layer has no Kronecker factors:
    ``kronecker=False``). ``types`` may be a function returning the classes, for layers whose
    module is imported only when first needed.
    """

    kind: str
    types: tuple[type, ...] | Callable[[], tuple[type, ...]]
    input_rows: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    output_rows: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    description: str
    check: Callable[[nn.Module, str], None] | None = None
    patch_basis: Callable[[nn.Module], torch.Tensor | None] | None = None
    param_grad: Callable[[nn.Module, str, torch.Tensor], torch.Tensor] | None = None
    kronecker: bool = True

    def covers(self, module: nn.Module) -> bool:
        types = self.types if isinstance(self.types, tuple) else self.types()
        return isinstance(module, types)


PRIMITIVES: list[Primitive] = []


def register_primitive(primitive: Primitive) -> Primitive:
    """Add a layer type to the backend. Entries are matched in order, the most recently
    registered first, so a subclass registered later takes precedence over its base class."""
    if not isinstance(primitive, Primitive):
        raise TypeError(f"expected a Primitive, got {type(primitive).__name__}")
    if any(p.kind == primitive.kind for p in PRIMITIVES):
        raise ValueError(f"a primitive of kind {primitive.kind!r} is already registered")
    PRIMITIVES.insert(0, primitive)
    return primitive


def primitive_for(module: nn.Module) -> Primitive | None:
    """The registered entry covering ``module``, or None."""
    for primitive in PRIMITIVES:
        if primitive.covers(module):
            return primitive
    return None


def primitive_kind(module: nn.Module) -> str | None:
    """The kind of the primitive covering ``module`` (``'linear' | 'conv2d' | 'grouped' |
    'basisconv' | 'rotconv' | 'partialconv'`` or a registered one), else None."""
    primitive = primitive_for(module)
    return None if primitive is None else primitive.kind


def supported() -> str:
    """The layer types the backend understands, for error messages."""
    return ", ".join(p.description for p in reversed(PRIMITIVES))


def __getattr__(name: str):
    """``SUPPORTED`` follows the registry; the recorder, backward passes and output-Hessian
    functions that moved to their own modules keep this import path."""
    if name == "SUPPORTED":
        return supported()
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_MOVED = {
    **dict.fromkeys(
        ("LIKELIHOODS", "HESSIANS", "nll_sum", "output_hessian_sqrt", "check_targets"),
        "equilib.laplace.output_hessian",
    ),
    **dict.fromkeys(("Recorder", "backprop_rows", "per_example_grads"), "equilib.laplace.backprop"),
}


# --------------------------------------------------------------------------------------------
# The layer types: rows a: (B, R, G, D_in) of a call's input, g: (K, B, R, G, D_out)
# --------------------------------------------------------------------------------------------


# torch's layers first (entries registered later are matched first); equilib's CircularConv2d
# is an nn.Conv2d and uses its entry
def _linear_inputs(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1, 1, x.shape[-1])


def _linear_outputs(m: nn.Module, g: torch.Tensor) -> torch.Tensor:
    K, B = g.shape[:2]
    return g.reshape(K, B, -1, 1, g.shape[-1])


register_primitive(
    Primitive("linear", (nn.Linear,), _linear_inputs, _linear_outputs, "torch.nn.Linear")
)


def _conv2d_inputs(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    p = conv_patches(x, m.kernel_size, m.stride, m.padding, m.padding_mode)
    return p.transpose(1, 2).unsqueeze(2)


def _conv_outputs(m: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """Locations are the rows: g (K, B, C', *locations) (a group axis counts as one)."""
    K, B = g.shape[:2]
    return g.reshape(K, B, g.shape[2], -1).transpose(2, 3).unsqueeze(3)


def _check_conv2d(m: nn.Module, name: str) -> None:
    if m.groups != 1 or tuple(m.dilation) != (1, 1):
        raise ValueError(
            f"module {name!r} (Conv2d) has groups={m.groups}, dilation="
            f"{tuple(m.dilation)}; only groups=1 and dilation=1 are supported"
        )


register_primitive(
    Primitive(
        "conv2d",
        (nn.Conv2d,),
        _conv2d_inputs,
        _conv_outputs,
        "torch.nn.Conv2d (groups=1, dilation=1)",
        check=_check_conv2d,
        patch_basis=lambda m: None,
    )
)


def _grouped_inputs(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    G = m.weight.shape[0]
    a = x.reshape(x.shape[0], -1, G, x.shape[-1])
    if getattr(m, "basis", None) is not None:
        a = a @ m.basis.transpose(0, 1)
    return a


def _grouped_outputs(m: nn.Module, g: torch.Tensor) -> torch.Tensor:
    K, B = g.shape[:2]
    G = m.weight.shape[0]
    return g.reshape(K, B, -1, G, g.shape[-1])


register_primitive(
    Primitive(
        "grouped",
        (enn.GroupedLinear,),
        _grouped_inputs,
        _grouped_outputs,
        "equilib.nn.GroupedLinear",
    )
)


def _basisconv_inputs(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    padding = getattr(m, "padding", None)
    if padding is None:
        padding = tuple(k // 2 for k in m.kernel_size)
    a = basis_patches(x, m.basis, m.kernel_size, m.stride, padding, m.padding_mode)
    return a.unsqueeze(2)


register_primitive(
    Primitive(
        "basisconv",
        (enn.BasisConv2d,),
        _basisconv_inputs,
        _conv_outputs,
        "equilib.nn.BasisConv2d",
        patch_basis=lambda m: m.basis,
    )
)


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


register_primitive(
    Primitive(
        "rotconv",
        (enn.LiftingConvCN,),
        _rotconv_rows,
        _conv_outputs,
        "equilib.nn.LiftingConvCN / GroupConvCN",
    )
)


def _partial_inputs(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Patches of a partial group conv's input (its group axis, if any, joins the channels)."""
    k = m.kernel_size
    p = conv_patches(x.flatten(1, -3), (k, k), (1, 1), (k // 2, k // 2), m.padding_mode)
    return p.transpose(1, 2).unsqueeze(2)


def _partial_outputs(m: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """g (K, B, C', |H|, H, W): the output channel and group element index the effective
    kernel's rows (``C' |H|``), the locations are the rows."""
    K, B = g.shape[:2]
    return g.reshape(K, B, g.shape[2] * g.shape[3], -1).transpose(2, 3).unsqueeze(3)


def _partial_param_grad(m: nn.Module, role: str, grad: torch.Tensor) -> torch.Tensor:
    """Gradients in the effective kernel ``W = sum_h w(h) (h . K)`` (and in the bias of every
    group element) brought to the parameters: the adjoint of the lambda-average applied to each
    of the (K, B) gradients, and the bias summed over the group axis."""
    K, B = grad.shape[:2]
    if role == "bias":
        return grad.reshape(K, B, m.out_channels, -1).sum(-1)
    with torch.enable_grad():
        w = m.weight.detach().requires_grad_(True)
        avg = m.averaging_weights().detach().to(w.dtype)
        W = torch.tensordot(avg, m.transformed_kernels(w), dims=1)
        (out,) = torch.autograd.grad(W, w, grad.reshape(K * B, *W.shape), is_grads_batched=True)
    return out.reshape(K, B, -1)


def _partial_types() -> tuple[type, ...]:
    from equilib.degree.layers import PartialGroupConv, PartialLiftingConv

    return (PartialLiftingConv, PartialGroupConv)


register_primitive(
    Primitive(
        "partialconv",
        _partial_types,
        _partial_inputs,
        _partial_outputs,
        "equilib.degree PartialLiftingConv / PartialGroupConv (Full and Diag only)",
        param_grad=_partial_param_grad,
        kronecker=False,
    )
)


# --------------------------------------------------------------------------------------------
# Which parameters belong to which primitive
# --------------------------------------------------------------------------------------------


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
    primitive: Primitive | None = None  # the registry entry of ``kind`` unless given

    def __post_init__(self) -> None:
        if self.primitive is None:
            self.primitive = next((p for p in PRIMITIVES if p.kind == self.kind), None)
            if self.primitive is None:
                raise ValueError(f"no primitive of kind {self.kind!r} is registered")


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
    owner: dict[int, str] = {}  # id of a parameter -> the module.parameter that owns it
    for mname, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                f"module {mname!r} of type {type(module).__name__} is not supported by the "
                "Laplace curvature (in training its batch statistics make examples interact; "
                "in evaluation, fold it into the layer before it); "
                f"supported primitives: {supported()}"
            )
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        primitive = primitive_for(module)
        if primitive is None:
            raise ValueError(
                f"module {mname!r} of type {type(module).__name__} owns trainable parameters "
                f"{[n for n, _ in own]} but is not supported by the Laplace curvature; "
                f"supported primitives: {supported()}"
            )
        if primitive.check is not None:
            primitive.check(module, mname)
        layer = LayerInfo(name=mname, module=module, kind=primitive.kind, primitive=primitive)
        for pname, p in own:
            if pname not in ("weight", "bias"):
                raise ValueError(
                    f"module {mname!r} of type {type(module).__name__} has an unexpected "
                    f"parameter {pname!r}; expected only 'weight' and 'bias'"
                )
            if id(p) in owner:  # one tensor in two modules: only one of them would count
                raise ValueError(
                    f"parameter {pname!r} of module {mname!r} is the same tensor as "
                    f"{owner[id(p)]!r}: the Laplace curvature does not support a parameter "
                    "shared by two modules (the second module's part of its curvature would be "
                    "missing); give each module its own parameter"
                )
            owner[id(p)] = f"{mname}.{pname}" if mname else pname
            idx, full = order.pop(id(p))
            params[idx] = ParamInfo(
                idx, full, mname, primitive.kind, pname, p.numel(), tuple(p.shape)
            )
            setattr(layer, pname, idx)
        if layer.weight is not None or layer.bias is not None:
            layers.append(layer)
    missing = [name for _, name in order.values()]
    if missing:  # pragma: no cover - named_modules covers every owner
        raise ValueError(f"could not find the modules owning parameters {missing}")
    return params, layers  # type: ignore[return-value]


def layer_input_rows(layer: LayerInfo, x: torch.Tensor) -> torch.Tensor:
    """The input rows of one call of a primitive: (B, R, G, D_in) (see module docstring)."""
    return layer.primitive.input_rows(layer.module, x)


def layer_output_rows(layer: LayerInfo, g: torch.Tensor) -> torch.Tensor:
    """Backpropagated output rows of one call: g (K, B, *out_shape) -> (K, B, R, G, D_out)."""
    return layer.primitive.output_rows(layer.module, g)


def layer_inputs(layers: list[LayerInfo], batch: int) -> list[list[torch.Tensor]]:
    """Input rows of every recorded call: per layer, a list over calls of a: (B, R, G, D_in)."""
    return [
        [fold_copies(layer, layer_input_rows(layer, x), batch, 0) for x, _, _ in layer.calls]
        for layer in layers
    ]


def fold_copies(layer: LayerInfo, t: torch.Tensor, batch: int, axis: int) -> torch.Tensor:
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
