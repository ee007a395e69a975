"""Fast checks of the HTML-edition and browser-test tools (no kernel, no browser started)."""

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _widget_notebook(html):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("explorer()")
    view = {"model_id": "box", "version_major": 2, "version_minor": 0}
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="before\n"),
        nbformat.v4.new_output(
            "display_data", data={html.WIDGET_VIEW: view, "text/plain": "VBox()"}
        ),
    ]
    progress = nbformat.v4.new_code_cell("train()")
    progress.outputs = [
        nbformat.v4.new_output(
            "display_data",
            data={html.WIDGET_VIEW: {"model_id": "bar"}, "text/plain": "  0%|          | 0/40"},
        )
    ]
    nb.cells = [
        cell,
        progress,
        nbformat.v4.new_markdown_cell(
            "# 99. Title\n\nAs in [chapter 05](05-marginal-likelihood.md#the-evidence), "
            "[its notes](notes.md) and [a paper](https://example.org/01-a.md)."
        ),
    ]
    nb.metadata["widgets"] = {
        html.WIDGET_STATE: {
            "state": {
                "box": {
                    "model_name": "VBoxModel",
                    "state": {"children": ["IPY_MODEL_s", "IPY_MODEL_o"]},
                },
                "s": {"model_name": "IntSliderModel", "state": {"value": 3}},
                "bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_p"]}},
                "p": {"model_name": "FloatProgressModel", "state": {"value": 40}},
                "o": {
                    "model_name": "OutputModel",
                    "state": {
                        "outputs": [
                            {
                                "output_type": "display_data",
                                "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"},
                            },
                            {"output_type": "stream", "name": "stdout", "text": "hello"},
                        ]
                    },
                },
            }
        }
    }
    return nb


def test_page_notebook_shows_each_widget_as_its_last_figures():
    html = load("build_html")
    nb = _widget_notebook(html)
    page = html.page_notebook(nb)
    outputs = page.cells[0].outputs
    assert outputs[0]["text"] == "before\n"  # other outputs stay
    assert html.WIDGET_NOTE in outputs[1]["data"]["text/markdown"]
    assert outputs[2]["data"]["image/png"] == "iVBORw0KGgo="  # the figure, then the text
    assert outputs[3]["output_type"] == "stream" and outputs[3]["text"] == "hello"
    assert len(outputs) == 4
    assert not any(html.WIDGET_VIEW in o.get("data", {}) for o in outputs)
    assert page.cells[1].outputs == []  # a progress bar shows nothing on the page
    assert "widgets" not in page.metadata  # no widget JavaScript on the page
    assert "(05-marginal-likelihood.ipynb#the-evidence)" in page.cells[2].source
    assert "(notes.md)" in page.cells[2].source and "example.org/01-a.md" in page.cells[2].source
    # the executed notebook itself keeps its widget, its state and its links
    assert html.WIDGET_VIEW in nb.cells[0].outputs[1]["data"] and "widgets" in nb.metadata
    assert "(05-marginal-likelihood.md#the-evidence)" in nb.cells[2].source
    assert html.title_of(nb) == "99. Title"


def test_chapter_links_point_at_the_rendered_notebooks():
    html = load("build_html")
    assert html.link_chapter_notebooks("[a](./01-x-y.md) [b](<02-z.md>) `03-q.md`") == (
        "[a](./01-x-y.ipynb) [b](<02-z.ipynb>) `03-q.md`"
    )


def test_chapter_selection_and_errors():
    html = load("build_html")
    all_chapters = html.chapters(None)
    assert all_chapters and all(p.suffix == ".md" for p in all_chapters)
    first = all_chapters[0].name[:2]
    assert html.chapters([str(int(first))]) == [all_chapters[0]]
    with pytest.raises(ValueError, match="no chapter numbered"):
        html.chapters(["77"])


def test_table_of_contents_lists_every_chapter_once_in_order():
    html = load("build_html")
    listed = html.toc_files(html.TOC.read_text())
    assert listed == [p.stem for p in html.chapters(None)]
    assert html.toc_files(html.toc_for(["00-a", "03-b", "07-c"])) == ["00-a", "03-b", "07-c"]
    with pytest.raises(ValueError, match="root"):
        html.toc_files("chapters: []\n")


def test_stage_writes_pages_and_refuses_a_stale_table_of_contents(tmp_path, monkeypatch):
    html = load("build_html")
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    names = [p.stem for p in html.chapters(None)][:2]
    for name in names:
        nbformat.write(_widget_notebook(html), nb_dir / f"{name}.ipynb")
    assert html.stage(nb_dir, names, tmp_path / "src") == 2  # one figure per notebook
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == sorted(
        [f"{n}.ipynb" for n in names] + ["_toc.yml"]
    )
    assert html.toc_files((tmp_path / "src" / "_toc.yml").read_text()) == names
    toc = tmp_path / "_toc.yml"
    toc.write_text(html.toc_for(names))  # a table of contents that forgot chapters
    monkeypatch.setattr(html, "TOC", toc)
    with pytest.raises(ValueError, match="must list every chapter"):
        html.stage(nb_dir, names, tmp_path / "src")


def test_raw_display_math_counts_dollars_outside_code():
    html = load("build_html")
    page = (
        '<p>so $$ x^2 $$ stays raw</p><pre>echo $$</pre><code>"$$"</code>'
        '<div class="math notranslate nohighlight">\\[x^2\\]</div>'
    )
    assert html.raw_display_math(page) == 2
    assert html.raw_display_math('<PRE class="x">$$\n$$</PRE><p>fine</p>') == 0


