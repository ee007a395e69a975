"""One batch through the network: the curvature backend, the recorder of every primitive's
calls, and the backward passes that turn the columns of the output Hessian's root into (a, g)
pairs.

``CurvatureBackend.batch(X, y)`` is what a Laplace class's ``fit`` calls per batch (as
laplace-torch's ``_curv_closure`` calls its backend): it gives the batch's summed loss and the
rows of every primitive layer (``BatchCurvature``), which the Laplace class accumulates into
its curvature. Inside, ``Recorder`` keeps the input and output of every call of every primitive
layer (forward hooks), and searches the autograd graph for a bottleneck (``choose_cut``) and
for outputs that reach the model output only through a polyphase downsampling
(``strided_outputs``); ``backprop_rows`` pushes the columns back to every recorded output and
brings the gradients to the generic rows ``g: (K, B, R, G, D_out)`` of
``equilib.laplace.curvature``. ``per_example_grads`` combines them with the input rows into
per-example gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from equilib.laplace.curvature import (
    LayerInfo,
    ParamInfo,
    fold_copies,
    layer_inputs,
    layer_output_rows,
)
from equilib.laplace.output_hessian import check_targets, nll_sum, output_hessian_sqrt


@dataclass
class BatchCurvature:
    """One batch's share of the curvature, as the backend gives it to a Laplace class.

    ``loss``: the summed negative log likelihood (unit noise), a scalar; ``outputs``: the model
    outputs (B, C), detached; ``targets``: the targets as ``check_targets`` returns them
    (labels not clamped: ``fit`` checks them after the pass); ``inputs``: per layer, per call,
    the input rows a: (B, R, G, D_in) (or what the backend's ``input_rows`` makes of them);
    ``grads``: the chunks of output-Hessian columns pushed back, each per layer, per call,
    g: (k, B, R, G, D_out) or None (see :func:`backprop_rows`), to be consumed inside the
    ``CurvatureBackend.batch`` block.
    """

    loss: torch.Tensor
    outputs: torch.Tensor
    targets: torch.Tensor
    inputs: list
    grads: Iterator[list]


class CurvatureBackend:
    """Per batch, the loss and the (a, g) rows of every primitive layer of ``model``.

    ``layers``: the model's primitives (``curvature.inspect_model``); ``likelihood`` and
    ``hessian`` choose the loss and the root ``L`` of its Hessian in the outputs
    (``equilib.laplace.output_hessian``), whose columns are pushed back (one at a time, or all
    at once with ``vectorize``; ``generator``: random numbers of the MC Fisher).
    ``bottleneck``: ``"auto"`` finds on the first batch the submodule that produces the output
    from the narrowest input and keeps it in ``cut`` (a module name, ``""`` for none); a module
    name forces it; None switches it off. ``blockwise``: only blocks of the GGN are needed (the
    bottleneck is exact for them only; False for a dense GGN). ``strided``: only ``g g^T``
    summed over rows is needed (KFAC; see ``Recorder.strided_outputs``). ``input_rows(layers,
    B)``: the input rows a Laplace class accumulates (``curvature.layer_inputs`` by default).
    ``loss_dtype``: dtype of the returned loss.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[LayerInfo],
        likelihood: str,
        hessian: str = "ggn",
        *,
        generator: torch.Generator | None = None,
        vectorize: bool = False,
        bottleneck: str | None = "auto",
        blockwise: bool = True,
        strided: bool = False,
        input_rows: Callable[[list[LayerInfo], int], list] = layer_inputs,
        loss_dtype: torch.dtype = torch.float64,
    ):
        self.model, self.layers = model, layers
        self.likelihood, self.hessian = likelihood, hessian
        self.generator, self.vectorize = generator, vectorize
        self.blockwise, self.strided = blockwise, strided
        self.input_rows, self.loss_dtype = input_rows, loss_dtype
        self.find_cut = bottleneck == "auto" and blockwise
        self.cut = None if bottleneck in (None, "auto") else bottleneck

    @contextmanager
    def batch(self, X: torch.Tensor, y: torch.Tensor) -> Iterator[BatchCurvature]:
        """The curvature of one batch: ``X: (B, ...)`` inputs and ``y``: (B,) labels or (B, D)
        targets, both on the model's device.

        Runs the forward pass with the recorder on and yields a :class:`BatchCurvature`; its
        ``grads`` are computed as they are consumed in the block (with gradients enabled and
        the recorder on, as in the forward pass). The recorded calls are dropped at its end.
        """
        find = self.find_cut and self.cut is None
        try:
            with (
                torch.enable_grad(),
                Recorder(
                    self.layers,
                    self.model,
                    cut=self.cut if self.blockwise else None,
                    find_cut=find,
                    strided=self.strided,
                ) as rec,
            ):
                f = self.model(X)
                f2, y = check_targets(f, y, self.likelihood)
                # labels out of range are refused by fit after the pass; here they are clamped so
                # that the loss and the empirical Fisher's root can be formed
                y_fit = y.clamp(0, f2.shape[1] - 1) if self.likelihood == "classification" else y
                loss = nll_sum(f2.detach(), y_fit, self.likelihood).to(self.loss_dtype)
                L = output_hessian_sqrt(f2, y_fit, self.likelihood, self.hessian, self.generator)
                cut = self._bottleneck(rec, f, f2, L.shape[-1], find)
                inputs = self.input_rows(self.layers, X.shape[0])
                proxies = rec.strided_outputs(f2) if self.strided else None
                grads = backprop_rows(self.layers, f2, L, self.vectorize, cut, proxies)
                yield BatchCurvature(loss, f2.detach(), y, inputs, grads)
        finally:
            for layer in self.layers:
                layer.calls = []

    def _bottleneck(self, rec: Recorder, f, f2, n_columns: int, find: bool):
        """``cut`` for :func:`backprop_rows`: the input of the bottleneck module that produced
        ``f`` and the indices of the layers inside it, or None. ``find``: choose the module now
        (from the ``n_columns`` of the output Hessian's root) and keep it in ``self.cut``."""
        if find:
            self.cut = rec.choose_cut(f, n_columns) or ""
            rec.cut = self.cut or None
        x = rec.cut_input(f) if f2 is f else None
        if x is None:
            return None
        inner = {
            i for i, layer in enumerate(self.layers) if (layer.name + ".").startswith(rec.cut + ".")
        }
        return x, inner

    def where_nonfinite(self, inputs: Iterable[torch.Tensor]) -> str:
        """Which primitive layer first outputs NaN/inf on the batches ``inputs`` (model inputs
        on its device), in words: a second pass, for the error message only."""
        bad = [False] * len(self.layers)
        seen = 0
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), Recorder(self.layers):
                for X in inputs:
                    self.model(X)
                    seen += 1
                    for li, layer in enumerate(self.layers):
                        bad[li] = bad[li] or any(
                            not bool(torch.isfinite(out).all()) for _, out, _ in layer.calls
                        )
                        layer.calls = []
        finally:
            for layer in self.layers:
                layer.calls = []
            self.model.train(was_training)
        if not seen:
            return "pass a re-iterable loader (e.g. a DataLoader) to have the layer named"
        if True in bad:
            first = self.layers[bad.index(True)]
            return (
                f"the first primitive layer with NaN/inf outputs is {first.name!r} "
                f"({type(first.module).__name__})"
            )
        return "no primitive layer's output is: the NaN/inf arises after them"


