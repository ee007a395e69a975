"""The same numbers on a CUDA device as on the CPU, and no host round-trip per batch.

Skipped where no GPU is present (CI has none); run on a GPU machine with
``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from oracles import images, tiny
from torch.utils.data import DataLoader, TensorDataset

from equilib import train
from equilib.laplace import DiagLaplace, FullLaplace, KronLaplace
from equilib.models import MODEL_NAMES, build

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def evidence_and_gradient(cls, model, batches, log_delta, **kwargs):
    la = cls(model, **kwargs).fit(batches)
    ld = log_delta.clone().to(la.device).requires_grad_()
    la.prior_precision = ld.exp()
    lml = la.log_marginal_likelihood()
    lml.backward()
    assert lml.device == la.device and ld.grad.device == la.device
    return lml.item(), ld.grad.cpu()


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("cls", [KronLaplace, DiagLaplace, FullLaplace])
def test_evidence_and_gradient_agree_with_cpu(name, cls):
    model = tiny(name)
    X, y = images(n=8)
    n_tensors = sum(1 for p in model.parameters() if p.requires_grad)
    log_delta = torch.linspace(-1.0, 1.0, n_tensors, dtype=torch.float64)
    cpu = evidence_and_gradient(
        cls, copy.deepcopy(model), [(X[:5], y[:5]), (X[5:], y[5:])], log_delta
    )
    # the first batch already on the GPU, the second on the CPU: fit moves it
    batches = [(X[:5].cuda(), y[:5].cuda()), (X[5:], y[5:])]
    gpu = evidence_and_gradient(cls, copy.deepcopy(model).cuda(), batches, log_delta)
    assert math.isclose(gpu[0], cpu[0], rel_tol=1e-9, abs_tol=1e-9)
    torch.testing.assert_close(gpu[1], cpu[1], rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("hessian", ["ggn", "mc", "ef"])
def test_kron_curvature_loop_has_no_host_sync_per_batch(hessian):
    """Synchronising calls during ``fit`` do not grow with the number of batches."""
    model = build("conv", in_shape=(1, 8, 8), n_classes=3, width=4, hidden=8).cuda()
    X, y = images(n=32)
    X, y = X.float().cuda(), y.cuda()

    def syncs(n_batches):
        batches = list(zip(X.chunk(n_batches), y.chunk(n_batches)))
        gen = torch.Generator(device="cuda").manual_seed(0)
        la = KronLaplace(model, hessian=hessian, generator=gen)
        la.fit(batches[:1])  # warm-up: the bottleneck search and lazy initialisation
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                la.fit(batches)
                torch.cuda.synchronize()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    one, eight = syncs(1), syncs(8)
    # the decompositions after the loop synchronise a fixed number of times
    assert eight <= one, f"{one} synchronising calls for 1 batch, {eight} for 8"


def test_marglik_training_run_agrees_with_cpu():
    """Two epochs of marginal-likelihood training in float64: same weights, same precisions."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 1, 8, 8, generator=g, dtype=torch.float64)
    y = (X[:, 0, :4].sum((1, 2)) > X[:, 0, 4:].sum((1, 2))).long()
    results = {}
    for dev in ("cpu", "cuda"):
        model = tiny("conv")
        loader = DataLoader(TensorDataset(X, y), batch_size=8, shuffle=False)
        hist = train.fit(
            model,
            loader,
            objective="marglik",
            epochs=2,
            burn_in=0,
            marglik_every=1,
            device=dev,
            progress=False,
        )
        assert next(model.parameters()).device.type == dev
        results[dev] = (hist, [p.detach().cpu() for p in model.parameters()])
    (h_cpu, p_cpu), (h_gpu, p_gpu) = results["cpu"], results["cuda"]
    for a, b in zip(p_cpu, p_gpu):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(
        torch.tensor(h_gpu.prior_precision),
        torch.tensor(h_cpu.prior_precision),
        rtol=1e-7,
        atol=1e-9,
    )
    torch.testing.assert_close(
        torch.tensor(h_gpu.log_marglik), torch.tensor(h_cpu.log_marglik), rtol=1e-8, atol=1e-8
    )


def test_run_many_trains_its_runs_side_by_side_on_the_gpu(tmp_path, monkeypatch):
    """Worker processes train on the GPU: the results match a CPU run of the same settings."""
    from equilib import discover

    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path))
    configs = {
        objective: discover.default_config(
            True, model="f-fc+conv", objective=objective, epochs=8, n_train=400, n_test=200
        )
        for objective in ("map", "marglik")
    }
    on_gpu = discover.run_many(configs, device="cuda", workers=2, progress=False)
    for objective, config in configs.items():
        on_cpu = discover.run(config, progress=False)
        assert on_gpu[objective]["test_accuracy"] > 0.6, "8 epochs reach well above chance"
        assert abs(on_gpu[objective]["test_accuracy"] - on_cpu["test_accuracy"]) <= 0.03
