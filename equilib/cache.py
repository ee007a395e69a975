"""Compute once, reuse afterwards: results cached on disk by their configuration.

A chapter that trains for minutes calls ``cached("name", config, compute)``; the first call runs
``compute()`` and stores its result under a key made from ``name`` and ``config``; later calls
with the same configuration load it. Files are written to a temporary name and renamed, so an
interrupted run never leaves a half-written result behind, and read back without the
possibility to run code (``torch.load(weights_only=True)``: tensors, containers, numbers,
strings and numpy arrays only). Every file written here gets the mode the umask allows (0644
under umask 022), so results can be shared. ``claim_folder`` gives one run at a time an output
folder (a lock file created with ``O_EXCL``). A result that library code computes is keyed by
that code too (``code_fingerprint``, ``with_code``), so a changed library never returns a stale
result.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")

__all__ = [
    "cache_dir",
    "cache_key",
    "code_fingerprint",
    "with_code",
    "cached",
    "atomic_write",
    "atomic_save",
    "atomic_write_text",
    "atomic_savefig",
    "safe_load",
    "load_error_reason",
    "claim_folder",
    "FolderBusy",
]


def cache_dir() -> Path:
    """``$EQUILIB_CACHE`` if set, else ``.cache/equilib`` in the repository (or working dir)."""
    env = os.environ.get("EQUILIB_CACHE")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    base = repo if (repo / "pyproject.toml").exists() else Path.cwd()
    return base / ".cache" / "equilib"


def _encode(value):
    """What a configuration value that JSON cannot hold is keyed by: a tensor or an array by
    its type, dtype, shape and a hash of its bytes (its printed form rounds and elides, so two
    configurations that differ in a tenth decimal would share a result), a numpy scalar by its
    value, anything else by its ``str``."""
    if isinstance(value, torch.Tensor):
        kind, dtype = "tensor", str(value.dtype)
        value = value.detach().cpu().resolve_conj().resolve_neg()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16: its exact float32 values
            value = value.float()
        array = value.contiguous().numpy()
    elif isinstance(value, np.ndarray):
        kind, dtype, array = "ndarray", str(value.dtype), np.ascontiguousarray(value)
    elif isinstance(value, np.generic):
        return value.item()
    else:
        return str(value)
    digest = hashlib.sha256(array.tobytes()).hexdigest()
    return {kind: dtype, "shape": list(array.shape), "sha256": digest}


def _string_keys(value):
    """``value`` with every dict whose keys are not all strings replaced by a list of its items,
    each key with its type: JSON writes ``{1: x}`` as ``{"1": x}``, and the two configurations
    would share a key (and mixed key types could not be sorted). Dicts of string keys, the usual
    configuration, are kept as they are, and so are their keys."""
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _string_keys(v) for k, v in value.items()}
        items = [
            [type(k).__name__, json.dumps(_string_keys(k), default=_encode), _string_keys(v)]
            for k, v in value.items()
        ]
        return {"dict keyed by non-strings": sorted(items, key=lambda kv: kv[:2])}
    if isinstance(value, (list, tuple)):
        return [_string_keys(v) for v in value]
    return value


def _config_blob(config: dict) -> str:
    return json.dumps(_string_keys(config), sort_keys=True, default=_encode)


def cache_key(name: str, config: dict) -> str:
    """A file-name-safe key: ``name`` plus a hash of the JSON-encoded configuration (tensors and
    arrays in it by their exact contents)."""
    blob = _config_blob(config)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return f"{safe}-{digest}"


#: the folder of the equilib package, whose files ``code_fingerprint`` names
PACKAGE = Path(__file__).resolve().parent
_fingerprints: dict[tuple, str] = {}


def code_fingerprint(files: Sequence[str], root: str | os.PathLike | None = None) -> str:
    """A hash of library source files, 16 hex digits: part of the key of what they compute.

    ``files``: paths relative to ``root`` (default: the ``equilib`` package folder); a folder
    stands for every ``.py`` file below it. Each file's relative path and bytes are hashed in
    the given order (folders sorted). Computed once per process and list: the code this
    process runs is the code it imported.
    """
    root = PACKAGE if root is None else Path(root).resolve()
    memo = (str(root), tuple(files))
    if memo not in _fingerprints:
        h = hashlib.sha256()
        for entry in memo[1]:
            path = root / entry
            if not path.exists():
                raise FileNotFoundError(
                    f"code_fingerprint: no file or folder {entry!r} in {str(root)!r}"
                )
            for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
                h.update(f.relative_to(root).as_posix().encode())
                h.update(f.read_bytes())
        _fingerprints[memo] = h.hexdigest()[:16]
    return _fingerprints[memo]


def with_code(config: dict, files: Sequence[str]) -> dict:
    """The cache key of a result: ``config`` plus ``"code"``, the fingerprint of ``files``
    (see :func:`code_fingerprint`)."""
    return {**config, "code": code_fingerprint(files)}


def _create_temp(path: Path) -> Path:
    """Create an empty temporary file beside ``path`` with the mode the umask allows.

    ``tempfile.mkstemp`` creates files readable by their owner only (0600); a result, figure,
    checkpoint or cache file should be as shareable as any file the user creates (0644 under
    umask 022), so the file is opened with mode 0666 and the umask applies as usual.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {path}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic, so ``path`` holds either its previous content or the complete new
    one, never a half-written file; on an error the temporary file is removed. The new content
    reaches the disk before the rename (``fsync``), so a power cut cannot leave ``path``
    renamed but empty. The file gets the mode the umask allows (0644 under umask 022), as a
    plain ``open`` would give it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable, where the system allows opening a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_savefig(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


# What a cache file may hold besides what ``torch.load(weights_only=True)`` accepts anyway
# (tensors, dicts, lists, tuples, sets, strings, numbers, None): numpy arrays and scalars.
_NUMPY_GLOBALS = [
    np.dtype,
    np.ndarray,
    np.zeros(1).__reduce__()[0],
    np.float64(0).__reduce__()[0],
] + [
    type(np.dtype(t))
    for t in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    )
]


