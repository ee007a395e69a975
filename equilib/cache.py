"""Compute once, reuse afterwards: results cached on disk by their configuration.

A chapter that trains for minutes calls ``cached("name", config, compute)``; the first call runs
``compute()`` and stores its result under a key made from ``name`` and ``config``; later calls
with the same configuration load it. Files are written to a temporary name and renamed, so an
interrupted run never leaves a half-written result behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")

__all__ = [
    "cache_dir",
    "cache_key",
    "cached",
    "atomic_write",
    "atomic_save",
    "atomic_write_text",
    "atomic_savefig",
]


def cache_dir() -> Path:
    """``$EQUILIB_CACHE`` if set, else ``.cache/equilib`` in the repository (or working dir)."""
    env = os.environ.get("EQUILIB_CACHE")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    base = repo if (repo / "pyproject.toml").exists() else Path.cwd()
    return base / ".cache" / "equilib"


def cache_key(name: str, config: dict) -> str:
    """A file-name-safe key: ``name`` plus a hash of the JSON-encoded configuration."""
    try:
        blob = json.dumps(config, sort_keys=True, default=str)
    except TypeError as err:  # pragma: no cover - default=str makes this rare
        raise TypeError(f"config must be JSON-serialisable, got {config!r}") from err
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return f"{safe}-{digest}"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic, so ``path`` holds either its previous content or the complete new
    one, never a half-written file; on an error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_savefig(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def cached(name: str, config: dict, compute: Callable[[], T], refresh: bool = False) -> T:
    """Return ``compute()``'s result for ``config``, computing it only if not cached yet.

    Set ``refresh=True`` (or ``EQUILIB_REFRESH=1``) to recompute and overwrite.
    """
    path = cache_dir() / (cache_key(name, config) + ".pt")
    refresh = refresh or os.environ.get("EQUILIB_REFRESH", "") == "1"
    if path.exists() and not refresh:
        try:
            return torch.load(path, weights_only=False)
        except Exception:  # a corrupt entry is recomputed, never trusted
            pass
    result = compute()
    atomic_save(result, path)
    return result
