"""Independent trainings run side by side, each cached on disk by its configuration.

Chapters 09 and 10 measure networks that they first train: several small, independent runs.
``run_jobs`` loads every run already in the cache (``equilib.cache``) and trains the missing
ones in ``workers`` processes at once (one PyTorch thread each, so two runs use two cores),
printing what starts and what finishes. A job is a ``Job(name, config, fn)``: ``fn(config)``
is a module-level function (so that a fresh process can import it) and ``config`` is its
argument; the cache key is ``name``, ``config`` and a fingerprint of the library code the run
depends on (``Job.code``, default ``RUN_CODE``; ``equilib.cache.code_fingerprint``), so a
changed library never returns a stale result.

The training functions of the two chapters live here too, one per kind of run, each taking a
configuration and returning a picklable dict (a ``state_dict`` and what the run recorded):

* ``train_classifier``: a model of ``equilib.models.build`` by MAP, on C4-rotated digits
  (chapter 03's data) or on the capstone data of chapter 10;
* ``train_two_path``: chapter 07's ``fc+conv`` by the marginal likelihood on the ``digits`` or
  ``quadrant`` task;
* ``train_partial``: chapter 08's partial G-CNN on C4-rotated digits;
* ``train_augerino``: a small CNN behind a learned augmentation (``equilib.augment``).

``build_trained(kind, config, result)`` rebuilds the trained model of any of them; each kind's
model is built in one place, ``new_model``, which the training functions call too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import torch
from torch import nn

from equilib.cache import cache_dir, cache_key, cached, with_code

__all__ = [
    "RUN_CODE",
    "Job",
    "run_jobs",
    "rotated_digits",
    "six_nine",
    "capstone_data",
    "small_cnn",
    "train_classifier",
    "train_two_path",
    "train_partial",
    "train_augerino",
    "KINDS",
    "new_model",
    "build_trained",
]


# --------------------------------------------------------------------------- running jobs


#: the library files (relative to the package; folders with every module in them) whose code
#: decides the result of the training functions here and of chapter 08's runs
RUN_CODE = (
    "runs.py",
    "__init__.py",
    "_config.py",
    "groups.py",
    "augment.py",
    "measure.py",
    "train.py",
    "checkpoint.py",
    "models.py",
    "nn",
    "laplace",
    "data",
    "degree",
)


@dataclass(frozen=True)
class Job:
    """One cached run: ``fn(config)`` computes it; ``name`` and :attr:`key` (``config`` plus
    the fingerprint of the library files ``code``) are its cache entry. With a ``device``
    (``"cuda"``, say), ``fn(config, device=device)`` computes it there; the device is not part
    of the key, since the same configuration gives the same run on any device up to rounding."""

    name: str
    config: dict = field(hash=False)
    fn: Callable[..., object] = field(hash=False)
    code: tuple[str, ...] = field(default=RUN_CODE, hash=False)
    device: str | None = field(default=None, hash=False)

    @property
    def key(self) -> dict:
        """The cache key: ``config`` and ``"code"``, the fingerprint of ``code``."""
        return with_code(self.config, self.code)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a job needs a non-empty name for its cache entry; got {self.name!r}")
        if not isinstance(self.config, dict):
            raise TypeError(f"a job's config must be a dict, got {type(self.config).__name__}")
        if not callable(self.fn) or "<" in getattr(self.fn, "__qualname__", "<"):
            raise TypeError(
                f"a job's fn must be a module-level function (a worker process imports it by "
                f"name); got {self.fn!r}"
            )
        if isinstance(self.code, str) or not all(isinstance(f, str) for f in self.code):
            raise TypeError(f"a job's code must be a sequence of file names, got {self.code!r}")
        object.__setattr__(self, "code", tuple(self.code))
        if self.device is not None:
            if not isinstance(self.device, (str, torch.device)):
                raise TypeError(
                    f"a job's device must be a string such as 'cuda', got {self.device!r}"
                )
            object.__setattr__(self, "device", str(torch.device(self.device)))

    def compute(self):
        """Run ``fn`` (on :attr:`device` if one is set)."""
        if self.device is None:
            return self.fn(self.config)
        return self.fn(self.config, device=self.device)


def _is_cached(job: Job) -> bool:
    return (cache_dir() / (cache_key(job.name, job.key) + ".pt")).exists()


def _init_worker() -> None:
    torch.set_num_threads(1)


def _run_one(job: Job):
    """``(result, wall seconds, CPU seconds of this process)`` of one job."""
    start, cpu = time.time(), time.process_time()
    result = cached(job.name, job.key, job.compute)
    return result, time.time() - start, time.process_time() - cpu


_BROKEN = (
    "the process training {key!r} stopped before it returned. If this was started from a "
    'Python script, the script must start the runs under `if __name__ == "__main__":`, '
    "since each worker process imports the script first (the error it printed above says "
    "'bootstrapping phase'); if it ran out of memory, train fewer runs at once "
    "(EQUILIB_WORKERS=1 trains them one after the other in this process)"
)


def run_jobs(jobs: Mapping[str, Job], workers: int = 2, progress: bool = True) -> dict:
    """``{key: result}`` for ``{key: Job}``: cached runs are loaded, the others trained.

    Missing runs go to ``workers`` processes (``spawn``ed, one PyTorch thread each) when there
    are at least two of them and ``workers > 1``; otherwise they run here, one after the other.
    A run is handed to a process only when one is free, in the order of ``jobs``, so what is
    printed as started is what is running. ``progress`` prints a line per run when it is
    loaded from the cache, when it starts and when it finishes (with its wall time and the CPU
    time of the process that trained it). A worker process that dies (killed for memory, or
    started by a script without the ``if __name__ == "__main__":`` guard) raises a
    ``RuntimeError`` that says so.
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    for key, job in jobs.items():
        if not isinstance(job, Job):
            raise TypeError(f"jobs[{key!r}] must be an equilib.runs.Job, got {type(job).__name__}")

    def say(text: str) -> None:
        if progress:
            print(text, flush=True)
            sys.stdout.flush()

    results: dict = {}
    todo = []
    for key, job in jobs.items():
        if _is_cached(job):
            results[key] = cached(job.name, job.key, job.compute)
            say(f"  {key}: loaded from the cache")
        else:
            todo.append(key)
    n = len(todo)
    if n == 0:
        return {key: results[key] for key in jobs}
    start = time.time()
    if workers == 1 or n == 1:
        for i, key in enumerate(todo, 1):
            say(f"  {key}: training ({i}/{n}) ...")
            results[key], seconds, cpu = _run_one(jobs[key])
            say(f"  {key}: done in {seconds:.0f} s (CPU {cpu:.0f} s)")
    else:
        import multiprocessing

        k = min(workers, n)
        say(f"  training {n} runs, {k} at a time")
        ctx = multiprocessing.get_context("spawn")
        waiting = list(todo)
        with ProcessPoolExecutor(k, mp_context=ctx, initializer=_init_worker) as pool:
            running: dict = {}

            def start_next() -> None:
                key = waiting.pop(0)
                running[pool.submit(_run_one, jobs[key])] = key
                say(f"  {key}: started ({n - len(waiting)}/{n})")

            for _ in range(k):
                start_next()
            done = 0
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in sorted(finished, key=lambda f: todo.index(running[f])):
                    key = running.pop(fut)
                    try:
                        results[key], seconds, cpu = fut.result()
                    except BrokenProcessPool as e:
                        raise RuntimeError(_BROKEN.format(key=key)) from e
                    done += 1
                    say(
                        f"  {key}: done in {seconds:.0f} s (CPU {cpu:.0f} s; {done}/{n}, "
                        f"{time.time() - start:.0f} s since the start)"
                    )
                    if waiting:
                        start_next()
    return {key: results[key] for key in jobs}


