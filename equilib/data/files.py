"""Loaders for data sets the reader keeps on disk: MNIST (IDX files) and CIFAR-10 (pickles).

Nothing is ever downloaded. The folder comes from the ``root`` argument, else from the
environment variable ``EQUILIB_DATA``; a missing folder or file raises an error that says what
to put where.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

__all__ = ["read_idx", "load_mnist", "load_cifar10", "data_root"]

_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def data_root(root: str | os.PathLike | None, name: str, expected: str) -> Path:
    """Resolve the folder holding data set ``name``; explain what is expected if it is missing."""
    if root is None:
        env = os.environ.get("EQUILIB_DATA")
        if not env:
            raise FileNotFoundError(
                f"no folder given for {name}: pass the folder holding {expected} (root=... in "
                f"Python, --data-root on the command line), or set EQUILIB_DATA to a folder whose "
                f"subfolder {name}/ holds them. equilib never downloads data."
            )
        root = Path(env) / name
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(
            f"the {name} folder {str(path)!r} does not exist; create it and put {expected} in it "
            "(equilib never downloads data)"
        )
    return path


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped): the format MNIST ships in.

    A file that is not IDX, a damaged gzip stream or a truncated file raises a ``ValueError``
    that names the file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError | PermissionError | IsADirectoryError):
            raise
        raise ValueError(f"{path}: cannot read it as a (gzipped) IDX file ({e})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x}")
    if len(data) < 4 + 4 * ndim:
        raise ValueError(
            f"{path}: truncated IDX header (needs {4 + 4 * ndim} bytes for "
            f"{ndim} dimensions, the file has {len(data)})"
        )
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise ValueError(f"{path}: header promises {expected} bytes of data, found {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / (stem + ".gz")):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"missing {stem} (or {stem}.gz) in {folder}")


def load_mnist(root: str | os.PathLike | None = None, split: str = "train"):
    """MNIST from local IDX files: ``X: (N, 1, 28, 28)`` float32 in [0, 1], ``y: (N,)`` int64.

    ``root`` (or ``$EQUILIB_DATA/mnist``) must hold ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``
    (each may be gzipped).
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(MNIST_FILES)}, got {split!r}")
    folder = data_root(root, "mnist", "the four MNIST IDX files (e.g. train-images-idx3-ubyte)")
    img_name, lab_name = MNIST_FILES[split]
    images = read_idx(_find(folder, img_name))
    labels = read_idx(_find(folder, lab_name))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"MNIST {split}: expected images (N, H, W) and labels (N,), got "
            f"{images.shape} and {labels.shape}"
        )
    if images.dtype != np.uint8:
        raise ValueError(
            f"MNIST {split}: expected unsigned-byte images (IDX type 0x08), got {images.dtype}"
        )
    _check_labels(labels, 10, f"MNIST {split} labels ({lab_name})")
    X = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return X, torch.from_numpy(labels.astype(np.int64))


def _check_labels(labels: np.ndarray, n_classes: int, what: str) -> None:
    """Refuse labels that are not integers in ``[0, n_classes)``, naming ``what``."""
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{what}: labels must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"{what}: labels must lie in [0, {n_classes - 1}], found values from "
            f"{labels.min()} to {labels.max()}"
        )


def _latin1_encode(text, encoding="latin1"):
    """What a protocol-2 pickle uses to rebuild ``bytes`` (only the latin-1 codec)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# the only callables a CIFAR-10 batch refers to: numpy's array and dtype reconstructors
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
    ("numpy.core.numeric", "_frombuffer"): np.zeros(1).__reduce_ex__(5)[0],
    ("numpy._core.numeric", "_frombuffer"): np.zeros(1).__reduce_ex__(5)[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, strings, numbers, bytes and numpy arrays.

    Any other global a pickle names (``os.system``, ``builtins.eval``, a class) is refused, so
    loading a crafted file cannot run code.
    """

    def find_class(self, module: str, name: str):
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR-10 batch holds only a dict of "
                "arrays, lists and bytes"
            ) from None


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64."""
    try:
        with open(path, "rb") as fh:
            batch = _CifarUnpickler(fh, encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        UnicodeDecodeError,
        OverflowError,
        MemoryError,
    ) as e:
        raise ValueError(
            f"{path} is not a readable CIFAR-10 batch ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(batch, dict):
        raise ValueError(
            f"{path} is not a CIFAR-10 batch: it holds a {type(batch).__name__}, "
            "expected a dict with data and labels entries"
        )
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path} is not a CIFAR-10 batch (no data/labels entries)")
    try:
        data, labels = np.asarray(data), np.asarray(labels)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: data and labels must be arrays or lists ({e})") from e
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected data of shape (N, 3072), got {data.shape}")
    if data.dtype.kind not in "iu":
        raise ValueError(f"{path}: pixels must be integers in [0, 255], got dtype {data.dtype}")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise ValueError(
            f"{path}: pixels must lie in [0, 255], found values from {data.min()} to {data.max()}"
        )
    if labels.ndim != 1 or len(labels) != len(data):
        raise ValueError(
            f"{path}: {len(data)} images but labels of shape {labels.shape}; "
            "expected one label per image"
        )
    _check_labels(labels, 10, str(path))
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(root: str | os.PathLike | None = None, split: str = "train"):
    """CIFAR-10 from the python pickle batches: ``X: (N, 3, 32, 32)`` in [0, 1], ``y: (N,)``.

    ``root`` (or ``$EQUILIB_DATA/cifar10``) is the ``cifar-10-batches-py`` folder holding
    ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``. The batches are unpickled by an
    unpickler that builds nothing but what a batch holds (dicts, lists, bytes, numpy arrays):
    a file naming any other object is refused, never run. Pixels must be integers in
    [0, 255], labels integers in [0, 9], one per image; anything else raises a ``ValueError``
    naming the file.
    """
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    if split not in names:
        raise ValueError(f"split must be one of {sorted(names)}, got {split!r}")
    folder = data_root(
        root, "cifar10", "the cifar-10-batches-py files (data_batch_1..5, test_batch)"
    )
    xs, ys = [], []
    for name in names[split]:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"missing CIFAR-10 batch {name} in {folder}")
        data, labels = _load_cifar_batch(path)
        xs.append(data)
        ys.append(labels)
    X = torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0)
    return X, torch.from_numpy(np.concatenate(ys))
