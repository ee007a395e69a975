"""Checks of arguments that several modules share, so that one mistake reads the same everywhere."""

from __future__ import annotations


def is_int(value) -> bool:
    """Whether ``value`` is an ``int`` and not a ``bool`` (Python counts ``True`` as the int 1,
    which is never the count or the size a caller meant)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(name: str, value) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is an int of at least 1."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
