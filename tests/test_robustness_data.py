"""Bad data folders: crafted pickles never run code; damaged files raise errors naming them."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from equilib.data import load_cifar10, load_mnist, read_idx


class _Payload:
    """Unpickling this calls ``os.system`` (what a crafted batch would do)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _cifar(path, batch, protocol=pickle.DEFAULT_PROTOCOL):
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def _good_batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"testing batch 1 of 1",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
        b"filenames": [b"x%d.png" % i for i in range(n)],
    }


def test_crafted_cifar_batch_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    _cifar(tmp_path / "test_batch", {b"data": _Payload(f"touch {marker}"), b"labels": [0]})
    with pytest.raises(ValueError, match=r"test_batch.*refusing to load .*system"):
        load_cifar10(tmp_path, split="test")
    assert not marker.exists()
    # at the top level too (a pickle that is nothing but the call)
    _cifar(tmp_path / "test_batch", _Payload(f"touch {marker}"))
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar10(tmp_path, split="test")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_real_cifar_layout_loads_under_every_protocol(tmp_path, protocol):
    batch = _good_batch()
    _cifar(tmp_path / "test_batch", batch, protocol)
    X, y = load_cifar10(tmp_path, split="test")
    assert X.shape == (4, 3, 32, 32) and y.tolist() == batch[b"labels"]
    assert np.array_equal((X.reshape(4, -1).numpy() * 255).round().astype(np.uint8), batch[b"data"])


@pytest.mark.parametrize(
    "batch, message",
    [
        ({b"data": np.zeros((5, 3072), np.uint8), b"labels": [0, 1]}, "5 images but labels"),
        ({b"data": np.full((2, 3072), 1000, np.int64), b"labels": [0, 1]}, r"\[0, 255\].*1000"),
        ({b"data": np.full((2, 3072), -1, np.int64), b"labels": [0, 1]}, r"\[0, 255\]"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "integers"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 18]}, r"\[0, 9\].*18"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, -100]}, r"\[0, 9\]"),
        ([1, 2, 3], "holds a list"),
        ({b"labels": [0]}, "no data/labels"),
    ],
)
def test_malformed_cifar_batch_is_refused_naming_the_file(tmp_path, batch, message):
    _cifar(tmp_path / "test_batch", batch)
    with pytest.raises(ValueError, match=message) as info:
        load_cifar10(tmp_path, split="test")
    assert "test_batch" in str(info.value)


def test_corrupt_cifar_batch_names_the_file(tmp_path):
    good = pickle.dumps(_good_batch())
    (tmp_path / "test_batch").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="test_batch.*not a readable CIFAR-10 batch"):
        load_cifar10(tmp_path, split="test")
    (tmp_path / "test_batch").write_bytes(b"this is not a pickle at all")
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar10(tmp_path, split="test")


def _idx(array):
    return (
        bytes([0, 0, 0x08, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.tobytes()
    )


def test_truncated_idx_header_names_the_file(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">I", 5))  # 1 of 3 dimensions
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*truncated IDX header"):
        read_idx(path)


def test_bad_gzip_names_the_file(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage that is no deflate stream")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        read_idx(path)
    full = gzip.compress(_idx(np.arange(10, dtype=np.uint8)))
    path.write_bytes(full[: len(full) - 12])  # cut inside the stream
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        read_idx(path)


def test_mnist_labels_out_of_range_are_refused(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx(np.zeros((2, 28, 28), np.uint8)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.array([3, 18], np.uint8)))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.*\[0, 9\].*18"):
        load_mnist(tmp_path, split="test")
