"""Bundled digits, canvases and the local-file loaders (on small files written here)."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from equilib.data import (
    load,
    load_cifar10,
    load_digits,
    load_mnist,
    make_loader,
    place_on_canvas,
    read_idx,
    split,
    upsample,
)


def test_digits_shapes_and_range():
    X, y = load_digits()
    assert X.shape == (1797, 1, 8, 8) and y.shape == (1797,)
    assert X.min() >= 0 and X.max() == 1 and set(y.tolist()) == set(range(10))
    X16, _ = load_digits(size=16)
    assert X16.shape == (1797, 1, 16, 16)
    # upsampling keeps the picture: the mean brightness barely moves
    assert abs(X16.mean() - X.mean()) < 0.02


def test_split_is_seeded_and_disjoint():
    X = torch.arange(100).float().view(100, 1, 1, 1)
    y = torch.arange(100)
    a = split(X, y, 60, 30, seed=1)
    b = split(X, y, 60, 30, seed=1)
    c = split(X, y, 60, 30, seed=2)
    assert torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    assert not set(a[1].tolist()) & set(a[3].tolist())
    with pytest.raises(ValueError, match="n_train"):
        split(X, y, 90, 20)


def test_place_on_canvas_puts_each_image_where_asked():
    X = torch.rand(3, 2, 4, 4)
    pos = torch.tensor([[0, 0], [4, 2], [1, 3]])
    out = place_on_canvas(X, 8, pos)
    assert out.shape == (3, 2, 8, 8)
    for i, (r, c) in enumerate(pos.tolist()):
        assert torch.equal(out[i, :, r : r + 4, c : c + 4], X[i])
        assert torch.isclose(out[i].sum(), X[i].sum())
    with pytest.raises(ValueError, match="does not fit"):
        place_on_canvas(X, 6, torch.tensor([[0, 0], [4, 4], [0, 0]]))
    with pytest.raises(ValueError, match="positions"):
        place_on_canvas(X, 8, torch.zeros(2, 2))


def test_upsample_and_loader_validate_input():
    with pytest.raises(ValueError, match="N, C, H, W"):
        upsample(torch.rand(8, 8), 16)
    with pytest.raises(ValueError, match="positive"):
        upsample(torch.rand(1, 1, 8, 8), 0)
    X, y = torch.rand(10, 1, 2, 2), torch.arange(10)
    order1 = torch.cat([b for _, b in make_loader(X, y, 4, seed=5)])
    order2 = torch.cat([b for _, b in make_loader(X, y, 4, seed=5)])
    assert torch.equal(order1, order2) and sorted(order1.tolist()) == list(range(10))


def test_unknown_data_set_lists_valid_names():
    with pytest.raises(ValueError, match="cifar10.*digits.*mnist"):
        load("imagenet")


def _write_idx(path, array, code=0x08, compress=False):
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as fh:
        fh.write(data)


def test_mnist_loader_reads_idx_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, compress=True)
    X, y = load_mnist(tmp_path, split="test")
    assert X.shape == (5, 1, 28, 28) and X.dtype == torch.float32
    assert torch.allclose(X[:, 0] * 255, torch.from_numpy(images).float())
    assert y.tolist() == [3, 1, 4, 1, 5]
    # through the environment variable too
    (tmp_path / "mnist").mkdir()
    for f in tmp_path.glob("t10k*"):
        f.rename(tmp_path / "mnist" / f.name)
    monkeypatch.setenv("EQUILIB_DATA", str(tmp_path))
    assert load("mnist", split="test")[1].tolist() == [3, 1, 4, 1, 5]
    ints = np.arange(6, dtype=np.int32).reshape(2, 3)
    _write_idx(tmp_path / "ints", ints, code=0x0C)
    assert np.array_equal(read_idx(tmp_path / "ints"), ints)


def test_mnist_missing_folder_and_files_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("EQUILIB_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="EQUILIB_DATA"):
        load_mnist()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def test_cifar10_loader_reads_pickle_batches(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": data, b"labels": [0, 9, 2, 7]}, fh)
    X, y = load_cifar10(tmp_path, split="test")
    assert X.shape == (4, 3, 32, 32) and y.tolist() == [0, 9, 2, 7]
    assert torch.allclose(X[1, 2, 0, :] * 255, torch.from_numpy(data[1, 2048:2080]).float())
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_cifar10(tmp_path, split="train")


@pytest.mark.parametrize("scale, shift", [(1.0, 0.0), (255.0, 0.0), (3.0, -1.5)])
def test_upsampled_images_keep_their_own_range(scale, shift):
    X = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * scale + shift
    for size in (8, 13, 16):
        out = upsample(X, size)
        assert out.shape == (4, 1, size, size)
        assert out.min() >= X.min() and out.max() <= X.max()
        # nothing clipped: the interpolation itself, whatever the range of X
        plain = torch.nn.functional.interpolate(X, size=(size, size), mode="bilinear")
        torch.testing.assert_close(out, plain)
