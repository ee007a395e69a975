"""Grading never hangs: each test has a time limit and a timeout names the exercise; a bad
chapter argument is a usage error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from oracles import load_course

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "argv", [["check", "abc"], ["check", "1x"], ["check", "01", "--timeout", "0"]]
)
def test_check_with_a_bad_argument_is_a_usage_error(argv, capsys):
    course = load_course()
    course.setup = lambda *a, **k: pytest.fail("set-up must not run on a usage error")
    with pytest.raises(SystemExit) as info:
        course.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "expected a" in err and "Traceback" not in err


def test_check_passes_a_time_limit_to_pytest(tmp_path, monkeypatch):
    course = load_course()
    seen = {}
    monkeypatch.setattr(course, "setup", lambda *a, **k: Path(sys.executable))
    monkeypatch.setattr(course, "workspace", lambda: None)

    def fake_run(cmd, env=None, check=True):
        seen["cmd"] = [str(c) for c in cmd]
        return 0

    monkeypatch.setattr(course, "run", fake_run)
    (tmp_path / "ex01_groups.py").write_text("# a reader's copy\n")
    for argv, limit in (
        (["check", "1"], str(course.GRADING_TIMEOUT)),
        (["check", "01", "--timeout", "7"], "7"),
    ):
        with pytest.raises(SystemExit) as info:
            course.main([*argv, "--dir", str(tmp_path)])
        assert info.value.code == 0
        cmd = seen["cmd"]
        assert cmd[cmd.index("--timeout") + 1] == limit
        assert any(c.endswith("test_ex01_groups.py") for c in cmd)


def test_check_refuses_a_folder_without_the_readers_copy(tmp_path, monkeypatch):
    course = load_course()
    monkeypatch.setattr(course, "setup", lambda *a, **k: Path(sys.executable))
    monkeypatch.setattr(course, "workspace", lambda: None)
    monkeypatch.setattr(course, "run", lambda *a, **k: pytest.fail("nothing to grade"))
    for folder, says in ((tmp_path / "missing", "no folder"), (tmp_path, "has no ex01_groups.py")):
        with pytest.raises(SystemExit) as info:
            course.main(["check", "01", "--dir", str(folder)])
        assert says in str(info.value.code) and str(folder) in str(info.value.code)


def test_an_endless_loop_in_an_exercise_fails_naming_the_exercise(tmp_path):
    pytest.importorskip("pytest_timeout")
    source = (ROOT / "exercises" / "ex01_groups.py").read_text()
    (tmp_path / "ex01_groups.py").write_text(
        source + "\n\ndef d4_compose(a, b):\n    while True:\n        pass\n"
    )
    env = dict(
        os.environ,
        EQUILIB_EXERCISES_DIR=str(tmp_path),
        EQUILIB_FAST="1",
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "--timeout",
            "5",
            "exercises/tests/test_ex01_groups.py",
            "-k",
            "test_1_1_d4_compose_matches_equilib",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "exercise ex01_groups" in out and "did not finish within 5 s" in out, out
    assert "d4_compose" in out  # where it was stopped