# --------------------------------------------------------------------------- data


def rotated_digits(config: dict):
    """Chapter 03's C4-rotated digits on a 16x16 canvas: ``(Xtr, ytr, Xte, yte)``."""
    from equilib.data.mixed import make_rotated_digits

    return make_rotated_digits(
        config["n_train"],
        config["n_test"],
        kind="c4",
        size=16,
        digit=12,
        seed=config.get("data_seed", 0),
    )


def six_nine(n: int = 250):
    """Upright 6s (label 0) and 9s (label 1) of scikit-learn's digits, 12 px on a 16x16 canvas."""
    from equilib.data import load_digits

    X, y = load_digits(size=12)
    X = torch.nn.functional.pad(X, (2, 2, 2, 2))
    keep = (y == 6) | (y == 9)
    return X[keep][:n], (y[keep] == 9).long()[:n]


def capstone_data(config: dict):
    """The capstone data set of ``config["capstone_seed"]`` (sizes ``n_train``, ``n_test``)."""
    from equilib.data.capstone import make_capstone

    return make_capstone(
        n_train=config["n_train"],
        n_test=config["n_test"],
        seed=config["capstone_seed"],
        symmetry=config.get("symmetry"),
    )


def _classification_data(config: dict):
    data = config["data"]
    if data == "rotated":
        return (*rotated_digits(config), 10)
    if data == "capstone":
        d = capstone_data(config)
        return d.Xtr, d.ytr, d.Xte, d.yte, d.n_classes
    raise ValueError(f"unknown data {data!r}; expected 'rotated' or 'capstone'")


