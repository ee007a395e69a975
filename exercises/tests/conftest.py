"""The ``exercise`` fixture: import an exercise module, the solutions or the reader's copy.

By default the solutions in ``exercises/`` are graded (that is what the test suite checks).
``python3 course.py check NN`` sets ``EQUILIB_EXERCISES_DIR`` to the reader's folder
(``book/my-exercises``), so the same tests grade the reader's work.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SOLUTIONS = Path(__file__).resolve().parent.parent


def exercise_dir() -> Path:
    return Path(os.environ.get("EQUILIB_EXERCISES_DIR", SOLUTIONS))


def load_exercise(name: str, folder: Path | None = None):
    """Import ``<folder>/<name>.py`` as a fresh module (cells run top to bottom)."""
    folder = exercise_dir() if folder is None else Path(folder)
    path = folder / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"exercise file {path} not found; run `python3 course.py lab` or "
            f"`python3 course.py check NN` to create your copy from exercises/student/"
        )
    spec = importlib.util.spec_from_file_location(f"exercise_{name}_{abs(hash(str(folder)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
def mod(request, exercise):
    """The exercise module named by the test file's ``NAME`` (e.g. ``"ex01_groups"``)."""
    name = getattr(request.module, "NAME", None)
    if name is None:
        raise LookupError(f"{request.module.__name__} must set NAME to its exercise module's name")
    return exercise(name)
