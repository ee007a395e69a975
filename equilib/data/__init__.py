"""Offline data: scikit-learn's digits, the course's tasks built from them, local-file loaders."""

from equilib.data.digits import load, load_digits, make_loader, place_on_canvas, split, upsample
from equilib.data.files import load_cifar10, load_mnist, read_idx

__all__ = [
    "load",
    "load_digits",
    "make_loader",
    "place_on_canvas",
    "split",
    "upsample",
    "load_cifar10",
    "load_mnist",
    "read_idx",
]
