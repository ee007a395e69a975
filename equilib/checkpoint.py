"""Checkpoints of :func:`equilib.train.fit`: the file format, its checks, and the random state.

A checkpoint is a dict written with ``torch.save`` (atomically: temporary file, then rename)
after every epoch. It holds the run's settings, the finished epoch, the model, both optimizers,
the log prior precisions, the history (as plain lists) and the random state: the global torch
generator, the generators that shuffle the training loader and, where CUDA is in use, the CUDA
generators. A run resumed from it continues exactly as if it had not stopped.

The format string stays ``"equilib.train/1"``: files written before this module existed read the
same.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from equilib._checks import is_int
from equilib.cache import atomic_save, load_error_reason

CHECKPOINT_FORMAT = "equilib.train/1"
CHECKPOINT_KEYS = (
    "settings",
    "epoch",
    "model",
    "optimizer",
    "log_prior_precision",
    "hyper_optimizer",
    "history",
    "rng",
)
# the kind of each entry that fit writes (``epoch``, an int, is checked apart: a bool is an int)
_ENTRY_KINDS = {
    "settings": dict,
    "history": dict,
    "model": dict,
    "optimizer": dict,
    "rng": dict,
    "log_prior_precision": torch.Tensor,
}


def loader_generators(loader) -> list[torch.Generator]:
    """The torch Generators that decide a loader's shuffling (so a resume can restore them)."""
    gens: list[torch.Generator] = []
    inner = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    for obj in (
        loader,
        getattr(loader, "sampler", None),
        getattr(loader, "batch_sampler", None),
        inner,
    ):
        g = getattr(obj, "generator", None) if obj is not None else None
        if isinstance(g, torch.Generator) and all(g is not h for h in gens):
            gens.append(g)
    return gens


def rng_state(loader) -> dict:
    """The random state a resumed run needs: torch's, the loader's generators', CUDA's."""
    state = {
        "torch": torch.get_rng_state(),
        "loader": [g.get_state() for g in loader_generators(loader)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, loader) -> None:
    """Restore what :func:`rng_state` recorded; the loader must have as many generators."""
    torch.set_rng_state(state["torch"])
    gens = loader_generators(loader)
    if len(gens) != len(state["loader"]):
        raise ValueError(
            "the checkpoint was written with a training loader of a different kind "
            f"({len(state['loader'])} generators, this one has {len(gens)})"
        )
    for g, s in zip(gens, state["loader"]):
        g.set_state(s)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` with torch.save to a temporary file beside ``path``, then rename it.

    A crash mid-write leaves the previous checkpoint intact (the rename is atomic on POSIX).
    """
    atomic_save(state, path)


def write_checkpoint(
    path: str | os.PathLike,
    *,
    settings: dict,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    log_prior_precision: torch.Tensor,
    hyper_optimizer: torch.optim.Optimizer | None,
    history: dict,
    loader,
) -> None:
    """Write the state of a run at the end of ``epoch`` in the checkpoint format."""
    save_checkpoint(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "settings": settings,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "log_prior_precision": log_prior_precision.detach().cpu(),
            "hyper_optimizer": hyper_optimizer.state_dict()
            if hyper_optimizer is not None
            else None,
            "history": history,
            "rng": rng_state(loader),
        },
    )


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`equilib.train.fit`; a clear ``ValueError`` if it is
    not one (damaged, of another format, or lacking an entry)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r} to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged file
        raise ValueError(
            f"checkpoint {str(path)!r} is corrupted or not an equilib checkpoint "
            f"({load_error_reason(e)})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {str(path)!r} is not an equilib training checkpoint "
            f"(expected format {CHECKPOINT_FORMAT!r})"
        )
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(
            f"checkpoint {str(path)!r} is incomplete: it lacks {missing}; it was not "
            "written by equilib.train.fit"
        )
    wrong = [k for k, kind in _ENTRY_KINDS.items() if not isinstance(state[k], kind)]
    if not is_int(state["epoch"]):
        wrong.append("epoch")
    if wrong:
        raise ValueError(
            f"checkpoint {str(path)!r} is damaged: the entries {wrong} are not of "
            "the kind equilib.train.fit writes"
        )
    return state


def _differences(saved: dict, now: dict) -> list[str]:
    """``"name: value here, value in the checkpoint"`` for every setting that differs; a nested
    dict (the run's own description, e.g. a discover configuration) is compared field by field,
    so that the message names the field the reader changed, not the dict holding it."""
    lines = []
    for key in sorted(set(saved) | set(now), key=str):
        a, b = saved.get(key, _ABSENT), now.get(key, _ABSENT)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            lines += _differences(a, b)
        else:
            lines.append(f"{key}: {_short(b)} here, {_short(a)} in the checkpoint")
    return lines


def _short(value, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


class _Absent:
    def __repr__(self) -> str:
        return "not set"


_ABSENT = _Absent()


def check_same_run(state: dict, settings: dict, path: str | os.PathLike) -> None:
    """Refuse to resume from ``state`` (read from ``path``) if it was written with other
    ``settings``, naming each setting that differs with both values."""
    if state["settings"] != settings:
        # a setting can be both a training setting and a field of the run's description
        diff = "; ".join(dict.fromkeys(_differences(state["settings"], settings)))
        raise ValueError(
            f"checkpoint {str(path)!r} was written by a different run "
            f"(these settings differ: {diff}); not resuming: resume with the settings of the "
            "checkpoint, or start the run afresh"
        )


def restore_training_state(
    state: dict,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    log_prior_precision: torch.Tensor,
    hyper_optimizer: torch.optim.Optimizer | None,
) -> None:
    """Load the model, the optimizers and the log prior precisions of a checkpoint in place
    (the history and the random state are restored by the caller)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    with torch.no_grad():
        log_prior_precision.copy_(state["log_prior_precision"].to(log_prior_precision.device))
    if hyper_optimizer is not None:
        hyper_optimizer.load_state_dict(state["hyper_optimizer"])
