"""Laplace fits refuse labels and targets that would change what the evidence means."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from equilib.laplace import DiagLaplace, FullLaplace, KronLaplace


def _classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def _batches(y):
    X = torch.randn(len(y), 4, generator=torch.Generator().manual_seed(0))
    return [(X[:4], y[:4]), (X[4:], y[4:])]


@pytest.mark.parametrize("cls", [KronLaplace, DiagLaplace, FullLaplace])
@pytest.mark.parametrize("bad", [-100, 3, 18])
def test_labels_outside_the_classes_are_refused(cls, bad):
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    y[6] = bad  # in the second batch: the check covers every batch
    with pytest.raises(ValueError, match=rf"\[0, 2\].*{bad}"):
        cls(_classifier(), "classification").fit(_batches(y))
    y[6] = 2
    la = cls(_classifier(), "classification").fit(_batches(y))
    assert torch.isfinite(la.log_marginal_likelihood())


@pytest.mark.parametrize("cls", [KronLaplace, DiagLaplace, FullLaplace])
def test_regression_targets_with_nan_are_refused(cls):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 1))
    X = torch.randn(8, 4)
    y = torch.randn(8, 1)
    y[5] = float("nan")
    with pytest.raises(ValueError, match="regression targets contain NaN"):
        cls(model, "regression").fit([(X[:4], y[:4]), (X[4:], y[4:])])
    y[5] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        cls(model, "regression").fit([(X, y)])


@pytest.mark.parametrize(
    "likelihood, hessian, message",
    [
        ("classificaton", "ggn", "likelihood must be one of"),
        ("classification", "GGN", "hessian must be one of"),
        ("regresion", "ggn", "likelihood must be one of"),
    ],
)
def test_the_output_hessian_refuses_a_name_it_does_not_know(likelihood, hessian, message):
    from equilib.laplace.output_hessian import output_hessian_sqrt

    f, y = torch.randn(2, 3), torch.tensor([0, 2])
    with pytest.raises(ValueError, match=message):
        output_hessian_sqrt(f, y, likelihood, hessian)


def test_the_reference_kfac_refuses_an_unknown_likelihood():
    from equilib.laplace.reference_kfac import reference_kfac

    with pytest.raises(ValueError, match="likelihood must be one of"):
        reference_kfac(_classifier(), torch.randn(5, 4), likelihood="classificaton")


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16, torch.bfloat16, "float64"])
def test_the_evidence_is_computed_in_a_float_precision_or_refused(dtype):
    with pytest.raises(ValueError, match="logdet_dtype must be torch.float32 or torch.float64"):
        KronLaplace(_classifier(), logdet_dtype=dtype)


def test_the_dense_evidence_of_a_float32_model_holds_at_small_prior_precisions():
    torch.manual_seed(0)
    X, y = torch.randn(200, 4), torch.randint(0, 3, (200,))
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    la = FullLaplace(model).fit([(X, y)])
    reference = FullLaplace(copy.deepcopy(model).double()).fit([(X.double(), y)])
    assert torch.linalg.eigvalsh(la.H).min() > -1e-9
    for delta in (1e-4, 1e-6, 1e-8):
        torch.testing.assert_close(
            la.log_marginal_likelihood(delta),
            reference.log_marginal_likelihood(delta),
            rtol=1e-5,
            atol=1e-3,
        )


@pytest.mark.parametrize("cls", [KronLaplace, DiagLaplace, FullLaplace])
@pytest.mark.parametrize("where", [0, 1])
def test_an_empty_batch_is_named(cls, where):
    X, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    batches = [(X, y)]
    batches.insert(where, (X[:0], y[:0]))
    with pytest.raises(ValueError, match=f"batch {where} of the loader holds no examples"):
        cls(_classifier()).fit(batches)


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.out = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.l2.weight = self.l1.weight

    def forward(self, x):
        return self.out(torch.tanh(self.l2(torch.tanh(self.l1(x)))))


@pytest.mark.parametrize("cls", [KronLaplace, DiagLaplace, FullLaplace])
def test_a_parameter_shared_by_two_modules_is_refused(cls):
    with pytest.raises(ValueError, match="'l2'.*same tensor as 'l1.weight'"):
        cls(_Tied())


@pytest.mark.parametrize("cls", [KronLaplace, DiagLaplace, FullLaplace])
def test_a_fit_after_requires_grad_changed_is_refused(cls):
    model = _classifier()
    la = cls(model)
    model[0].bias.requires_grad_(False)
    with pytest.raises(ValueError, match=r"trainable parameters changed.*no longer: \['0.bias'\]"):
        la.fit(_batches(torch.tensor([0, 1, 2, 0, 1, 2])))


def test_temperature_may_be_any_real_number_and_a_tuple_output_is_named():
    import numpy as np

    for t in (np.float32(0.5), torch.tensor(0.5), 2):
        assert KronLaplace(_classifier(), temperature=t).temperature == pytest.approx(float(t))
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="temperature must be a positive number"):
            KronLaplace(_classifier(), temperature=bad)

    class TwoOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x), x

    with pytest.raises(TypeError, match="must return one tensor of outputs"):
        DiagLaplace(TwoOutputs()).fit(_batches(torch.tensor([0, 1, 2, 0, 1, 2])))
