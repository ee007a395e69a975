#!/usr/bin/env python3
"""The course's single entry point: set up, open the book, run the tests, grade exercises.

    python3 course.py lab            # set up .venv if needed, then JupyterLab on the book
    python3 course.py test           # set up .venv if needed, then every test and chapter
    python3 course.py check 01       # grade your own exercises of chapter 01
    python3 course.py students       # regenerate the student copies of the exercises
    python3 course.py bench          # run the benchmarks
    python3 course.py html           # build the HTML edition (Jupyter Book) under build/html
    python3 course.py browser        # a chapter in JupyterLab, a page of build/html, in Chromium

Only the standard library is used here, so this file runs with any Python 3.10+ before the
virtual environment exists.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BOOK = ROOT / "book"
EXERCISES = ROOT / "exercises"
WORKSPACE = BOOK / "my-exercises"
TORCH_PIN = "torch==2.13.0"
STAMP = VENV / ".equilib-setup"


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def say(msg: str) -> None:
    print(f"[course] {msg}", flush=True)


def run(cmd: list, env: dict | None = None, check: bool = True) -> int:
    say("$ " + " ".join(str(c) for c in cmd))
    merged = {**os.environ, **(env or {})}
    code = subprocess.call([str(c) for c in cmd], cwd=ROOT, env=merged)
    if check and code != 0:
        sys.exit(code)
    return code


def setup_fingerprint() -> str:
    """What the environment was built from: a change re-runs the install."""
    h = hashlib.sha256()
    h.update((ROOT / "pyproject.toml").read_bytes())
    h.update(TORCH_PIN.encode())
    h.update(sys.version.encode())
    return h.hexdigest()


def setup(force: bool = False) -> Path:
    """Create ``.venv`` (torch pinned first, then the package with its dev extra) if needed."""
    py = venv_python()
    fingerprint = setup_fingerprint()
    if not force and py.exists() and STAMP.exists() and STAMP.read_text() == fingerprint:
        say(f"environment up to date ({VENV})")
        return py
    if not py.exists():
        say(f"creating the virtual environment {VENV}")
        run([sys.executable, "-m", "venv", VENV])
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    # torch first, pinned, and pinned again below so no dependency can pull another build.
    run(pip + [TORCH_PIN])
    run(pip + [TORCH_PIN, "-e", ".[dev]"])
    STAMP.write_text(fingerprint)
    say("environment ready")
    return py


def chapters() -> list[Path]:
    return sorted(p for p in BOOK.glob("[0-9][0-9]-*.md"))


def notebooks(py: Path, sync: bool = True) -> list[Path]:
    """Pair every chapter with its notebook; never write a chapter's Markdown.

    ``sync=True`` (for reading) writes a notebook only where it is missing or older than its
    chapter, keeping the outputs of an existing one (``--update``); edits saved in JupyterLab reach
    the Markdown through jupytext's pairing (``book/jupytext.toml``) at the moment they are
    saved. ``sync=False`` (for testing) regenerates every notebook from its Markdown, which is the
    version under test. The chapters in git are kept in jupytext's own layout and without its
    version in the header, so a save of an unedited notebook rewrites them byte for byte and the
    git tree stays clean (``tests/test_course.py`` checks both).
    """
    mds = chapters()
    if sync:
        stale = [
            md
            for md in mds
            if not md.with_suffix(".ipynb").exists()
            or md.with_suffix(".ipynb").stat().st_mtime < md.stat().st_mtime
        ]
        fresh = [md for md in stale if not md.with_suffix(".ipynb").exists()]
        if fresh:
            run([py, "-m", "jupytext", "--to", "ipynb", "--quiet", *fresh])
        if len(fresh) < len(stale):
            run(
                [
                    py,
                    "-m",
                    "jupytext",
                    "--to",
                    "ipynb",
                    "--update",
                    "--quiet",
                    *[md for md in stale if md not in fresh],
                ]
            )
        for md in stale:
            # The new notebook carries its chapter's time: JupyterLab's jupytext then reads the
            # pair from the Markdown instead of refusing a notebook "more recent" than its text.
            os.utime(md.with_suffix(".ipynb"), (md.stat().st_atime, md.stat().st_mtime))
    elif mds:
        run([py, "-m", "jupytext", "--to", "ipynb", "--quiet", *mds])
    return [md.with_suffix(".ipynb") for md in mds]


def students(py: Path, check: bool = False) -> None:
    args = [py, ROOT / "tools" / "exercises.py"] + (["--check"] if check else [])
    run(args)


READER_NOTICE = (
    "# %% [markdown]\n"
    "# Edit this file: fill in each function, then run `python3 course.py check {chapter}`.\n"
    "# Replace each `raise NotImplementedError(...)` line with your code; its message points at\n"
    "# the part of chapter {chapter} that the exercise needs. `python3 course.py lab` and\n"
    "# `python3 course.py check` never overwrite this file once it exists.\n"
    "\n"
)


def reader_copy(student: str, chapter: str) -> str:
    """The reader's copy of a student exercise file: its first cell, the notice that the file is
    generated and not to be edited, becomes an invitation to edit it (the jupytext header above
    the cell stays, so the copy opens as a notebook)."""
    lines = student.splitlines(keepends=True)
    notice = READER_NOTICE.format(chapter=chapter)
    start = next(
        (i for i, line in enumerate(lines) if "do not edit this file" in line.lower()), None
    )
    if start is None or start == 0 or not lines[start - 1].startswith("# %% [markdown]"):
        return notice + student
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return "".join(lines[: start - 1]) + notice + "".join(lines[end + 1 :])


def _functions(source: str) -> list[str] | None:
    """The names of the top-level functions of a Python file (None if it does not parse)."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def warn_if_outdated(copy: Path, template: Path) -> None:
    """Say so if the reader's ``copy`` of an exercise file lacks a function that the current
    ``template`` asks for (the exercises changed after the copy was made): grading it would
    only report a missing attribute. The copy is never touched."""
    have, want = _functions(copy.read_text()), _functions(template.read_text())
    if have is None or want is None:
        return  # a copy that does not parse: grading names the line
    lacking = [name for name in want if name not in have]
    if lacking:
        shown = copy.relative_to(ROOT) if copy.is_relative_to(ROOT) else copy
        fresh = (
            "rename it and run python3 course.py lab again"
            if copy.parent == WORKSPACE
            else f"copy {template.relative_to(ROOT)} beside it under another name"
        )
        say(
            f"{shown} has no {', '.join(lacking)}: the exercises changed after your copy was "
            "made. Your copy is kept as it is; to get the current exercises beside your work, "
            f"{fresh}"
        )


