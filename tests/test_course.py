"""The course command's set-up steps: pairing the chapters with notebooks leaves a git tree clean,
an edit saved from JupyterLab still reaches the Markdown, and the reader's exercise copies invite
editing."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _course():
    spec = importlib.util.spec_from_file_location("course_cli", ROOT / "course.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=course", "-c", "user.email=course@example.org", *args]
    return subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True).stdout


def _modified(repo: Path) -> list[str]:
    """Tracked files that differ from the last commit (untracked notebooks are not counted)."""
    return [line for line in _git(repo, "status", "--porcelain").splitlines()
            if not line.startswith("??")]


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
    course = _course()
    monkeypatch.setattr(course, "BOOK", book)
    return course, tmp_path, book


def test_pairing_the_chapters_leaves_the_tree_clean(book_repo):
    course, repo, book = book_repo
    notebooks = course.notebooks(Path(sys.executable), sync=True)  # as `course.py lab` does
    assert notebooks and all(nb.exists() for nb in notebooks)
    assert _modified(repo) == [], "pairing rewrote tracked chapters"
    course.notebooks(Path(sys.executable), sync=True)  # a second start syncs existing pairs
    course.notebooks(Path(sys.executable), sync=False)  # as `course.py test` does
    assert _modified(repo) == [], "syncing existing pairs rewrote tracked chapters"


def test_a_notebook_saved_from_jupyterlab_writes_its_edit_to_the_markdown(book_repo):
    jupytext = pytest.importorskip("jupytext")
    course, repo, book = book_repo
    course.notebooks(Path(sys.executable), sync=True)
    manager = jupytext.TextFileContentsManager(root_dir=str(book))
    name = course.chapters()[1].with_suffix(".ipynb").name
    model = manager.get(name)
    manager.save(model, name)  # saved unchanged, as JupyterLab's autosave after running cells
    assert _modified(repo) == [], "saving an unedited notebook rewrote its chapter"
    model = manager.get(name)
    cell = next(c for c in model["content"]["cells"] if c["cell_type"] == "markdown")
    cell["source"] = cell["source"] + "\n\nA sentence the reader added."
    manager.save(model, name)
    md = book / Path(name).with_suffix(".md").name
    assert "A sentence the reader added." in md.read_text()
    assert _modified(repo) == [f" M book/{md.name}"]


def test_the_readers_copy_invites_editing_and_is_never_overwritten(tmp_path):
    course = _course()
    folder = tmp_path / "my-exercises"
    course.workspace(folder)
    copies = sorted(folder.glob("ex[0-9][0-9]_*.py"))
    assert copies, "no exercise copies were made"
    for path in copies:
        text = path.read_text()
        chapter = path.name[2:4]
        first = text.splitlines()[0]
        assert first == f"# Edit this file: fill in each function, then run `python3 course.py check {chapter}`."
        assert "Do not edit" not in text
        assert "raise NotImplementedError(" in text
        assert text == course.reader_copy((ROOT / "exercises" / "student" / path.name).read_text(), chapter)
    copies[0].write_text("# my work\n")
    course.workspace(folder)
    assert copies[0].read_text() == "# my work\n"
