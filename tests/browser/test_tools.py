"""Fast checks of the HTML-edition and browser-test tools (no kernel, no browser started)."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_widget_snapshots_follow_children_to_output_widgets():
    html = load("build_html")
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("explorer()")
    view = {"model_id": "box", "version_major": 2, "version_minor": 0}
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        html.WIDGET_VIEW: view, "text/plain": "VBox()"})]
    nb.cells = [cell, nbformat.v4.new_markdown_cell("# 99. Title")]
    nb.metadata["widgets"] = {html.WIDGET_STATE: {"state": {
        "box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_s", "IPY_MODEL_o"]}},
        "s": {"model_name": "IntSliderModel", "state": {"value": 3}},
        "o": {"model_name": "OutputModel", "state": {"outputs": [
            {"output_type": "display_data", "data": {"image/png": "iVBORw0KGgo=",
                                                     "text/plain": "<Figure>"}},
            {"output_type": "stream", "name": "stdout", "text": "hello"}]}},
    }}}
    assert html.add_widget_snapshots(nb) == 1
    assert [o["data"].get("image/png") for o in cell.outputs[1:]] == ["iVBORw0KGgo="]
    assert html.title_of(nb) == "99. Title"


def test_chapter_selection_and_errors():
    html = load("build_html")
    all_chapters = html.chapters(None)
    assert all_chapters and all(p.suffix == ".md" for p in all_chapters)
    first = all_chapters[0].name[:2]
    assert html.chapters([str(int(first))]) == [all_chapters[0]]
    with pytest.raises(ValueError, match="no chapter numbered"):
        html.chapters(["77"])


def test_browser_test_knows_its_chapter_and_reports_a_missing_one(tmp_path):
    bt = load("browser_test")
    assert (ROOT / "book" / f"{bt.DEFAULT_CHAPTER}.md").exists()
    with pytest.raises(FileNotFoundError, match="chapters are"):
        bt.prepare("99-nothing", tmp_path)
