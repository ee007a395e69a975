"""Offline data: scikit-learn's digits, the course's tasks built from them, local-file loaders."""

from equilib.data.capstone import SYMMETRIES, CapstoneData, make_capstone
from equilib.data.digits import load, load_digits, make_loader, place_on_canvas, split, upsample
from equilib.data.files import load_cifar10, load_mnist, read_idx
from equilib.data.mixed import (
    DEGREE_TASKS,
    make_degree_task,
    make_double_digits,
    make_rotated_digits,
)
from equilib.data.tasks import TASKS, make_task, n_classes, place_in_quadrants

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
    "TASKS",
    "make_task",
    "n_classes",
    "place_in_quadrants",
    "DEGREE_TASKS",
    "make_degree_task",
    "make_double_digits",
    "make_rotated_digits",
    "SYMMETRIES",
    "CapstoneData",
    "make_capstone",
]
