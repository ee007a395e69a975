"""FAST switch, seeding, device choice, and the on-disk cache."""

import pytest
import torch

import equilib
from equilib.cache import cache_key, cached


@pytest.mark.parametrize(
    "value,expected", [("1", True), ("true", True), ("ON", True), ("0", False), ("", False)]
)
def test_fast_mode_reads_environment(monkeypatch, value, expected):
    monkeypatch.setenv("EQUILIB_FAST", value)
    assert equilib.fast_mode() is expected


def test_fast_mode_rejects_unknown_values(monkeypatch):
    monkeypatch.setenv("EQUILIB_FAST", "maybe")
    with pytest.raises(ValueError, match="EQUILIB_FAST"):
        equilib.fast_mode()


def test_seed_everything_makes_draws_repeatable():
    equilib.seed_everything(3)
    a = torch.randn(5)
    equilib.seed_everything(3)
    b = torch.randn(5)
    equilib.seed_everything(4)
    c = torch.randn(5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="non-negative"):
        equilib.seed_everything(-1)


def test_default_device(monkeypatch):
    monkeypatch.delenv("EQUILIB_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert equilib.default_device().type == expected
    assert equilib.default_device("cpu").type == "cpu"
    monkeypatch.setenv("EQUILIB_DEVICE", "cpu")
    assert equilib.default_device().type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            equilib.default_device("cuda")


def test_a_device_that_does_not_exist_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("EQUILIB_DEVICE", "tpu")
    with pytest.raises(ValueError, match=r"EQUILIB_DEVICE='tpu' .*'cpu', 'cuda'"):
        equilib.default_device()
    with pytest.raises(ValueError, match=r"device='gpu0' .*'cpu', 'cuda'"):
        equilib.default_device("gpu0")


def test_a_worker_count_that_is_not_a_number_is_refused_by_name(monkeypatch):
    from equilib import discover

    monkeypatch.setenv("EQUILIB_WORKERS", "abc")
    config = discover.default_config(True, epochs=1)
    with pytest.raises(ValueError, match="EQUILIB_WORKERS='abc'.*positive integer"):
        discover.run_many({"a": config, "b": config}, progress=False)


def test_cache_computes_once_per_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"value": torch.arange(3)}

    first = cached("demo", {"a": 1}, compute)
    second = cached("demo", {"a": 1}, compute)
    cached("demo", {"a": 2}, compute)
    assert len(calls) == 2
    assert torch.equal(first["value"], second["value"])
    assert cache_key("demo", {"a": 1, "b": 2}) == cache_key("demo", {"b": 2, "a": 1})
    assert not list(tmp_path.glob("*.tmp"))


def test_cache_never_replaces_a_good_result_with_a_failed_one(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path))
    cached("keep", {}, lambda: 1)

    def boom():
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cached("keep", {}, boom, refresh=True)
    assert cached("keep", {}, boom) == 1


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    from equilib.cache import atomic_write, atomic_write_text

    target = atomic_write_text(tmp_path / "result.json", "good")

    def half_write(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_write)
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