def small_cnn(n_classes: int) -> nn.Sequential:
    """Two conv-ReLU-maxpool stages and a two-layer head on 16x16 images (Augerino's network)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 32),
        nn.ReLU(),
        nn.Linear(32, n_classes),
    )


# --------------------------------------------------------------------------- trainings


def train_classifier(config: dict) -> dict:
    """``build(config["model"])`` trained by MAP on ``config["data"]``.

    Keys: ``model``, ``data`` (``"rotated"`` or ``"capstone"`` with ``capstone_seed``),
    ``n_train``, ``n_test``, ``width``, ``epochs``, ``lr``, ``seed``; ``n_fit`` (optional) uses
    only the first ``n_fit`` training images. Returns ``{"state", "test_acc", "n_classes"}``.
    """
    import equilib
    from equilib.data import make_loader
    from equilib.train import fit

    Xtr, ytr, Xte, yte, nc = _classification_data(config)
    n = config.get("n_fit") or len(Xtr)
    equilib.seed_everything(config["seed"])
    model = new_model("classifier", config, nc, tuple(Xtr.shape[1:]))
    hist = fit(
        model,
        make_loader(Xtr[:n], ytr[:n], 32, True, config["seed"]),
        make_loader(Xte, yte, 256, False),
        epochs=config["epochs"],
        lr=config["lr"],
        progress=False,
        seed=config["seed"],
        device="cpu",
    )
    return {"state": model.cpu().state_dict(), "test_acc": hist.test_acc[-1], "n_classes": nc}


def train_two_path(config: dict) -> dict:
    """Chapter 07's ``fc+conv`` trained by the marginal likelihood on ``config["task"]``.

    Keys: ``task`` (``"digits"`` or ``"quadrant"``), ``n_train``, ``n_test`` (source digits; the
    test set holds each in all four quadrants), ``width``, ``epochs``, ``lr``, ``seed``.
    """
    import equilib
    from equilib.data import make_loader
    from equilib.data.tasks import make_task
    from equilib.train import fit

    Xt, yt, Xv, yv = make_task(
        config["task"], n_train=config["n_train"], n_test=config["n_test"], seed=0
    )
    nc = 10 if config["task"] == "digits" else 40
    equilib.seed_everything(config["seed"])
    model = new_model("two-path", config, nc, tuple(Xt.shape[1:]))
    hist = fit(
        model,
        make_loader(Xt, yt, 32, True, config["seed"]),
        make_loader(Xv, yv, 256, False),
        objective="marglik",
        epochs=config["epochs"],
        burn_in=1,
        marglik_every=1,
        lr=config["lr"],
        progress=False,
        seed=config["seed"],
        device="cpu",
    )
    return {"state": model.cpu().state_dict(), "test_acc": hist.test_acc[-1], "n_classes": nc}


def train_partial(config: dict) -> dict:
    """Chapter 08's partial G-CNN on C4-rotated digits (``equilib.degree``).

    Keys: ``n_train``, ``n_test``, ``epochs``, ``seed`` (the rest from
    ``experiment_config("rotated")``). Returns ``{"state", "test_acc", "dcfg", "n_classes"}``.
    """
    import equilib
    from equilib.data import make_loader
    from equilib.data.mixed import make_degree_task
    from equilib.degree.training import experiment_config, train_degree

    dcfg = experiment_config(
        "rotated", epochs=config["epochs"], n_train=config["n_train"], n_test=config["n_test"]
    )
    Xt, yt, Xv, yv, nc = make_degree_task("rotated", dcfg["n_train"], dcfg["n_test"], seed=0)
    equilib.seed_everything(config["seed"])
    model = new_model("partial", {**config, "dcfg": dcfg}, nc, tuple(Xt.shape[1:]))
    out = train_degree(
        model,
        make_loader(Xt, yt, 32, True, config["seed"]),
        make_loader(Xv, yv, 256, False),
        epochs=dcfg["epochs"],
        lr=dcfg["lr"],
        device="cpu",
        seed=config["seed"],
    )
    return {
        "state": model.cpu().state_dict(),
        "test_acc": out["history"]["test_acc"][-1],
        "dcfg": dcfg,
        "n_classes": nc,
    }


def train_augerino(config: dict) -> dict:
    """A ``small_cnn`` behind ``Augerino`` trained with ``augment.train_augmentation``.

    Keys: ``data`` (``"rotated"``, ``"six-nine"`` or ``"capstone"`` with ``capstone_seed``,
    ``n_train``, ``n_test``), ``n`` (training images used), ``transforms``, ``init_width``,
    ``epochs``, ``lr``, ``strength``, ``seed``. Returns ``{"state", "hist", "n_classes"}``.
    """
    from equilib import augment

    data = config["data"]
    if data == "rotated":
        X, y, _, _ = rotated_digits(config)
        nc = 10
    elif data == "six-nine":
        X, y = six_nine()
        nc = 2
    elif data == "capstone":
        d = capstone_data(config)
        X, y, nc = d.Xtr, d.ytr, d.n_classes
    else:
        raise ValueError(f"unknown data {data!r}; expected 'rotated', 'six-nine' or 'capstone'")
    n = config["n"]
    torch.manual_seed(config["seed"])
    aug = new_model("augerino", config, nc)
    hist = augment.train_augmentation(
        aug,
        X[:n],
        y[:n],
        epochs=config["epochs"],
        lr=config["lr"],
        width_lr=0.05,
        strength=config["strength"],
        batch_size=32,
        seed=config["seed"],
    )
    return {"state": aug.state_dict(), "hist": hist, "n_classes": nc}


KINDS = ("classifier", "two-path", "partial", "augerino")


def new_model(kind: str, config: dict, n_classes: int, in_shape=(1, 16, 16)) -> nn.Module:
    """The untrained model of a run of ``kind`` (``KINDS``): ``build(config["model"])``
    (classifier), ``build("fc+conv")`` (two-path), the partial G-CNN of
    ``equilib.degree.model.build`` with the settings ``config["dcfg"]`` (partial), a
    ``small_cnn`` behind ``Augerino`` (augerino). ``in_shape``: ``(C, H, W)``."""
    if kind == "classifier":
        from equilib.models import build

        return build(config["model"], in_shape=in_shape, n_classes=n_classes, width=config["width"])
    if kind == "two-path":
        from equilib.models import build

        return build("fc+conv", in_shape=in_shape, n_classes=n_classes, width=config["width"])
    if kind == "partial":
        from equilib.degree.training import build_model

        return build_model("partial", in_shape, n_classes, config["dcfg"])
    if kind == "augerino":
        from equilib import augment

        return augment.Augerino(
            small_cnn(n_classes), tuple(config["transforms"]), init_width=config["init_width"]
        )
    raise ValueError(f"unknown kind {kind!r}; expected one of {list(KINDS)}")


def build_trained(kind: str, config: dict, result: dict) -> nn.Module:
    """The trained model of a run, in eval mode: ``kind`` names the training function
    (``"classifier"``, ``"two-path"``, ``"partial"`` or ``"augerino"``), ``config`` is its
    configuration and ``result`` what it returned (the partial G-CNN's settings are read from
    ``result["dcfg"]``). Images are ``(1, 16, 16)``."""
    if kind == "partial":
        config = {**config, "dcfg": result["dcfg"]}
    model = new_model(kind, config, result["n_classes"])
    model.load_state_dict(result["state"])
    return model.eval()