def safe_load(path: str | os.PathLike, what: str = "file"):
    """``torch.load`` that cannot run code: only tensors, containers, numbers, strings and
    numpy arrays are rebuilt (``weights_only=True`` with numpy's reconstructors allowed).

    Anything else (a class, a function, a crafted ``__reduce__``) raises a ``ValueError`` that
    names the file; torch's advice to load it with ``weights_only=False`` is left out, since a
    file that needs it is not one equilib wrote.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # torch raises many kinds for a damaged or foreign file
        raise ValueError(
            f"{what} {str(path)!r} cannot be read safely: it is damaged or holds "
            f"objects other than tensors, containers and numbers "
            f"({load_error_reason(e)})"
        ) from None


def load_error_reason(error: BaseException) -> str:
    """What went wrong in a ``torch.load``, in one line, without torch's advice to load the
    file with ``weights_only=False`` (a file that needs that must not be trusted)."""
    message = str(error)
    lines = [line.strip() for line in message.splitlines()]
    if "Weights only load failed" in message:
        for i, line in enumerate(lines):
            if line.startswith("WeightsUnpickler error:"):
                rest = [line.removeprefix("WeightsUnpickler error:").strip()] + lines[i + 1 :]
                for text in rest:
                    if text:
                        return f"{type(error).__name__}: {text}"
        for line in lines:
            if "unsupported" in line.lower() and "weights_only" not in line:
                return f"{type(error).__name__}: {line}"
        return f"{type(error).__name__}: it holds objects that cannot be loaded safely"
    first = next((line for line in lines if line), "")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _writable(folder: Path) -> str | None:
    """None if a file can be created in ``folder`` (made if missing), else the reason why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(folder / "write-test")
        tmp.unlink()
    except OSError as e:
        return e.strerror or str(e)
    return None


CACHE_FORMAT = "equilib.cache/1"


def cached(name: str, config: dict, compute: Callable[[], T], refresh: bool = False) -> T:
    """Return ``compute()``'s result for ``config``, computing it only if not cached yet.

    Set ``refresh=True`` (or ``EQUILIB_REFRESH=1``) to recompute and overwrite.

    A cache file is read with :func:`safe_load` (reading it cannot run code) and must carry
    this cache's format tag, ``name`` and ``config``; a damaged, foreign or mismatched file is
    recomputed with a warning that names it. A result that cannot be stored safely (it holds
    objects other than tensors, containers, numbers, strings and numpy arrays) is returned
    without being cached, with a warning. An unwritable cache folder is detected before
    ``compute()`` runs: the result is then computed and returned, with a warning, uncached.
    A ``compute()`` that raises caches nothing.
    """
    folder = cache_dir()
    path = folder / (cache_key(name, config) + ".pt")
    refresh = refresh or os.environ.get("EQUILIB_REFRESH", "") == "1"
    blob = _config_blob(config)
    if path.exists() and not refresh:
        try:
            entry = safe_load(path, "cache file")
        except ValueError as e:
            warnings.warn(f"{e}; recomputing it", RuntimeWarning, stacklevel=2)
        else:
            if (
                isinstance(entry, dict)
                and entry.get("format") == CACHE_FORMAT
                and entry.get("name") == name
                and entry.get("config") == blob
                and "result" in entry
            ):
                return entry["result"]
            warnings.warn(
                f"cache file {str(path)!r} was not written by equilib.cache for "
                f"{name!r} with this configuration; recomputing it",
                RuntimeWarning,
                stacklevel=2,
            )
    problem = _writable(folder)
    if problem is not None:
        warnings.warn(
            f"the cache folder {str(folder)!r} is not writable ({problem}); computing "
            f"{name!r} without caching it (set EQUILIB_CACHE to a writable folder)",
            RuntimeWarning,
            stacklevel=2,
        )
        return compute()
    result = compute()
    entry = {"format": CACHE_FORMAT, "name": name, "config": blob, "result": result}
    buffer = io.BytesIO()
    try:
        torch.save(entry, buffer)
        buffer.seek(0)
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            torch.load(buffer, map_location="cpu", weights_only=True)
    except Exception as e:  # pickling errors, or content the safe reader refuses
        warnings.warn(
            f"not caching {name!r}: its result holds objects a cache file cannot hold "
            f"safely ({load_error_reason(e)})",
            RuntimeWarning,
            stacklevel=2,
        )
        return result
    try:
        atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    except OSError as e:
        warnings.warn(
            f"could not write the cache file {str(path)!r} ({e.strerror or e}); the "
            "result is returned uncached",
            RuntimeWarning,
            stacklevel=2,
        )
    return result


