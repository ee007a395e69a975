"""Run-time switches shared by the library and the book: FAST mode, seeding, device choice."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def fast_mode() -> bool:
    """Whether ``EQUILIB_FAST`` asks for shrunken data and epochs (CI and quick looks).

    Accepted values: 1/true/yes/on and 0/false/no/off (any case); unset means False.
    """
    value = os.environ.get("EQUILIB_FAST", "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"EQUILIB_FAST={value!r} is not understood; expected one of 1/true/yes/on or 0/false/no/off"
    )


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and CUDA); return a torch Generator seeded alike."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The device to compute on: ``device`` if given, else ``EQUILIB_DEVICE``, else CUDA if available.

    Asking for ``cuda`` on a machine without a GPU raises a clear error rather than failing later.
    """
    choice = device if device is not None else os.environ.get("EQUILIB_DEVICE") or None
    if choice is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(choice)
    except (RuntimeError, TypeError):
        where = "device" if device is not None else "EQUILIB_DEVICE"
        raise ValueError(
            f"{where}={choice!r} is not a device; expected 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {str(dev)!r} was requested but CUDA is not available here; use 'cpu'"
        )
    return dev
