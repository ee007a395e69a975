#!/usr/bin/env python3
"""Build the static HTML edition of the book: execute every chapter, export it, add an index.

Each ``book/NN-slug.md`` is read with jupytext, executed with nbclient in ``book/`` (FAST mode
unless ``--full``; the state of every widget is stored in the notebook, so sliders show their
last drawing), and exported with nbconvert's HTML exporter (lab template) to
``build/html/NN-slug.html``, with the executed notebook beside it. After each widget the page
also shows a static snapshot of the figures the widget last drew, so the page reads offline. ``build/html/index.html``
lists the chapters with their titles and run times. No network and no node are needed to build;
a cell that raises fails the build (exit status 1) and names the chapter and the cell.

    python tools/build_html.py                    # every chapter, FAST mode
    python tools/build_html.py --chapters 01 09   # some chapters
    python tools/build_html.py --full --jobs 2    # reader settings, two chapters at a time
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"


def say(msg: str) -> None:
    print(f"[html] {msg}", flush=True)


def chapters(selected: list[str] | None) -> list[Path]:
    """Chapter sources ``book/NN-*.md`` in order, optionally only those whose NN is selected."""
    found = sorted(BOOK.glob("[0-9][0-9]-*.md"))
    if not found:
        raise FileNotFoundError(f"no chapters book/NN-*.md under {BOOK}")
    if not selected:
        return found
    by_num = {p.name[:2]: p for p in found}
    wanted = [s.zfill(2) if s.isdigit() else s[:2] for s in selected]
    missing = [w for w in wanted if w not in by_num]
    if missing:
        raise ValueError(f"no chapter numbered {missing}; chapters are {sorted(by_num)}")
    return [by_num[w] for w in wanted]


def title_of(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", cell.source, flags=re.M)
            if m:
                return m.group(1).strip()
    return "untitled"


WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _widget_images(model_id: str, state: dict, seen: set | None = None) -> list[str]:
    """PNG figures inside the widget ``model_id``: its Output widgets' outputs, recursively."""
    seen = set() if seen is None else seen
    if model_id in seen or model_id not in state:
        return []
    seen.add(model_id)
    model = state[model_id]
    st = model.get("state", {})
    images = []
    if model.get("model_name") == "OutputModel":
        images += [o["data"]["image/png"] for o in st.get("outputs", [])
                   if "image/png" in o.get("data", {})]
    for child in st.get("children", []):
        if isinstance(child, str) and child.startswith("IPY_MODEL_"):
            images += _widget_images(child[len("IPY_MODEL_"):], state, seen)
    return images


def add_widget_snapshots(nb) -> int:
    """After each widget, a static copy of the figures it last drew (readable offline).

    The widget itself needs the widget manager's JavaScript to render in a static page; the
    snapshot does not. Returns the number of snapshots added.
    """
    import nbformat

    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    added = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            outputs.append(out)
            view = out.get("data", {}).get(WIDGET_VIEW)
            if not view:
                continue
            for png in _widget_images(view.get("model_id", ""), state):
                outputs.append(nbformat.v4.new_output(
                    "display_data",
                    data={"image/png": png, "text/plain": "<widget snapshot>"},
                    metadata={"equilib": {"widget_snapshot": True}},
                ))
                added += 1
        cell.outputs = outputs
    return added


def build_one(src: str, out: str, fast: bool, timeout: int) -> dict:
    """Execute one chapter and write its HTML; returns ``{name, title, seconds, error}``."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    os.environ["EQUILIB_FAST"] = "1" if fast else "0"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    src_p, out_p = Path(src), Path(out)
    nb = jupytext.read(src_p)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3"})
    t0 = time.time()
    error = None
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
        resources={"metadata": {"path": str(BOOK)}},
    )
    try:
        client.execute()
    except CellExecutionError as err:
        first = str(err).strip().splitlines()
        error = "\n".join(first[-12:])
    seconds = time.time() - t0
    name = src_p.stem
    nbformat.write(nb, out_p / f"{name}.ipynb")
    snapshots = add_widget_snapshots(nb)
    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title_of(nb)}})
    nav = (
        '<div style="padding:8px 16px;font-family:sans-serif">'
        '<a href="index.html">&larr; contents</a></div>'
    )
    body = re.sub(r"(<body[^>]*>)", r"\1" + nav, body, count=1)
    (out_p / f"{name}.html").write_text(body, encoding="utf-8")
    return {"name": name, "title": title_of(nb), "seconds": seconds, "error": error,
            "widget_snapshots": snapshots}


def write_index(out: Path, results: list[dict], fast: bool) -> None:
    rows = "\n".join(
        f'<li><a href="{html.escape(r["name"])}.html">{html.escape(r["title"])}</a>'
        f' <small>({r["seconds"]:.0f} s{", FAILED" if r["error"] else ""})</small></li>'
        for r in results
    )
    mode = "FAST mode" if fast else "full settings"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Learning symmetry from data</title>
<style>body {{ font-family: sans-serif; max-width: 760px; margin: 40px auto; line-height: 1.6 }}
</style></head>
<body><h1>Learning symmetry from data</h1>
<p>The executed chapters of the equilib course ({mode}). Each page shows the code, its printed
output, its figures and the last state of its widgets; the notebooks (<code>.ipynb</code>) are
beside the pages. To change the sliders, open the chapter in JupyterLab:
<code>python3 course.py lab</code>.</p>
<ol start="0">
{rows}
</ol></body></html>
"""
    (out / "index.html").write_text(page, encoding="utf-8")
    (out / "build.json").write_text(json.dumps({"fast": fast, "chapters": results}, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--chapters", nargs="*", default=None, help="chapter numbers (default: all)")
    ap.add_argument("--out", default=str(ROOT / "build" / "html"), help="output folder")
    ap.add_argument("--full", action="store_true", help="execute without FAST mode")
    ap.add_argument("--jobs", type=int, default=1, help="chapters executed at once (default 1)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    try:
        srcs = chapters(args.chapters)
    except (FileNotFoundError, ValueError) as err:
        say(f"ERROR: {err}")
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    fast = not args.full
    t0 = time.time()
    say(f"executing {len(srcs)} chapters ({'FAST' if fast else 'full'}) into {out}")
    jobs = [(str(s), str(out), fast, args.timeout) for s in srcs]
    results = []
    if args.jobs == 1:
        for j in jobs:
            results.append(build_one(*j))
            r = results[-1]
            say(f"{r['name']}: {r['seconds']:.0f} s{' FAILED' if r['error'] else ''}")
    else:
        with ProcessPoolExecutor(args.jobs) as pool:
            for r in pool.map(build_one, *zip(*jobs)):
                results.append(r)
                say(f"{r['name']}: {r['seconds']:.0f} s{' FAILED' if r['error'] else ''}")
    write_index(out, results, fast)
    failed = [r for r in results if r["error"]]
    for r in failed:
        say(f"FAILED {r['name']}:\n{r['error']}")
    missing_fig = [r["name"] for r in results if "<img" not in (out / f"{r['name']}.html").read_text()]
    if missing_fig:
        say(f"note: no figure in {missing_fig}")
    say(f"{'FAILED' if failed else 'OK'}: {len(results)} chapters, index at {out / 'index.html'} "
        f"({time.time() - t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