def workspace(folder: Path | None = None, warn: bool = True) -> None:
    """Copy each student exercise into ``book/my-exercises`` unless the reader has one already
    (an existing copy is kept, with a word, if ``warn``, when the exercises changed since it was
    made)."""
    folder = WORKSPACE if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    for src in sorted((EXERCISES / "student").glob("ex*.py")):
        dst = folder / src.name
        if dst.exists():
            if warn:
                warn_if_outdated(dst, src)
            continue
        dst.write_text(reader_copy(src.read_text(), src.name[2:4]))
        shown = dst.relative_to(ROOT) if dst.is_relative_to(ROOT) else dst
        say(f"new exercise file for you: {shown}")


def cmd_lab(args) -> None:
    py = setup()
    notebooks(py)
    workspace()
    cmd = [
        py,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={args.port}",
        f"--ServerApp.root_dir={BOOK}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    say(
        f"starting JupyterLab: open the http://127.0.0.1:{args.port}/lab?token=... URL printed below"
    )
    os.chdir(ROOT)
    os.execv(str(py), [str(c) for c in cmd])


def ensure_chromium() -> str | None:
    """Path of a Chromium for the browser test, installing Debian's package when we can."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if is_root and shutil.which("apt-get"):
        say("installing Debian's chromium for the browser test")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-q"], env=env)
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"], env=env)
        return shutil.which("chromium")
    return None


def browser_test(py: Path, extra: list[str]) -> None:
    chromium = ensure_chromium()
    if chromium is None:
        msg = "no chromium found and none can be installed here (needs root and apt-get)"
        if os.environ.get("CI"):
            sys.exit(f"[course] browser test: {msg}")
        say(
            f"skipping the browser test: {msg}; install chromium and run `python3 course.py browser`"
        )
        return
    run(
        [py, ROOT / "tools" / "browser_test.py", "--chromium", chromium, *extra],
        env={"OMP_NUM_THREADS": "1"},
    )


def cmd_test(args) -> None:
    py = setup()
    nbs = [] if args.no_book else notebooks(py, sync=False)
    # One thread per process: the xdist workers and the notebook kernels already fill the cores,
    # and oversubscribed BLAS threads make small trainings many times slower.
    env = {"EQUILIB_FAST": "1", "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    workers = args.workers or str(min(os.cpu_count() or 1, 2))
    cmd = [
        py,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-n",
        workers,
        "--dist",
        "loadscope",
        "--nbval-lax",
        "--durations=15",
        "tests",
        "exercises/tests",
        *nbs,
        *args.pytest_args,
    ]
    run(cmd, env=env)
    # The HTML edition first, so that the browser test also opens one of its pages offline.
    html = not args.no_book and not args.no_html
    if html:
        run([py, ROOT / "tools" / "build_html.py", "--jobs", workers], env={"OMP_NUM_THREADS": "1"})
    if not args.no_book and not args.no_browser:
        browser_test(py, ["--parts", "lab", "html"] if html else ["--parts", "lab"])


GRADING_TIMEOUT = 300  # seconds per grading test: a reader's endless loop ends as a failure


def chapter_number(text: str) -> str:
    """The chapter argument of ``check`` as two digits: '1', '01' -> '01'; else a usage error."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a chapter number such as 01 or 7, got {text!r}")
    return f"{int(text):02d}"