# autograd nodes that only select or rearrange entries (a polyphase downsampling's gather)
_SELECTIONS = frozenset(
    {"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "GatherBackward0"}
)


class Recorder:
    """Forward hooks that keep the input and output of every call of every primitive layer.

    With ``model`` and ``find_cut=True`` it also records every submodule's call, so that
    ``choose_cut`` can find a bottleneck; with ``cut`` (a submodule name) it records that
    module's input.
    """

    def __init__(
        self,
        layers: list[LayerInfo],
        model: nn.Module | None = None,
        cut: str | None = None,
        find_cut: bool = False,
        strided: bool = False,
    ):
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
        candidates = [
            (x, y)
            for x, y in self.downsampled
            if id(x) in outs and x.grad_fn is not None and y.grad_fn is not None
        ]
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
        yield from _push(
            layers, set(range(len(layers))), f, cols, vectorize, batch, proxies=proxies
        )
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


def _push(layers, which: set[int], f, cols, vectorize: bool, batch: int, extra=None, proxies=None):
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
            grads = torch.autograd.grad(
                f,
                targets,
                grad_outputs=chunk,
                is_grads_batched=True,
                allow_unused=True,
                retain_graph=True,
            )
        else:
            grads = torch.autograd.grad(
                f, targets, grad_outputs=chunk[0], allow_unused=True, retain_graph=True
            )
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
                per_call.append(fold_copies(layer, layer_output_rows(layer, g), batch, 1))
            result.append(per_call)
        if extra is not None:
            g = grads[-1] if targets else None
            result.append(
                torch.zeros((k,) + tuple(extra.shape), device=extra.device, dtype=extra.dtype)
                if g is None
                else g
            )
        yield result


def per_example_grads(
    layer: LayerInfo,
    inputs: list[torch.Tensor],
    grads: list[torch.Tensor],
    params: list[ParamInfo],
) -> dict[int, torch.Tensor]:
    """Per-example, per-column gradients of one layer's tensors: {index: (K, B, numel)}.

    weight: sum over calls and rows of g a^T; bias: sum of g; then the primitive's
    ``param_grad`` where its parameters enter through a map of what the rows see.
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
    param_grad = layer.primitive.param_grad
    if param_grad is not None:
        for idx in out:
            out[idx] = param_grad(layer.module, params[idx].role, out[idx])
    for idx, v in out.items():
        if v.shape[-1] != params[idx].numel:  # pragma: no cover - guards the generic form
            raise RuntimeError(f"gradient of {params[idx].name} has {v.shape[-1]} entries")
    return out
