"""The result cache: reading a file cannot run code, foreign files are named, nothing is lost."""

from __future__ import annotations

import os
import pickle
import stat

import numpy as np
import pytest
import torch

from equilib.cache import atomic_save, atomic_savefig, atomic_write_text, cache_key, cached


class _Payload:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _entry(tmp_path, name, config):
    return tmp_path / (cache_key(name, config) + ".pt")


def test_a_crafted_cache_file_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path))
    marker = tmp_path / "pwned"
    torch.save({"result": _Payload(f"touch {marker}")}, _entry(tmp_path, "demo", {"a": 1}))
    with pytest.warns(RuntimeWarning, match=r"demo-.*\.pt.*cannot be read safely"):
        assert cached("demo", {"a": 1}, lambda: 7) == 7
    assert not marker.exists()
    assert cached("demo", {"a": 1}, lambda: 8) == 7  # the recomputed entry replaced it


def test_a_foreign_pickle_in_the_cache_is_named_and_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path))
    path = _entry(tmp_path, "demo", {"a": 1})
    path.write_bytes(pickle.dumps([1, 2, 3]))  # a valid pickle, but not a cache entry
    with pytest.warns(RuntimeWarning, match=str(path.name)):
        assert cached("demo", {"a": 1}, lambda: {"x": 1}) == {"x": 1}
    torch.save({"test_accuracy": 0.5}, path)  # a torch file of the old layout or by hand
    with pytest.warns(RuntimeWarning, match="not written by equilib.cache"):
        assert cached("demo", {"a": 1}, lambda: {"x": 2}) == {"x": 2}
    path.write_bytes(b"\x00garbage")
    with pytest.warns(RuntimeWarning, match=str(path.name)):
        assert cached("demo", {"a": 1}, lambda: {"x": 3}) == {"x": 3}


def test_cache_round_trips_tensors_numpy_and_containers(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path))
    value = {
        "state": {"w": torch.arange(3.0)},
        "hist": [1.0, 2.0],
        "np": np.arange(4),
        "scalar": np.float64(0.25),
        "t": (1, "a", None),
    }
    cached("rt", {}, lambda: value)
    back = cached("rt", {}, lambda: pytest.fail("recomputed"))
    assert torch.equal(back["state"]["w"], value["state"]["w"])
    assert np.array_equal(back["np"], value["np"]) and back["scalar"] == 0.25
    assert back["t"] == (1, "a", None) and back["hist"] == [1.0, 2.0]


class Custom:
    """A class a cache file may not rebuild (reading it back would have to import it)."""


def test_a_result_that_cannot_be_stored_safely_is_returned_uncached(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="not caching 'odd'.*Custom"):
        out = cached("odd", {}, Custom)
    assert isinstance(out, Custom)
    with pytest.warns(RuntimeWarning, match="not caching 'local'"):
        assert cached("local", {}, lambda: {"f": lambda: 1})["f"]() == 1  # not picklable
    assert not list(tmp_path.glob("odd-*")) and not list(tmp_path.glob("local-*"))


def test_an_unwritable_cache_is_detected_before_computing(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EQUILIB_CACHE", str(blocker / "cache"))
    calls = []

    def compute():
        calls.append(1)
        return {"acc": 0.9}

    with pytest.warns(RuntimeWarning, match=r"not writable.*without caching"):
        assert cached("demo", {}, compute) == {"acc": 0.9}
    assert calls == [1]


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_get_the_mode_the_umask_allows(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    old = os.umask(0o022)
    try:
        text = atomic_write_text(tmp_path / "result.json", "{}")
        blob = atomic_save({"a": torch.zeros(1)}, tmp_path / "checkpoint.pt")
        fig = plt.figure()
        png = atomic_savefig(fig, tmp_path / "structure.png")
        plt.close(fig)
        monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path / "cache"))
        cached("demo", {}, lambda: 1)
        entry = next((tmp_path / "cache").glob("demo-*.pt"))
        for path in (text, blob, png, entry):
            assert _mode(path) == 0o644, (path, oct(_mode(path)))
        os.umask(0o077)
        assert _mode(atomic_write_text(tmp_path / "private.json", "{}")) == 0o600
    finally:
        os.umask(old)
    assert not list(tmp_path.glob(".*.tmp"))


def test_configurations_holding_tensors_or_arrays_are_keyed_by_their_exact_contents(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path))
    # printed, these two tensors (and the two long arrays) are the same
    near = ({"delta": torch.tensor([0.5, 1.0])}, {"delta": torch.tensor([0.50004, 1.0])})
    long = ({"grid": np.zeros(2000)}, {"grid": np.r_[np.zeros(1000), 1.0, np.zeros(999)]})
    for first, second in (near, long):
        assert cached("ev", first, lambda: "first") == "first"
        assert cached("ev", second, lambda: "second") == "second"
        assert cached("ev", first, lambda: "again") == "first"
    # the same values of another dtype are another configuration
    assert cache_key("ev", {"d": torch.ones(2)}) != cache_key("ev", {"d": torch.ones(2).double()})
    assert cache_key("ev", {"d": torch.ones(2)}) == cache_key("ev", {"d": torch.ones(2)})
    assert cache_key("ev", {"n": np.int64(3)}) == cache_key("ev", {"n": 3})


def test_dict_keys_of_other_types_are_not_their_strings():
    import hashlib
    import json

    # JSON writes {1: ...} as {"1": ...}: two configurations, one key
    assert cache_key("ev", {"shift": {1: 0.5}}) != cache_key("ev", {"shift": {"1": 0.5}})
    assert cache_key("ev", {"w": {(0, 1): 2}}) != cache_key("ev", {"w": {"(0, 1)": 2}})
    # keys of mixed types are keyed (sorted, JSON raises), in any insertion order
    assert cache_key("ev", {"m": {1: "a", "b": 2}}) == cache_key("ev", {"m": {"b": 2, 1: "a"}})
    assert cache_key("ev", {"m": {1: "a"}}) != cache_key("ev", {"m": {1: "b"}})
    # a configuration of string keys keeps the key it always had
    config = {"task": "digits", "epochs": 3, "sizes": [1, 2], "inner": {"a": 0.5}}
    blob = json.dumps(config, sort_keys=True)
    assert cache_key("ev", config) == "ev-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_an_atomic_write_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    import equilib.cache as cache_module

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        cache_module.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1]
    )
    monkeypatch.setattr(
        cache_module.os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b))[1]
    )
    atomic_write_text(tmp_path / "result.json", "{}")
    assert events[:2] == ["fsync", "rename"]
    assert (tmp_path / "result.json").read_text() == "{}"
