"""The pre-commit hooks exist, fetch nothing, and pass on the repository as committed."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _hooks() -> dict[str, dict]:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    assert [repo["repo"] for repo in config["repos"]] == ["local"], "hooks must not be fetched"
    return {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}


def test_hooks_run_ruff_and_the_student_copy_check():
    hooks = _hooks()
    assert set(hooks) >= {"ruff", "ruff-format", "student-copies"}
    assert hooks["ruff"]["entry"].split()[:2] == [".venv/bin/ruff", "check"]
    assert hooks["student-copies"]["entry"] == "python3 course.py students --check"
    assert all(hook["language"] == "system" for hook in hooks.values())


@pytest.mark.parametrize(
    "hook_id,files", [("ruff", ["tests/test_precommit.py"]), ("student-copies", [])]
)
def test_hook_passes_on_the_repository(hook_id, files):
    hook = _hooks()[hook_id]
    cmd = shlex.split(hook["entry"])
    if not (ROOT / cmd[0]).exists() and "/" in cmd[0]:
        pytest.skip(f"{cmd[0]} is not installed")
    run = subprocess.run(cmd + files, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_files_the_format_hook_covers_are_formatted():
    """``ruff format --check`` on every tracked Python file (the hook runs on all of them;
    ruff's own configuration leaves out the generated student copies)."""
    hook = _hooks()["ruff-format"]
    ruff = ROOT / ".venv" / "bin" / "ruff"
    if not ruff.exists():
        pytest.skip("the course's .venv has no ruff")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    assert "files" not in hook and "python" in hook["types_or"], hook
    files = [f for f in tracked.stdout.split() if f.endswith(".py")]
    assert len(files) >= 100, files
    run = subprocess.run(
        [str(ruff), "format", "--check", "--force-exclude", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