LOCK_NAME = ".equilib.lock"


class FolderBusy(RuntimeError):
    """Another live process holds the output folder's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, it belongs to someone else
        return True
    return True


def _read_lock(lock: Path) -> tuple[int | None, str]:
    try:
        text = lock.read_text()
    except OSError:
        return None, ""
    pid, _, host = text.strip().partition(" ")
    return (int(pid) if pid.isdigit() else None), host


@contextmanager
def claim_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder`` for this process while the block runs: only one run writes into it.

    The claim is the file ``folder/.equilib.lock``, created with ``O_EXCL`` (so of two runs
    started at once exactly one gets it) and holding this process's pid and host name; it is
    removed when the block ends, also on an error. A lock left by a process that no longer
    runs on this host (killed with ``kill -9``) is stale and taken over; a live one raises
    :class:`FolderBusy` naming its pid. Yields the folder.
    """
    folder = Path(folder)
    lock = folder / LOCK_NAME
    host = socket.gethostname()
    mine = f"{os.getpid()} {host}\n"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(
            f"cannot create the output folder {str(folder)!r}: {e.strerror or e}"
        ) from e
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            pid, owner = _read_lock(lock)
            if pid is not None and owner == host and not _pid_alive(pid):
                _break_stale(lock, pid)
                continue
            who = f"process {pid} on {owner or 'an unknown host'}" if pid else "another process"
            raise FolderBusy(
                f"{str(folder)!r} is in use by {who} (lock file {str(lock)!r}); wait for it to "
                "finish, or choose another output folder. If no such run is alive, delete the "
                "lock file."
            ) from None
        except OSError as e:
            raise ValueError(
                f"cannot write to the output folder {str(folder)!r}: {e.strerror or e}"
            ) from e
        with os.fdopen(fd, "w") as fh:
            fh.write(mine)
        break
    else:
        raise FolderBusy(
            f"could not claim {str(folder)!r}: its lock file {str(lock)!r} keeps changing"
        )
    try:
        yield folder
    finally:
        pid, owner = _read_lock(lock)
        if pid == os.getpid() and owner == host:
            lock.unlink(missing_ok=True)


# the files each command of ``python -m equilib`` writes into its --out folder (discover's
# stash of a run it replaces included); result.json is discover's and degree's alike
COMMAND_FILES = {
    "discover": (
        "result.json",
        "structure.png",
        "checkpoint.pt",
        "checkpoint.layers.json",
        "checkpoint.retrain.pt",
        ".replaced-run",
    ),
    "degree": ("result.json", "lambda.png"),
    "compare": ("table.md", "results.json"),
}


def refuse_other_commands(folder: str | os.PathLike, command: str) -> None:
    """Refuse an output ``folder`` holding files that only another command writes: ``command``
    would leave its own beside them (or, with --overwrite, replace a shared name), and the
    folder would describe two runs. ``--overwrite`` does not lift this; another folder does."""
    own = set(COMMAND_FILES[command])
    present = {}
    for other, names in COMMAND_FILES.items():
        for name in names:
            if name not in own and os.path.lexists(Path(folder) / name):
                present.setdefault(name, []).append(other)
    if present:
        owners = sorted({c for cs in present.values() for c in cs})
        raise ValueError(
            f"{str(folder)!r} holds {', '.join(sorted(present))}, written by "
            f"{' or '.join('`equilib ' + c + '`' for c in owners)}, not by `equilib {command}`; "
            "choose another --out"
        )


def _break_stale(lock: Path, pid: int) -> None:
    """Move a stale lock aside atomically; if what was moved is not the stale lock (another
    process replaced it meanwhile), put it back."""
    aside = lock.with_name(f"{lock.name}.stale-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return  # someone else moved it: try again
    moved_pid, _ = _read_lock(aside)
    if moved_pid != pid:  # a fresh lock, not the stale one
        try:
            os.link(aside, lock)
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)
