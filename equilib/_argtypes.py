"""Argument types for the command line: numbers and output folders checked on parsing, with
messages that say why."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable


def _checked(convert: Callable[[str], float], ok: Callable[[float], bool], expected: str):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    parse.__name__ = expected.replace(" ", "_")
    return parse


positive_int = _checked(int, lambda v: v > 0, "a positive integer")
nonneg_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(float, lambda v: v > 0, "a positive number")


def out_folder(text: str) -> str:
    """An ``--out`` folder: a name that is not empty and not that of an existing file (the
    folder itself is created later, by the command that writes into it)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"expected the name of an output folder, got {text!r} (pass '.' for this folder)"
        )
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected an output folder, but {text!r} is a file")
    return text
