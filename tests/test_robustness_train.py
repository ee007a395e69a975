"""Training never reports a diverged or misread run: NaN stops it, bad labels are named,
marglik runs shorter than the burn-in still learn their precisions, checkpoints are checked."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from equilib import train


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 1, 3, 4, generator=g)
    y = (X.flatten(1) @ torch.randn(12, 3, generator=g)).argmax(-1)
    return X, y


def _loader(X, y, shuffle=True):
    return DataLoader(
        TensorDataset(X, y),
        batch_size=16,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(0) if shuffle else None,
    )


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 3))


def test_a_huge_learning_rate_stops_with_the_epoch_and_the_tensor(tmp_path):
    X, y = _data()
    ckpt = tmp_path / "checkpoint.pt"
    seen = []
    with pytest.raises(
        train.TrainingDiverged, match=r"epoch 1: .*weight tensor '1\.weight'"
    ) as info:
        train.fit(
            _model(),
            _loader(X, y),
            epochs=3,
            lr=1e30,
            optimizer="sgd",
            progress=False,
            checkpoint=ckpt,
            callback=lambda e, h, m: seen.append(e),
        )
    assert "nan" in str(info.value).lower() or "inf" in str(info.value).lower()
    assert not ckpt.exists() and seen == []  # nothing of the diverged epoch was kept


def test_one_nan_pixel_stops_training():
    X, y = _data()
    X[5, 0, 1, 2] = float("nan")
    with pytest.raises(train.TrainingDiverged, match=r"epoch 1: the training loss is nan"):
        train.fit(_model(), _loader(X, y), epochs=2, lr=1e-2, progress=False)
    with pytest.raises(train.TrainingDiverged, match="epoch 1"):
        train.fit(
            _model(),
            _loader(X, y),
            objective="marglik",
            epochs=2,
            burn_in=0,
            marglik_every=1,
            hyper_steps=2,
            progress=False,
        )


def test_divergence_after_good_epochs_keeps_the_last_good_checkpoint(tmp_path):
    X, y = _data()
    ckpt = tmp_path / "checkpoint.pt"
    model = _model()

    def poison(epoch, history, m):
        if epoch == 2:
            with torch.no_grad():
                m[1].bias[0] = float("inf")

    with pytest.raises(train.TrainingDiverged, match=r"epoch 3: .*'1\.(weight|bias)'"):
        train.fit(
            model,
            _loader(X, y),
            epochs=4,
            lr=1e-2,
            progress=False,
            checkpoint=ckpt,
            callback=poison,
        )
    assert train.load_checkpoint(ckpt)["epoch"] == 2


@pytest.mark.parametrize("bad, message", [(18, r"\[0, 2\].*18"), (-100, r"\[0, 2\].*-100")])
def test_labels_out_of_range_get_a_clear_error(bad, message):
    X, y = _data()
    y[3] = bad
    with pytest.raises(ValueError, match="training labels.*" + message):
        train.fit(_model(), _loader(X, y), epochs=1, progress=False)
    with pytest.raises(ValueError, match="evaluation labels.*" + message):
        train.evaluate(_model(), _loader(X, y, shuffle=False))


def test_float_labels_are_refused():
    X, y = _data()
    with pytest.raises(ValueError, match="integers"):
        train.fit(_model(), _loader(X, y.float()), epochs=1, progress=False)


@pytest.mark.parametrize("epochs, burn_in", [(2, 5), (3, 3)])
def test_marglik_shorter_than_the_burn_in_still_refits_after_the_last_epoch(epochs, burn_in):
    X, y = _data()
    h = train.fit(
        _model(),
        _loader(X, y),
        objective="marglik",
        epochs=epochs,
        burn_in=burn_in,
        marglik_every=2,
        hyper_steps=5,
        prior_precision=1.0,
        progress=False,
    )
    assert math.isfinite(h.log_marglik[-1])
    assert all(math.isnan(v) for v in h.log_marglik[:-1])
    assert h.prior_precision[-1] != h.prior_precision[0]  # the precisions did move


def test_checkpoint_with_the_tag_but_missing_keys_is_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": train.CHECKPOINT_FORMAT, "epoch": 1}, path)
    with pytest.raises(ValueError, match=r"checkpoint.pt.*incomplete.*'settings'"):
        train.load_checkpoint(path)
    X, y = _data()
    with pytest.raises(ValueError, match="incomplete"):
        train.fit(_model(), _loader(X, y), epochs=2, progress=False, checkpoint=path, resume=True)


@pytest.mark.parametrize("content", [b"garbage, not a torch file", b"\x80\x02}q\x00."])
def test_corrupt_checkpoint_message_does_not_advise_weights_only_false(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="checkpoint.pt") as info:
        train.load_checkpoint(path)
    assert "weights_only" not in str(info.value) and "trust" not in str(info.value)


def test_crafted_checkpoint_is_refused_with_a_short_reason(tmp_path):
    import os

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    path = tmp_path / "checkpoint.pt"
    torch.save({"format": train.CHECKPOINT_FORMAT, "settings": Payload()}, path)
    with pytest.raises(ValueError, match="checkpoint.pt.*getcwd") as info:
        train.load_checkpoint(path)
    assert "weights_only=False" not in str(info.value)


def test_nan_outputs_on_the_test_data_are_not_an_accuracy():
    X, y = _data()
    Xte = X.clone()
    Xte[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="outputs on the evaluated data contain NaN"):
        train.evaluate(_model(), _loader(Xte, y, shuffle=False))
    with pytest.raises(ValueError, match="NaN"):
        train.fit(_model(), _loader(X, y), _loader(Xte, y, shuffle=False), epochs=1, progress=False)


def test_checkpoint_with_entries_of_the_wrong_kind_is_named(tmp_path):
    X, y = _data()
    path = tmp_path / "checkpoint.pt"
    train.fit(_model(), _loader(X, y), epochs=1, progress=False, checkpoint=path)
    state = torch.load(path, weights_only=True)
    state["settings"] = "not a dict"
    state["epoch"] = 1.5
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"checkpoint.pt.*damaged.*'settings'.*'epoch'"):
        train.fit(_model(), _loader(X, y), epochs=2, progress=False, checkpoint=path, resume=True)


def test_a_refused_resume_names_each_differing_setting_with_both_values():
    from equilib.checkpoint import check_same_run

    saved = {"lr": 0.001, "warmup": 2, "run_info": {"seed": 0, "task": "digits"}}
    now = {"lr": 0.001, "run_info": {"seed": 3, "task": "digits"}}
    with pytest.raises(ValueError) as err:
        check_same_run({"settings": saved}, now, "ck.pt")
    text = str(err.value)
    assert "seed: 3 here, 0 in the checkpoint" in text
    assert "warmup: not set here, 2 in the checkpoint" in text
    assert "task" not in text and "lr" not in text and "run_info" not in text
    check_same_run({"settings": dict(now)}, now, "ck.pt")  # the same settings resume


def test_the_prior_is_divided_by_the_examples_the_loader_yields_not_its_dataset():
    X, y = _data(n=40)
    subset = DataLoader(TensorDataset(X, y), batch_size=4, sampler=list(range(10)))
    own = DataLoader(TensorDataset(X[:10], y[:10]), batch_size=4)
    assert train.count_examples(subset) == 10
    dropped = DataLoader(TensorDataset(X, y), batch_size=16, drop_last=True)
    assert train.count_examples(dropped) == 32
    repeated = DataLoader(
        TensorDataset(X, y),
        batch_size=8,
        sampler=torch.utils.data.RandomSampler(range(40), replacement=True, num_samples=24),
    )
    assert train.count_examples(repeated) == 24
    # training on ten examples of forty weighs the prior as training on those ten alone
    weights = []
    for loader in (subset, own):
        model = _model()
        train.fit(
            model, loader, epochs=3, lr=0.05, optimizer="sgd", prior_precision=5.0, progress=False
        )
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1])


def test_a_loader_that_yields_nothing_is_refused():
    X, y = _data(n=8)
    with pytest.raises(ValueError, match="no examples"):
        train.count_examples(DataLoader(TensorDataset(X, y), batch_size=16, drop_last=True))
    with pytest.raises(ValueError, match="no examples"):
        train.count_examples([])


def test_an_empty_batch_in_training_is_named_not_reported_as_divergence():
    X, y = _data(n=16)
    batches = [(X, y), (X[:0], y[:0])]
    with pytest.raises(ValueError, match="batch 1 of the training loader holds no examples"):
        train.fit(_model(), batches, epochs=1, progress=False)


def test_a_fresh_run_does_not_replace_an_existing_checkpoint(tmp_path):
    X, y = _data()
    ckpt = tmp_path / "checkpoint.pt"
    train.fit(_model(), _loader(X, y), epochs=2, lr=1e-2, progress=False, checkpoint=ckpt)
    written = ckpt.read_bytes()
    with pytest.raises(FileExistsError, match=r"already exists; pass resume=True"):
        train.fit(_model(), _loader(X, y), epochs=5, lr=1e-1, progress=False, checkpoint=ckpt)
    assert ckpt.read_bytes() == written  # the first run's checkpoint is untouched
    # resuming it is what the message offers, and it still works
    history = train.fit(
        _model(), _loader(X, y), epochs=2, lr=1e-2, progress=False, checkpoint=ckpt, resume=True
    )
    assert len(history.train_loss) == 2
