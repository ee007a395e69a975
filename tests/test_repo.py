"""Checks on the repository itself: generated files, mirrored package lists, exercises, lint."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"torch": "pytorch"}  # pip name -> conda name where they differ


def _tools_exercises():
    spec = importlib.util.spec_from_file_location(
        "tools_exercises", ROOT / "tools" / "exercises.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _git_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_no_notebook_is_tracked():
    tracked = [f for f in _git_files() if f.endswith(".ipynb")]
    assert tracked == [], (
        f"notebooks are generated from book/*.md and must not be committed: {tracked}"
    )


def test_every_chapter_is_paired_myst_markdown():
    chapters = sorted((ROOT / "book").glob("[0-9][0-9]-*.md"))
    assert chapters, "no chapters found in book/"
    for md in chapters:
        head = md.read_text().split("---")[1]
        assert "format_name: myst" in head, f"{md.name} lacks the jupytext MyST header"
        assert "kernelspec" in head, f"{md.name} lacks a kernelspec"
    assert 'formats = "ipynb,md:myst"' in (ROOT / "book" / "jupytext.toml").read_text()


def _requirement_names(reqs: list[str]) -> dict[str, str]:
    """{name: full spec} from PEP 508 strings such as 'torch>=2.1'."""
    out = {}
    for req in reqs:
        name = re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].strip().lower()
        out[name] = req.replace(" ", "")
    return out


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_reqs = _requirement_names(project["dependencies"] + project["optional-dependencies"]["dev"])
    expected = {
        CONDA_NAMES.get(n, n): spec.replace(n, CONDA_NAMES.get(n, n), 1)
        for n, spec in pip_reqs.items()
    }
    conda = {}
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("dependencies:", 1)[1].splitlines():
        m = re.match(r"^\s*-\s+([A-Za-z0-9_.\-]+)([<>=!~].*)?$", line)
        if m and m.group(1) not in {"python", "pip", "-e"}:
            conda[m.group(1).lower()] = (m.group(1) + (m.group(2) or "")).replace(" ", "")
    assert conda == expected, (
        "environment.yml and pyproject.toml list different packages or versions:\n"
        f"only in environment.yml: {sorted(set(conda.items()) - set(expected.items()))}\n"
        f"only in pyproject.toml: {sorted(set(expected.items()) - set(conda.items()))}"
    )


def test_student_copies_are_up_to_date():
    problems = _tools_exercises().stale_copies()
    assert problems == [], "\n".join(problems) + "\nrun `python3 course.py students`"


def test_generator_replaces_solutions_with_hints():
    tool = _tools_exercises()
    source = (
        "def f(x):\n"
        '    """Double x."""\n'
        "    # BEGIN SOLUTION Exercise 9.1: multiply by two\n"
        "    y = 2 * x\n"
        "    return y\n"
        "    # END SOLUTION\n"
    )
    student = tool.student_source(source)
    assert "2 * x" not in student and "BEGIN SOLUTION" not in student
    assert "    raise NotImplementedError('Exercise 9.1: multiply by two')\n" in student
    namespace = {}
    exec(student, namespace)
    with pytest.raises(NotImplementedError, match="Exercise 9.1"):
        namespace["f"](1)
    for broken in (
        "    # BEGIN SOLUTION\n",
        "    # END SOLUTION\n",
        "# BEGIN SOLUTION\n# BEGIN SOLUTION\n",
    ):
        with pytest.raises(tool.MarkerError):
            tool.student_source(broken)


def test_staleness_check_notices_an_edited_solution(tmp_path, monkeypatch):
    tool = _tools_exercises()
    src = tmp_path / "exercises"
    (src / "student").mkdir(parents=True)
    (src / "ex99_demo.py").write_text(
        "def f():\n    # BEGIN SOLUTION Exercise 99.1: hint\n    return 1\n    # END SOLUTION\n"
    )
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    monkeypatch.setattr(tool, "SOURCE", src)
    monkeypatch.setattr(tool, "STUDENT", src / "student")
    assert tool.stale_copies()  # missing copy
    assert tool.main([]) == 0
    assert tool.stale_copies() == []
    (src / "ex99_demo.py").write_text(
        "def f():\n    # BEGIN SOLUTION Exercise 99.1: new hint\n    return 1\n    # END SOLUTION\n"
    )
    assert tool.stale_copies() and tool.main(["--check"]) == 1


def _exercise_modules() -> list[str]:
    return sorted(p.stem for p in (ROOT / "exercises").glob("ex[0-9][0-9]_*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("name", _exercise_modules())
def test_grading_tests_fail_on_the_student_copy(name):
    """The grading tests of each exercise module reject the untouched student copy."""
    tests = sorted((ROOT / "exercises" / "tests").glob(f"test_{name}*.py"))
    assert tests, f"exercises/{name}.py has no grading tests exercises/tests/test_{name}.py"
    env = {
        **os.environ,
        "EQUILIB_EXERCISES_DIR": str(ROOT / "exercises" / "student"),
        "EQUILIB_FAST": "1",
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            *map(str, tests),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0, f"the grading tests of {name} pass on the student copy"
    assert "NotImplementedError" in run.stdout, run.stdout[-2000:]


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    run = subprocess.run(
        [ruff, "check", "--no-cache", str(ROOT)], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout[-3000:]
