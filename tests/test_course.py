"""The course command's set-up steps: pairing the chapters with notebooks leaves a git tree clean,
an edit saved from JupyterLab still reaches the Markdown, and the reader's exercise copies invite
editing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from oracles import load_course

ROOT = Path(__file__).resolve().parent.parent


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=course", "-c", "user.email=course@example.org", *args]
    return subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True).stdout


def _modified(repo: Path) -> list[str]:
    """Tracked files that differ from the last commit (untracked notebooks are not counted)."""
    return [
        line
        for line in _git(repo, "status", "--porcelain").splitlines()
        if not line.startswith("??")
    ]


@pytest.fixture
def book_repo(tmp_path, monkeypatch):
    """A copy of the book's chapters and jupytext configuration, committed to a fresh git repo,
    with ``course.BOOK`` pointing at it."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    book = tmp_path / "book"
    book.mkdir()
    for src in [*sorted((ROOT / "book").glob("[0-9][0-9]-*.md")), ROOT / "book" / "jupytext.toml"]:
        shutil.copy(src, book / src.name)
    (tmp_path / ".gitignore").write_text("*.ipynb\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "book")
    course = load_course()
    monkeypatch.setattr(course, "BOOK", book)
    return course, tmp_path, book


def test_pairing_the_chapters_leaves_the_tree_clean(book_repo):
    course, repo, book = book_repo
    notebooks = course.notebooks(Path(sys.executable), sync=True)  # as `course.py lab` does
    assert notebooks and all(nb.exists() for nb in notebooks)
    assert _modified(repo) == [], "pairing rewrote tracked chapters"
    # a chapter changed by `git pull` after the notebook was made: the notebook follows
    md = course.chapters()[1]
    nb = md.with_suffix(".ipynb")
    md.write_text(md.read_text().replace("\n## ", "\n## Pulled: ", 1))
    _git(repo, "commit", "-q", "-am", "pull")
    os.utime(nb, (md.stat().st_mtime - 10, md.stat().st_mtime - 10))
    course.notebooks(Path(sys.executable), sync=True)
    assert "Pulled: " in nb.read_text(), "the notebook of a newer chapter was not updated"
    course.notebooks(Path(sys.executable), sync=True)  # nothing to do
    course.notebooks(Path(sys.executable), sync=False)  # as `course.py test` does
    assert _modified(repo) == [], "pairing existing notebooks rewrote tracked chapters"


def test_saving_an_unedited_notebook_leaves_every_chapter_as_it_is(book_repo):
    """JupyterLab's autosave writes the paired Markdown as soon as cells have run; a chapter that
    is not in jupytext's own layout would then show up as modified."""
    jupytext = pytest.importorskip("jupytext")
    course, repo, book = book_repo
    course.notebooks(Path(sys.executable), sync=True)
    manager = jupytext.TextFileContentsManager(root_dir=str(book))
    rewritten = []
    for md in course.chapters():
        before = md.read_text()
        manager.save(manager.get(md.with_suffix(".ipynb").name), md.with_suffix(".ipynb").name)
        if md.read_text() != before:
            rewritten.append(md.name)
    assert rewritten == [], (
        f"saving the unedited notebooks rewrites {rewritten}: run `jupytext --sync` on them (it "
        "puts the Markdown in jupytext's layout, e.g. one blank line between cells) and commit"
    )


def test_an_edit_saved_from_jupyterlab_reaches_the_markdown(book_repo):
    jupytext = pytest.importorskip("jupytext")
    course, repo, book = book_repo
    course.notebooks(Path(sys.executable), sync=True)
    manager = jupytext.TextFileContentsManager(root_dir=str(book))
    md = course.chapters()[1]
    name = md.with_suffix(".ipynb").name
    model = manager.get(name)
    cell = next(c for c in model["content"]["cells"] if c["cell_type"] == "markdown")
    cell["source"] = cell["source"] + "\n\nA sentence the reader added."
    manager.save(model, name)
    assert "A sentence the reader added." in md.read_text()
    assert f" M book/{md.name}" in _modified(repo)
    course.notebooks(Path(sys.executable), sync=True)  # the next `course.py lab` keeps the edit
    assert "A sentence the reader added." in md.read_text()
    assert "A sentence the reader added." in md.with_suffix(".ipynb").read_text()


def test_the_readers_copy_invites_editing_and_is_never_overwritten(tmp_path):
    course = load_course()
    folder = tmp_path / "my-exercises"
    course.workspace(folder)
    copies = sorted(folder.glob("ex[0-9][0-9]_*.py"))
    assert copies, "no exercise copies were made"
    jupytext = pytest.importorskip("jupytext")
    for path in copies:
        text = path.read_text()
        chapter = path.name[2:4]
        assert "do not edit" not in text.lower(), f"{path.name} still says not to edit it"
        assert "raise NotImplementedError(" in text
        assert text == course.reader_copy(
            (ROOT / "exercises" / "student" / path.name).read_text(), chapter
        )
        notebook = jupytext.reads(text, fmt="py:percent")
        assert notebook.metadata.get("kernelspec", {}).get("name") == "python3", (
            f"{path.name} lost its jupytext header"
        )
        first = notebook.cells[0]
        assert first.cell_type == "markdown" and first.source.startswith(
            f"Edit this file: fill in each function, then run `python3 course.py check {chapter}`."
        ), f"{path.name} does not open with the invitation to edit it"
        assert "Replace each `raise NotImplementedError(...)` line" in first.source
    copies[0].write_text("# my work\n")
    course.workspace(folder)
    assert copies[0].read_text() == "# my work\n"


def test_a_copy_the_exercises_outgrew_is_named_and_kept(tmp_path, monkeypatch, capsys):
    course = load_course()
    folder = tmp_path / "my-exercises"
    course.workspace(folder)
    capsys.readouterr()
    copy = folder / "ex03_group_convolutions.py"
    # a copy made before the exercise asked for d4_group_conv: the reader's own work in it
    old = copy.read_text().replace("def d4_group_conv(", "def c4_group_conv(")
    copy.write_text(old)
    course.workspace(folder)
    said = capsys.readouterr().out
    assert "ex03_group_convolutions.py has no d4_group_conv" in said
    assert "ex01" not in said  # copies that are current get no word
    assert copy.read_text() == old
    # grading it says the same before the tests run
    monkeypatch.setattr(course, "setup", lambda force=False: "python")
    monkeypatch.setattr(course, "run", lambda cmd, env=None, check=True: 1)
    with pytest.raises(SystemExit):
        course.main(["check", "03", "--dir", str(folder)])
    assert "has no d4_group_conv" in capsys.readouterr().out
    assert copy.read_text() == old


def test_check_refuses_its_arguments_before_any_set_up(tmp_path, monkeypatch):
    """A bad chapter or --dir is refused before the environment is built (on a fresh clone,
    minutes) or book/my-exercises made; a --dir of the reader's own leaves that folder alone."""
    course = load_course()
    calls = []
    monkeypatch.setattr(course, "setup", lambda force=False: calls.append("setup") or "python")
    monkeypatch.setattr(
        course, "workspace", lambda folder=None, warn=True: calls.append("workspace")
    )
    monkeypatch.setattr(course, "run", lambda cmd, env=None, check=True: calls.append("run") or 0)
    for argv, says in (
        (["check", "99"], "no exercises for chapter 99"),
        (["check", "01", "--dir", str(tmp_path / "missing")], "no folder"),
        (["check", "01", "--dir", str(tmp_path)], "has no ex01_"),
    ):
        with pytest.raises(SystemExit) as e:
            course.main(argv)
        assert says in str(e.value.code)
        assert calls == [], f"{argv} set up before refusing its arguments"
    for src in (ROOT / "exercises" / "student").glob("ex01_*.py"):
        shutil.copy(src, tmp_path / src.name)
    with pytest.raises(SystemExit) as e:
        course.main(["check", "01", "--dir", str(tmp_path)])
    assert e.value.code == 0 and calls == ["setup", "run"]  # no book/my-exercises made