def test_stderr_outputs_names_the_cell_and_the_first_line():
    html = load("build_html")
    nb = nbformat.v4.new_notebook()
    quiet = nbformat.v4.new_code_cell("print(1)")
    quiet.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    loud = nbformat.v4.new_code_cell("float(t)")
    loud.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="fine\n"),
        nbformat.v4.new_output(
            "stream", name="stderr", text="x.py:16: UserWarning: Converting a tensor\n  more\n"
        ),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("# T"), quiet, loud]
    assert html.stderr_outputs(nb) == ["code cell 2: x.py:16: UserWarning: Converting a tensor"]
    loud.outputs = loud.outputs[:1]
    assert html.stderr_outputs(nb) == []


def test_remote_resources_finds_what_a_page_would_load_from_another_host():
    html = load("build_html")
    page = (
        '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>'
        '<link rel="stylesheet" href="//fonts.googleapis.com/css?family=Lato">'
        '<img src="http://example.org/a.png"><script src="_static/local.js"></script>'
        '<a href="https://arxiv.org/abs/2310.13555">a paper</a>'
        '<script>const THEBE_JS_URL = "https://unpkg.com/thebe@0.8.2/lib/index.js"</script>'
    )
    assert html.remote_resources(page) == [
        "//fonts.googleapis.com/css?family=Lato",
        "http://example.org/a.png",
        "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js",
        "https://unpkg.com/thebe@0.8.2/lib/index.js",
    ]
    css = "@import url('https://fonts.googleapis.com/x.css'); a { background: url(img/x.png) }"
    assert html.remote_resources(css, "css") == ["https://fonts.googleapis.com/x.css"]
    assert html.remote_resources("see https://arxiv.org/abs/1", "js") == []
    assert html.remote_resources('<a href="https://arxiv.org/abs/1">x</a>') == []
    with pytest.raises(ValueError, match="kind must be"):
        html.remote_resources("", "pdf")


def test_offline_problems_reads_the_pages_and_the_files_they_load(tmp_path):
    html = load("build_html")
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "used.js").write_text('load("https://unpkg.com/x@1/x.js")')
    (tmp_path / "_static" / "unused.js").write_text('load("https://unpkg.com/y@1/y.js")')
    (tmp_path / "_static" / "math.js").write_text(
        'r.url="https://cdn.jsdelivr.net/npm/speech-rule-engine@"+r.VERSION'
    )
    (tmp_path / "01-a.html").write_text(
        '<script src="_static/used.js?v=1"></script><script src="_static/math.js"></script>'
    )
    assert html.offline_problems(tmp_path) == ["_static/used.js: https://unpkg.com/x@1/x.js"]
    (tmp_path / "_static" / "used.js").write_text("// local only")
    assert html.offline_problems(tmp_path) == []


def test_book_extension_drops_remote_scripts_and_thebe_from_pages():
    from sphinx.builders.html._assets import _CascadingStyleSheet, _JavaScript

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        ext = load("book_extension")
    finally:
        sys.path.remove(str(ROOT / "tools"))
    kept = [
        _JavaScript("_static/doctools.js"),
        _JavaScript("mathjax/tex-chtml.js"),
        _JavaScript(None, body="let toggleHintShow = 'Click to show';"),
    ]
    scripts = kept + [
        _JavaScript("https://unpkg.com/thebe@0.8.2/lib/index.js"),
        _JavaScript(None, body='const THEBE_JS_URL = "https://unpkg.com/thebe@0.8.2/lib/index.js"'),
        _JavaScript("_static/sphinx-thebe.js"),
    ]
    styles = [
        _CascadingStyleSheet("_static/pygments.css"),
        _CascadingStyleSheet("//fonts.googleapis.com/css?family=Lato"),
    ]
    context = {"script_files": scripts, "css_files": styles}
    ext.drop_remote_assets(None, "01-a", "page.html", context, None)
    assert context["script_files"] is scripts and scripts == kept
    assert [str(s.filename) for s in styles] == ["_static/pygments.css"]


def test_browser_test_knows_its_chapter_and_reports_a_missing_one(tmp_path):
    bt = load("browser_test")
    assert (ROOT / "book" / f"{bt.DEFAULT_CHAPTER}.md").exists()
    with pytest.raises(FileNotFoundError, match="chapters are"):
        bt.prepare("99-nothing", tmp_path)


def test_browser_test_opens_the_built_page_with_the_most_formulas(tmp_path):
    bt = load("browser_test")
    with pytest.raises(FileNotFoundError, match="course.py html"):
        bt.default_page(tmp_path)
    math = '<span class="math notranslate nohighlight">\\(x\\)</span>'
    (tmp_path / "01-a.html").write_text("<title>01. Symmetry</title>" + math)
    (tmp_path / "02-b.html").write_text(
        "<title>02. Convolution and shifts &#8212; Learning symmetry from data</title>" + 3 * math
    )
    (tmp_path / "03-c.html").write_text('<div class="mathematics">no formula</div>')
    (tmp_path / "search.html").write_text(9 * math)
    assert bt.default_page(tmp_path) == "02-b"
    assert bt.search_word(tmp_path, "02-b") == "convolution"


def test_course_html_and_browser_pass_every_argument_to_their_tool(monkeypatch):
    spec = importlib.util.spec_from_file_location("course_cli", ROOT / "course.py")
    course = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(course)
    seen = []
    monkeypatch.setattr(course, "cmd_html", lambda a: seen.append(("html", a.rest)))
    monkeypatch.setattr(course, "cmd_browser", lambda a: seen.append(("browser", a.rest)))
    course.main(["html", "--full", "--chapters", "01", "05"])
    course.main(["browser", "--parts", "html"])
    course.main(["html"])
    assert seen == [
        ("html", ["--full", "--chapters", "01", "05"]),
        ("browser", ["--parts", "html"]),
        ("html", []),
    ]
