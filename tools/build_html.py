#!/usr/bin/env python3
"""Build the HTML edition of the book with Jupyter Book 1 (Sphinx, MyST-NB, sphinx-book-theme).

Three steps, each chapter executed once:

1. execute: every ``book/NN-slug.md`` is read with jupytext and executed with nbclient in
   ``book/`` (FAST mode unless ``--full``; ``--jobs`` chapters at a time), keeping the state of
   every widget; the executed notebooks land in ``build/notebooks/``. A cell that raises or
   runs past ``--timeout`` fails the build (exit status 1), which names the chapter and the cell;
   so does a chapter that takes more than twice ``--timeout`` in all.
2. stage: a copy of each executed notebook goes to ``build/book/`` with the table of contents
   ``book/_toc.yml`` (a shorter one for ``--chapters``); in that copy each widget shows what its
   Output widgets drew last (a static page has no kernel to redraw it), with a line saying that
   its controls work in JupyterLab, and links to other chapters name their notebooks.
3. render: ``jupyter-book build`` with ``book/_config.yml`` turns the staged notebooks into one
   page per chapter under ``build/html/`` without executing them again: a table of contents,
   full-text search, MathJax served from ``_static/mathjax`` (the sphinx-mathjax-offline
   package; ``tools/book_extension.py`` keeps CDN addresses off the pages) and links between
   chapters (``[chapter 05](05-marginal-likelihood.md)``).

Afterwards every page, and every script and style sheet a page loads, is searched for resources
on another host (a CDN script, font or style sheet); finding one fails the build, and so do a
link between chapters that leads nowhere and a ``$$`` left as text on a page. Nothing is fetched from the network to build, and
nothing when a reader opens a page.

    python tools/build_html.py                    # every chapter, FAST mode
    python tools/build_html.py --chapters 01 05   # some chapters (the table of contents shrinks)
    python tools/build_html.py --full --jobs 2    # reader settings, two chapters at a time
    python tools/build_html.py --no-execute       # render build/notebooks/ again, as they are
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
BUILD = ROOT / "build"
CONFIG = BOOK / "_config.yml"
TOC = BOOK / "_toc.yml"

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = (
    "*A widget: here the figure it drew last; in JupyterLab (`python3 course.py lab`) its "
    "controls redraw it.*"
)


ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colours, taken out of what is reported


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


# --- widgets -------------------------------------------------------------------------------


def widget_outputs(model_id: str, state: dict, seen: set | None = None) -> list[dict]:
    """What the widget ``model_id`` shows last: its Output widgets' figures and text, in order.

    Output widgets are searched recursively through ``children``; a widget without one (a
    progress bar, a lone slider) shows nothing here.
    """
    seen = set() if seen is None else seen
    if model_id in seen or model_id not in state:
        return []
    seen.add(model_id)
    model = state[model_id]
    st = model.get("state", {})
    shown = []
    if model.get("model_name") == "OutputModel":
        for out in st.get("outputs", []):
            if "image/png" in out.get("data", {}):
                shown.append(_snapshot(out["data"]["image/png"]))
            elif out.get("output_type") == "stream" and out.get("text", "").strip():
                shown.append(_stream(out["name"], out["text"]))
    for child in st.get("children", []):
        if isinstance(child, str) and child.startswith("IPY_MODEL_"):
            shown += widget_outputs(child[len("IPY_MODEL_") :], state, seen)
    return shown


def _snapshot(png: str):
    import nbformat

    return nbformat.v4.new_output(
        "display_data",
        data={"image/png": png, "text/plain": "<widget snapshot>"},
        metadata={"equilib": {"widget_snapshot": True}},
    )


def _stream(name: str, text: str):
    import nbformat

    return nbformat.v4.new_output("stream", name=name, text=text)


_CHAPTER_LINK = re.compile(r"(\]\(\s*<?(?:\./)?)(\d\d-[\w-]+)\.md(#[^)\s>]*)?(>?\s*\))")


def link_chapter_notebooks(markdown: str) -> str:
    """``[text](05-slug.md#part)`` -> ``[text](05-slug.ipynb#part)``.

    A chapter links to another by its source, ``NN-slug.md``; the pages are rendered from the
    executed notebooks, so the link must name ``NN-slug.ipynb`` for Sphinx to resolve it.
    """
    return _CHAPTER_LINK.sub(lambda m: f"{m[1]}{m[2]}.ipynb{m[3] or ''}{m[4]}", markdown)


def page_notebook(nb):
    """The notebook a page is rendered from: each widget replaced by its last figures.

    A copy: ``nb`` keeps its widget state. In the copy every widget view becomes what its
    Output widgets show last (figures, printed text) after one line saying where its controls
    work, or nothing when they show nothing (a progress bar); the widget state
    is dropped from the metadata (so the page loads no widget JavaScript), and links to other
    chapters point at their notebooks.
    """
    import nbformat

    page = copy.deepcopy(nb)
    state = page.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in page.cells:
        if cell.cell_type == "markdown":
            cell.source = link_chapter_notebooks(cell.source)
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if not view:
                outputs.append(out)
                continue
            shown = widget_outputs(view.get("model_id", ""), state)
            if shown:  # a widget that shows nothing (a progress bar) leaves nothing on the page
                outputs.append(
                    nbformat.v4.new_output(
                        "display_data",
                        data={"text/markdown": WIDGET_NOTE, "text/plain": WIDGET_NOTE},
                    )
                )
                outputs += shown
        cell.outputs = outputs
    page.metadata.pop("widgets", None)
    return page


# --- step 1: execute -------------------------------------------------------------------------


CHAPTER_LIMIT = 2  # a chapter may take at most this many times the per-cell --timeout


def _in_slices(get_msg):
    """``get_msg`` of a kernel channel, waiting in slices of at most a second.

    One long wait for a kernel's message has been seen here to miss a message that had already
    arrived, after a cell that shows a widget, and to return only when the whole wait ran out
    (the cell's timeout); a fresh wait each second sees it.
    """
    from queue import Empty

    async def get_msg_in_slices(timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await get_msg(timeout=min(1.0, left))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    return get_msg_in_slices


def execute_one(src: str, out_dir: str, fast: bool, timeout: int) -> dict:
    """Execute one chapter into ``out_dir/NAME.ipynb``; returns ``{name, title, seconds, error}``."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellControlSignal, DeadKernelError

    os.environ["EQUILIB_FAST"] = "1" if fast else "0"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    src_p = Path(src)
    nb = jupytext.read(src_p)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3"})
    t0 = time.time()
    error = None

    # The outputs are all in once the last cell has run: the kernel is stopped at once then,
    # never waited for.
    class Client(NotebookClient):
        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            for channel in (kc.shell_channel, kc.iopub_channel):
                channel.get_msg = _in_slices(channel.get_msg)
            return kc

    client = Client(
        nb,
        timeout=timeout,
        kernel_name="python3",
        store_widget_state=True,
        shutdown_kernel="immediate",
        resources={"metadata": {"path": str(BOOK)}},
    )
    # A bound on the whole chapter too: nbclient has been seen here to wait on, long after a
    # chapter's last cell had run, with the kernel idle.
    limit = CHAPTER_LIMIT * timeout

    async def run() -> None:
        task = asyncio.ensure_future(client.async_execute())
        done, _ = await asyncio.wait({task}, timeout=limit)
        if not done:
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: B036 - whatever the cancelled run raised on its way out
                pass
            if client.km is not None:  # the kernel, if the cancelled run left it running
                await client.km.shutdown_kernel(now=True)
            raise asyncio.TimeoutError
        task.result()

    try:
        asyncio.run(run())
    except (CellControlSignal, DeadKernelError) as err:  # a cell raised, timed out, or killed it
        first = ANSI.sub("", str(err)).strip().splitlines()
        error = "\n".join(first[-12:]) or type(err).__name__
    except asyncio.TimeoutError:
        ran = sum(
            bool(c.get("metadata", {}).get("execution")) for c in nb.cells if c.cell_type == "code"
        )
        n_code = sum(c.cell_type == "code" for c in nb.cells)
        error = f"the chapter did not finish within {limit} s ({ran} of {n_code} code cells ran)"
    seconds = time.time() - t0
    nb.metadata["equilib"] = {"fast": fast, "seconds": round(seconds, 1), "error": error}
    nbformat.write(nb, Path(out_dir) / f"{src_p.stem}.ipynb")
    return {"name": src_p.stem, "title": title_of(nb), "seconds": seconds, "error": error}


def execute(srcs: list[Path], out_dir: Path, fast: bool, jobs: int, timeout: int) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    work = [(str(s), str(out_dir), fast, timeout) for s in srcs]
    results = []
    t0 = time.time()

    def report(r: dict) -> None:
        results.append(r)
        say(
            f"{r['name']}: {r['seconds']:.0f} s{' FAILED' if r['error'] else ''} "
            f"(all done by {time.time() - t0:.0f} s)"
        )

    if jobs == 1 or len(work) == 1:
        for w in work:
            report(execute_one(*w))
    else:
        with ProcessPoolExecutor(min(jobs, len(work))) as pool:
            for r in pool.map(execute_one, *zip(*work)):
                report(r)
    return results


def executed_results(srcs: list[Path], nb_dir: Path) -> list[dict]:
    """What an earlier execution left in ``nb_dir`` (for ``--no-execute``)."""
    import nbformat

    results = []
    for src in srcs:
        path = nb_dir / f"{src.stem}.ipynb"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run without --no-execute first")
        nb = nbformat.read(path, as_version=4)
        meta = nb.metadata.get("equilib", {})
        results.append(
            {
                "name": src.stem,
                "title": title_of(nb),
                "seconds": meta.get("seconds", 0.0),
                "error": meta.get("error"),
            }
        )
    return results


# --- step 2: stage ---------------------------------------------------------------------------


def toc_files(toc_text: str) -> list[str]:
    """The documents of a ``_toc.yml`` in order: its root, then every ``file:`` entry."""
    import yaml

    toc = yaml.safe_load(toc_text)
    if not isinstance(toc, dict) or "root" not in toc:
        raise ValueError("the table of contents needs a 'root' entry (format: jb-book)")
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            for part in entry.get("parts", []) if isinstance(entry, dict) else []:
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return [str(Path(f).with_suffix("")) if f.endswith((".md", ".ipynb")) else f for f in files]


def toc_for(names: list[str]) -> str:
    """A ``_toc.yml`` listing ``names`` in order (the first is the root)."""
    lines = ["format: jb-book", f"root: {names[0]}"]
    if names[1:]:
        lines.append("chapters:")
        lines += [f"  - file: {n}" for n in names[1:]]
    return "\n".join(lines) + "\n"


def stage(nb_dir: Path, names: list[str], src_dir: Path) -> int:
    """Write the page notebooks and the table of contents into ``src_dir``.

    Returns the number of widget snapshots on the pages. With every chapter selected the book's
    own ``_toc.yml`` is copied (it must list exactly the chapters); otherwise a smaller one.
    """
    import nbformat

    listed = toc_files(TOC.read_text())
    every = [p.stem for p in chapters(None)]
    if sorted(listed) != sorted(every) or len(set(listed)) != len(listed):
        raise ValueError(
            f"{TOC} must list every chapter once; "
            f"missing {sorted(set(every) - set(listed))}, unknown {sorted(set(listed) - set(every))}"
        )
    if src_dir.exists():
        shutil.rmtree(src_dir)
    src_dir.mkdir(parents=True)
    if sorted(names) == sorted(every):
        shutil.copy(TOC, src_dir / "_toc.yml")
    else:
        (src_dir / "_toc.yml").write_text(toc_for([n for n in listed if n in names]))
    snapshots = 0
    for name in names:
        page = page_notebook(nbformat.read(nb_dir / f"{name}.ipynb", as_version=4))
        snapshots += sum(
            o.get("metadata", {}).get("equilib", {}).get("widget_snapshot", False)
            for c in page.cells
            if c.cell_type == "code"
            for o in c.outputs
        )
        nbformat.write(page, src_dir / f"{name}.ipynb")
    return snapshots


# --- step 3: render and check ----------------------------------------------------------------

CDN_HOSTS = (
    "cdn.jsdelivr.net",
    "unpkg.com",
    "cdnjs.cloudflare.com",
    "fonts.googleapis.com",
    "fonts.gstatic.com",
    "cdn.mathjax.org",
    "polyfill.io",
    "code.jquery.com",
    "plausible.io",
    "googletagmanager.com",
    "google-analytics.com",
    "thebe.readthedocs.io",
)
_REMOTE_ATTR = re.compile(
    r"<(?:script|link|img|iframe|source|audio|video|embed|object)\b[^>]*?"
    r"\b(?:src|href|data)\s*=\s*[\"']((?:https?:)?//[^\"']+)",
    flags=re.I,
)
_REMOTE_CSS = re.compile(r"(?:@import\s+|url\(\s*)[\"']?((?:https?:)?//[^\"')\s]+)", flags=re.I)
_CDN = re.compile(
    r"(?:https?:)?//(?:[\w-]+\.)*(?:" + "|".join(map(re.escape, CDN_HOSTS)) + r")[^\"'\s)]*"
)


def remote_resources(text: str, kind: str = "html") -> list[str]:
    """URLs on another host that a page, style sheet or script would load.

    ``kind`` is ``"html"`` (tags that load a resource: script, link, img, ...; plain ``<a>``
    links to papers are fine), ``"css"`` (``url(...)``, ``@import``) or ``"js"``. In every kind
    any URL on a known CDN counts too, wherever it stands (a script may load it later).
    """
    if kind not in ("html", "css", "js"):
        raise ValueError(f"kind must be 'html', 'css' or 'js', got {kind!r}")
    found = []
    if kind == "html":
        found += [m.group(1) for m in _REMOTE_ATTR.finditer(text)]
    if kind in ("html", "css"):
        found += [m.group(1) for m in _REMOTE_CSS.finditer(text)]
    found += [m.group(0) for m in _CDN.finditer(text)]
    return sorted(set(found))


_LOCAL_ASSET = re.compile(
    r"<(?:script|link)\b[^>]*?\b(?:src|href)\s*=\s*[\"'](?![a-z]+:|//|#)([^\"'?#]+\.(?:js|css))",
    flags=re.I,
)


# Addresses that a script names but a page never loads: the defaults of the speech-rule engine
# bundled in MathJax, which MathJax overrides with its own _static/mathjax/sre/mathmaps (and
# the XPath polyfill is for browsers without document.evaluate). The browser test checks that
# a page requests nothing from the network.
INERT_IN_SCRIPTS = ("/npm/speech-rule-engine@", "/npm/sre-mathmaps-ie@", "/npm/wicked-good-xpath@")


_NOT_PROSE = re.compile(r"<(pre|code|script|style)\b.*?</\1>", flags=re.S | re.I)


def stderr_outputs(nb) -> list[str]:
    """``code cell N: its first line`` for every output a code cell wrote to stderr.

    A reader sees these under the cell (a warning from a library, a traceback printed by hand),
    and so does the page of the chapter: the course should have none.
    """
    found = []
    code_cells = (c for c in nb.cells if c.cell_type == "code")
    for n, cell in enumerate(code_cells, start=1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = "".join(out.get("text", "")).strip()
                first = text.splitlines()[0] if text else "(empty)"
                found.append(f"code cell {n}: {first[:200]}")
    return found


def raw_display_math(page_html: str) -> int:
    """How many ``$$`` a page shows as text (outside code): display math MyST did not parse."""
    return _NOT_PROSE.sub("", page_html).count("$$")


def offline_problems(html_dir: Path) -> list[str]:
    """``file: url`` for every remote resource of the built pages and the files they load.

    Every page is searched, and every script and style sheet a page links to; files that no
    page links to (the MathJax components loaded on demand, the chapters' sources offered for
    download) are not.
    """
    problems = []
    assets = set()
    for page in sorted(html_dir.rglob("*.html")):
        if "_sources" in page.parts:
            continue
        text = page.read_text(encoding="utf-8", errors="replace")
        problems += [f"{page.relative_to(html_dir)}: {u}" for u in remote_resources(text, "html")]
        for m in _LOCAL_ASSET.finditer(text):
            asset = (page.parent / m.group(1)).resolve()
            if asset.is_file():
                assets.add(asset)
    for asset in sorted(assets):
        text = asset.read_text(encoding="utf-8", errors="replace")
        for url in remote_resources(text, asset.suffix[1:]):
            if asset.suffix == ".js" and any(k in url for k in INERT_IN_SCRIPTS):
                continue
            problems.append(f"{asset.relative_to(html_dir)}: {url}")
    return problems


# Sphinx warnings that mean a link of the book leads nowhere: they fail the build.
BROKEN_REFERENCE = (
    "xref_missing",
    "undefined label",
    "unknown document",
    "nonexisting document",
    "reference target not found",
)


def render(src_dir: Path, html_dir: Path, log: Path) -> int:
    """``jupyter-book build`` of the staged book; the pages end up in ``html_dir``."""
    work = src_dir.parent / "jupyter-book"
    cmd = [
        sys.executable,
        "-c",
        "from jupyter_book.cli.main import main; main()",
        "build",
        str(src_dir),
        "--config",
        str(CONFIG),
        "--toc",
        str(src_dir / "_toc.yml"),
        "--path-output",
        str(work),
        "--all",
    ]
    env = {**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    with open(log, "w") as fh:
        code = subprocess.call(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        return code
    built = work / "_build" / "html"
    if not (built / "index.html").exists():
        raise FileNotFoundError(f"jupyter-book wrote no {built / 'index.html'} (see {log})")
    if html_dir.exists():
        shutil.rmtree(html_dir)
    shutil.move(str(built), str(html_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--chapters", nargs="*", default=None, help="chapter numbers (default: all)")
    ap.add_argument("--out", default=str(BUILD / "html"), help="output folder of the pages")
    ap.add_argument("--full", action="store_true", help="execute without FAST mode")
    ap.add_argument("--jobs", type=int, default=1, help="chapters executed at once (default 1)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell")
    ap.add_argument(
        "--no-execute",
        action="store_true",
        help="render the notebooks of an earlier run in build/notebooks as they are",
    )
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    try:
        srcs = chapters(args.chapters)
    except (FileNotFoundError, ValueError) as err:
        say(f"ERROR: {err}")
        return 2
    html_dir = Path(args.out).resolve()
    nb_dir, src_dir = BUILD / "notebooks", BUILD / "book"
    fast = not args.full
    t0 = time.time()
    if args.no_execute:
        try:
            results = executed_results(srcs, nb_dir)
        except FileNotFoundError as err:
            say(f"ERROR: {err}")
            return 2
    else:
        say(f"executing {len(srcs)} chapters ({'FAST' if fast else 'full'}) into {nb_dir}")
        results = execute(srcs, nb_dir, fast, args.jobs, args.timeout)
    t_exec = time.time() - t0
    try:
        snapshots = stage(nb_dir, [s.stem for s in srcs], src_dir)
    except ValueError as err:
        say(f"ERROR: {err}")
        return 2
    log = BUILD / "jupyter-book.log"
    say(f"rendering with Jupyter Book into {html_dir} ({snapshots} widget snapshots; log: {log})")
    t1 = time.time()
    code = render(src_dir, html_dir, log)
    t_render = time.time() - t1
    if code != 0:
        say(f"FAILED: jupyter-book exited with status {code}; the end of {log}:")
        print("\n".join(log.read_text().splitlines()[-30:]), flush=True)
        return 1
    plain = ANSI.sub("", log.read_text())
    warnings = [ln for ln in plain.splitlines() if "WARNING" in ln]
    for ln in warnings:
        say(ln)
    broken_refs = [ln for ln in warnings if any(k in ln for k in BROKEN_REFERENCE)]
    (html_dir / "build.json").write_text(
        json.dumps(
            {
                "fast": fast,
                "execute_s": round(t_exec, 1),
                "render_s": round(t_render, 1),
                "chapters": results,
            },
            indent=1,
        )
    )
    problems = []
    failed = [r for r in results if r["error"]]
    for r in failed:
        problems.append(f"{r['name']} raised while executing:\n{r['error']}")
    if broken_refs:
        problems.append(f"{len(broken_refs)} broken cross-reference(s), listed above")
    missing_pages = [r["name"] for r in results if not (html_dir / f"{r['name']}.html").exists()]
    if missing_pages:
        problems.append(f"no page for {missing_pages}")
    if not (html_dir / "searchindex.js").exists():
        problems.append("no search index (searchindex.js)")
    if not (html_dir / "_static" / "mathjax" / "tex-chtml.js").exists():
        problems.append("MathJax is not served from _static/mathjax")
    import nbformat

    for r in results:
        path = nb_dir / f"{r['name']}.ipynb"
        if path.exists():
            written = stderr_outputs(nbformat.read(path, as_version=4))
            if written:
                problems.append(
                    f"{r['name']} writes to stderr, which a reader sees under the cell:\n  "
                    + "\n  ".join(written)
                )
    raw = {
        r["name"]: raw_display_math((html_dir / f"{r['name']}.html").read_text())
        for r in results
        if (html_dir / f"{r['name']}.html").exists()
    }
    raw = {name: n for name, n in raw.items() if n}
    if raw:
        problems.append(f"'$$' left as text, not typeset, in {raw}")
    remote = offline_problems(html_dir)
    if remote:
        problems.append("resources loaded from the network:\n  " + "\n  ".join(remote[:20]))
    for p in problems:
        say(f"FAILED: {p}")
    say(
        f"{'FAILED' if problems else 'OK'}: {len(results)} chapters, {len(warnings)} Sphinx "
        f"warnings; executing {t_exec:.0f} s, rendering {t_render:.0f} s; open "
        f"{html_dir / 'index.html'}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