def positive_seconds(text: str) -> int:
    """A positive whole number of seconds, else a usage error."""
    if not text.strip().isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return int(text)


def _check_copies(folder: Path, expected: list[str]) -> None:
    """Exit with a message unless ``folder`` holds every file of ``expected``."""
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        sys.exit(
            f"{folder} has no {', '.join(missing)}: grading reads your copy of the exercises "
            "from there (python3 course.py lab makes one in book/my-exercises)"
        )


def cmd_check(args) -> None:
    # the arguments are checked first: a refusal builds no environment and creates no folder
    chapter = args.chapter
    tests = sorted((EXERCISES / "tests").glob(f"test_ex{chapter}_*.py"))
    if not tests:
        valid = sorted({p.name[7:9] for p in (EXERCISES / "tests").glob("test_ex*_*.py")})
        sys.exit(f"no exercises for chapter {chapter}; chapters with exercises: {', '.join(valid)}")
    expected = sorted(p.name for p in (EXERCISES / "student").glob(f"ex{chapter}_*.py"))
    if args.dir:
        folder = Path(args.dir).resolve()
        if not folder.is_dir():
            sys.exit(
                f"no folder {folder}: --dir names the folder that holds your {', '.join(expected)}"
            )
        _check_copies(folder, expected)
    py = setup()
    if not args.dir:
        folder = WORKSPACE
        workspace(warn=False)  # the reader's copies, made once
        _check_copies(folder, expected)
    for name in expected:  # a word on a copy that the exercises outgrew
        warn_if_outdated(folder / name, EXERCISES / "student" / name)
    say(f"grading your work in {folder}")
    env = {"EQUILIB_EXERCISES_DIR": str(folder), "EQUILIB_FAST": "1", "MPLBACKEND": "Agg"}
    # each test has a time limit (pytest-timeout, in the dev extra): a loop that never ends
    # fails that test, and the report names the exercise (exercises/tests/conftest.py)
    code = run(
        [
            py,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--timeout",
            str(args.timeout),
            *tests,
        ],
        env=env,
        check=False,
    )
    say(
        "all exercises pass, well done"
        if code == 0
        else "some exercises are not done yet (see above)"
    )
    sys.exit(code)


def cmd_students(args) -> None:
    students(Path(sys.executable), check=args.check)  # standard library only: no set-up needed


def cmd_bench(args) -> None:
    py = setup()
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        run([py, script])


def cmd_html(args) -> None:
    py = setup()
    run([py, ROOT / "tools" / "build_html.py", *args.rest], env={"OMP_NUM_THREADS": "1"})


def cmd_browser(args) -> None:
    py = setup()
    browser_test(py, args.rest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("setup", help="create or update .venv")
    p.add_argument("--force", action="store_true", help="reinstall even if up to date")
    p.set_defaults(func=lambda a: setup(force=a.force))

    p = sub.add_parser("lab", help="set up, then start JupyterLab on the book")
    p.add_argument("--port", type=int, default=8888)
    p.set_defaults(func=cmd_lab)

    p = sub.add_parser("test", help="set up, then run every test and execute every chapter (FAST)")
    p.add_argument("--no-book", action="store_true", help="skip the chapters (and browser, HTML)")
    p.add_argument("--no-browser", action="store_true", help="skip the real-browser test")
    p.add_argument("--no-html", action="store_true", help="skip building the HTML edition")
    p.add_argument("--workers", default=None, help="pytest-xdist workers (default: up to 2)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra arguments for pytest")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("check", help="grade your exercises of one chapter, e.g. 'check 01'")
    p.add_argument("chapter", type=chapter_number, help="chapter number, e.g. 01")
    p.add_argument(
        "--dir", default=None, help="folder with your exercise files (book/my-exercises)"
    )
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=GRADING_TIMEOUT,
        help=f"seconds each grading test may run (default {GRADING_TIMEOUT})",
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("students", help="regenerate the student copies of the exercises")
    p.add_argument("--check", action="store_true", help="only check that they are up to date")
    p.set_defaults(func=cmd_students)

    p = sub.add_parser("bench", help="run the benchmarks")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("html", help="build the HTML edition with Jupyter Book under build/html")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_html)

    p = sub.add_parser("browser", help="run the real-browser test of the course")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_browser)

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["html"], ["browser"]):
        # Everything after these two goes to their tool as it is (argparse's REMAINDER would
        # stop at a leading option such as --full).
        args = parser.parse_args(argv[:1])
        args.rest = argv[1:]
    else:
        args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
