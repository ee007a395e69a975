"""The ``exercise`` fixture: import an exercise module, the solutions or the reader's copy.

By default the solutions in ``exercises/`` are graded (that is what the test suite checks).
``python3 course.py check NN`` sets ``EQUILIB_EXERCISES_DIR`` to the reader's folder
(``book/my-exercises``), so the same tests grade the reader's work.

Two guards keep a grade honest. A test file may list in ``FORBIDDEN`` the library functions
(or classes) that its exercises ask the reader to write, as ``(exercise, function)`` pairs such
as ``("2.1", circular_conv_matrix)``: while the ``mod`` fixture's module is graded, a call of one
of them from that module raises ``WriteItYourself`` (the tests' own reference computations, and
the library's internal calls, still work). The ``within_memory`` fixture runs a call with a cap
on how much more memory it may take, so that a test can check that a computation never forms a
tensor it is asked not to form: too large an allocation fails at once instead of filling memory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SOLUTIONS = Path(__file__).resolve().parent.parent


def exercise_dir() -> Path:
    return Path(os.environ.get("EQUILIB_EXERCISES_DIR", SOLUTIONS))


def load_exercise(name: str, folder: Path | None = None, prepare=None):
    """Import ``<folder>/<name>.py`` as a fresh module (cells run top to bottom).

    ``prepare(module)``, if given, runs before the module's code and returns a function that
    runs after it.
    """
    folder = exercise_dir() if folder is None else Path(folder)
    path = folder / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"exercise file {path} not found; run `python3 course.py lab` or "
            f"`python3 course.py check NN` to create your copy from exercises/student/"
        )
    spec = importlib.util.spec_from_file_location(f"exercise_{name}_{abs(hash(str(folder)))}", path)
    module = importlib.util.module_from_spec(spec)
    finish = prepare(module) if prepare is not None else None
    spec.loader.exec_module(module)
    if finish is not None:
        finish()
    return module


# --------------------------------------------------------------------------- forbidden functions


class WriteItYourself(RuntimeError):
    """Graded code called the library function that its exercise asks the reader to write."""


@dataclass(frozen=True)
class Forbidden:
    """``owner.name`` (a function, or a class: its construction) is what exercise ``exercise``
    asks the reader to write; ``owner`` is the module that defines it."""

    exercise: str
    owner: Any
    name: str

    @classmethod
    def of(cls, exercise: str, thing) -> Forbidden:
        """The entry for a function or class as the library defines it."""
        return cls(exercise, sys.modules[thing.__module__], thing.__name__)

    def message(self) -> str:
        return (
            f"Exercise {self.exercise} asks you to work this out yourself: "
            f"{self.owner.__name__}.{self.name} is switched off while your work is graded"
        )


def _guarded(fn, student, message: str):
    """``fn``, except that a call from the module ``student`` raises ``WriteItYourself``."""

    def guarded(*args, **kwargs):
        if sys._getframe(1).f_globals is student.__dict__:
            raise WriteItYourself(message)
        return fn(*args, **kwargs)

    guarded.__name__ = getattr(fn, "__name__", "guarded")
    guarded.__qualname__ = getattr(fn, "__qualname__", guarded.__name__)
    guarded.__doc__ = getattr(fn, "__doc__", None)
    return guarded


def _library_modules():
    return [
        m
        for name, m in list(sys.modules.items())
        if m is not None and (name == "equilib" or name.startswith("equilib."))
    ]


def forbid(student, forbidden, monkeypatch):
    """Guard every ``Forbidden`` function against calls from the module ``student``, wherever the
    library defines or re-exports it; returns the function that, once the module's code has run,
    makes the names the module bound to those functions raise too."""
    functions = {}  # id(original or guard) -> message, for the module's own names
    for entry in forbidden:
        item = entry if isinstance(entry, Forbidden) else Forbidden.of(*entry)
        message = item.message()
        raw = getattr(item.owner, item.name)
        if isinstance(raw, type):  # a class: its construction, and its named constructors
            monkeypatch.setattr(raw, "__init__", _guarded(raw.__init__, student, message))
            for attr, value in list(vars(raw).items()):
                if isinstance(value, classmethod):
                    guard = classmethod(_guarded(value.__func__, student, message))
                    monkeypatch.setattr(raw, attr, guard)
        else:
            guard = _guarded(raw, student, message)
            functions[id(raw)] = functions[id(guard)] = message
            monkeypatch.setattr(item.owner, item.name, guard)
            for module in _library_modules():
                for attr, value in list(vars(module).items()):
                    if value is raw:
                        monkeypatch.setattr(module, attr, guard)

    def refuse(message: str):
        def refused(*args, **kwargs):
            raise WriteItYourself(message)

        return refused

    def finish():
        for attr, value in list(vars(student).items()):
            if id(value) in functions:
                setattr(student, attr, refuse(functions[id(value)]))

    return finish


# --------------------------------------------------------------------------- memory cap


def _address_space() -> int | None:
    """Bytes of address space this process uses now (Linux), else ``None``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def memory_cap(headroom: int):
    """Within the block, the process may take at most ``headroom`` more bytes of address space:
    a larger allocation fails at once (torch raises ``RuntimeError``) instead of filling memory.

    Needs Linux; elsewhere the test that asks for it is skipped.
    """
    try:
        import resource
    except ImportError:
        resource = None
    now = _address_space()
    if resource is None or now is None or not sys.platform.startswith("linux"):
        pytest.skip("this check needs Linux's address-space limit")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = now + headroom
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def refused_allocation(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that ``memory_cap`` (or the system) refused."""
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and "alloc" in str(error).lower()
    )


@pytest.fixture
def within_memory():
    """``within_memory(limit, call, advice)``: ``call()``, allowed at most ``limit`` more bytes;
    an allocation beyond that fails the test with ``advice``. Skipped where there is no cap."""

    def run(limit: int, call, advice: str):
        with memory_cap(limit):
            try:
                return call()
            except (RuntimeError, MemoryError) as e:
                if not refused_allocation(e):
                    raise
                pytest.fail(f"{advice} (it asked for more than {limit / 2**30:g} GiB: {e})")

    return run


def _timed_out(call) -> bool:
    """Whether the phase ended in pytest-timeout's failure (its signal method fails the test)."""
    return (
        call.excinfo is not None
        and call.excinfo.errisinstance(pytest.fail.Exception)
        and "Timeout" in str(call.excinfo.value)
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Name the exercise whose test ran out of time (``python3 course.py check`` sets a limit)."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or not _timed_out(call):
        return
    name = getattr(item.module, "NAME", None) or item.module.__name__
    limit = item.config.getoption("timeout", None)
    within = f" within {float(limit):g} s" if limit else ""
    report.longrepr = (
        f"exercise {name} ({exercise_dir() / (name + '.py')}): {item.name} did not finish"
        f"{within}. A loop in your code may never end (check its stopping condition), or the "
        f"code is far slower than it needs to be. Where it was when stopped:\n\n"
        f"{report.longreprtext}"
    )


@pytest.fixture
def exercise():
    """``exercise("ex01_groups")`` returns that exercise module."""
    return load_exercise


@pytest.fixture
def mod(request, monkeypatch):
    """The exercise module named by the test file's ``NAME`` (e.g. ``"ex01_groups"``), with the
    library functions in the test file's ``FORBIDDEN`` refused to it (see the module's docstring)."""
    name = getattr(request.module, "NAME", None)
    if name is None:
        raise LookupError(f"{request.module.__name__} must set NAME to its exercise module's name")
    forbidden = getattr(request.module, "FORBIDDEN", ())
    if not forbidden:
        return load_exercise(name)
    return load_exercise(name, prepare=lambda module: forbid(module, forbidden, monkeypatch))
