#!/usr/bin/env python3
"""Test the course in a real browser: headless Chromium driven by Playwright.

Two parts:

* ``lab``: convert one chapter to a notebook in a scratch folder, start JupyterLab on 127.0.0.1
  with a random token (FAST mode), open the notebook in Chromium, run all cells from the Run
  menu, wait until every cell has run, move the first slider of the chapter's widgets, and
  check that the figure next to it changed and that the page shows no "Error displaying widget"
  and no traceback.
* ``html``: open a page of the HTML edition (``build/html``, from ``python3 course.py html``)
  from ``file://`` with every other request refused, and check that nothing was requested from
  the network, that every formula is typeset by MathJax (no raw ``$$``, no TeX error), that
  every figure loaded (``naturalWidth > 0``), that the page has a search box, and that the
  search page finds a word of the chapter.

Screenshots go to ``build/browser/``. By default both parts run, the ``html`` part only when
the HTML edition has been built; ``--parts`` chooses.

Needs: the Debian package ``chromium`` (``apt-get install -y chromium``) and the pip package
``playwright`` in the same Python (``pip install playwright``); Playwright's own browser
download is never used. Exit status 0 on success, 1 on a failed check, 2 on a missing tool.

    python tools/browser_test.py                 # the default chapter, and the HTML edition
    python tools/browser_test.py --chapter 01-symmetry-and-groups --timeout 600
    python tools/browser_test.py --parts html --page 05-marginal-likelihood
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The chapter opened by default: the one with the richest widgets (prior explorer with an epoch
# slider, trained-connectivity explorer). Its training runs go through equilib.cache, so after
# the test suite has executed the chapter once, the browser run mostly loads cached results.
DEFAULT_CHAPTER = "07-learning-layerwise-equivariance"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
ERROR_TEXTS = ["Error displaying widget", "Traceback (most recent call last)"]


class CheckFailed(Exception):
    """A browser check did not hold."""


def say(msg: str) -> None:
    print(f"[browser] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chromium(explicit: str | None) -> str:
    for cand in [explicit, os.environ.get("CHROMIUM"), "chromium", "chromium-browser"]:
        if cand and shutil.which(cand):
            return shutil.which(cand)
    raise FileNotFoundError(
        "no chromium found on PATH; install Debian's: apt-get update && apt-get install -y chromium"
    )


def prepare(chapter: str, out: Path) -> tuple[Path, Path]:
    """Write the chapter as a notebook into a scratch Jupyter root; lab settings beside it."""
    src = ROOT / "book" / f"{chapter}.md"
    if not src.exists():
        names = sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]-*.md"))
        raise FileNotFoundError(f"no chapter book/{chapter}.md; chapters are: {names}")
    for old in out.glob("*.png"):  # screenshots of an earlier run
        old.unlink()
    root = out / "root"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    nb = root / f"{chapter}.ipynb"
    subprocess.run(
        [sys.executable, "-m", "jupytext", "--to", "ipynb", "--output", str(nb), str(src)],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    # Settings: no autosave (never write back), every cell in the DOM (no windowing).
    settings = out / "lab-settings"
    for plugin, values in {
        "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false"},
    }.items():
        pkg, name = plugin.rsplit("/", 1)
        path = settings / pkg / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return root, nb


def start_lab(root: Path, out: Path, port: int, token: str, fast: bool) -> subprocess.Popen:
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(out / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(out / "lab-workspaces"),
        "EQUILIB_FAST": "1" if fast else "0",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
    }
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.open_browser=False",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(out / "jupyterlab.log", "w")  # noqa: SIM115 - closed with the process
    say(f"starting JupyterLab on 127.0.0.1:{port} (log: {out / 'jupyterlab.log'})")
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for_lab(proc: subprocess.Popen, port: int, token: str, timeout: float) -> None:
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise CheckFailed(f"JupyterLab exited early with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise CheckFailed(f"JupyterLab did not answer on port {port} within {timeout:.0f} s")


def page_errors(page) -> list[str]:
    """Error texts visible anywhere in the notebook."""
    body = page.locator(".jp-Notebook").inner_text()
    return [t for t in ERROR_TEXTS if t in body]


def accept_kernel_dialog(page, wait_s: float = 5.0) -> None:
    """Answer JupyterLab's "Select Kernel" dialog (if it shows) with the proposed kernel."""
    end = time.time() + wait_s
    while time.time() < end:
        dialog = page.locator(".jp-Dialog")
        if dialog.count() and dialog.first.is_visible():
            say("answering the kernel dialog")
            dialog.first.get_by_role("button", name="Select").click()
            return
        time.sleep(0.25)


def wait_all_run(page, n_code: int, timeout: float, start_timeout: float = 180.0) -> None:
    """Until every code cell shows an execution count and none is running (``[*]``)."""
    t0 = time.time()
    end = t0 + timeout
    last = ""
    while time.time() < end:
        accept_kernel_dialog(page, wait_s=0)
        prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
        done = [p for p in prompts if p.strip() not in ("", "[ ]:", "[*]:")]
        running = sum("[*]" in p for p in prompts)
        state = f"{len(done)}/{n_code} cells done, {running} running"
        if state != last:
            say(state)
            last = state
        errors = page_errors(page)
        if errors:
            raise CheckFailed(f"the notebook shows {errors} while running")
        if len(done) >= n_code and running == 0:
            return
        if not done and not running and time.time() - t0 > start_timeout:
            raise CheckFailed(f"no cell started running within {start_timeout:.0f} s")
        time.sleep(1.0)
    raise CheckFailed(f"cells still running after {timeout:.0f} s ({last})")


def figure_sources(cell) -> list[str]:
    """The image data of every figure in a cell's output (``img`` sources)."""
    return cell.locator(".jp-OutputArea img").evaluate_all("els => els.map(e => e.src)")


def move_slider_and_check(page, out: Path, timeout: float) -> str:
    """Move the first slider; the figure in the same cell must change. Returns its label."""
    sliders = page.locator(".jp-OutputArea .widget-slider")
    if sliders.count() == 0:
        raise CheckFailed("the chapter shows no slider widget after running all cells")
    slider = sliders.first
    label = slider.locator(".widget-label").first.inner_text().strip()
    cell = slider.locator("xpath=ancestor::div[contains(@class, 'jp-CodeCell')]").first
    cell.scroll_into_view_if_needed()
    before = figure_sources(cell)
    if not before:
        raise CheckFailed(f"no figure next to the slider {label!r} to compare")
    readout = slider.locator(".widget-readout").first
    value_before = readout.inner_text().strip()
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    for key in ("ArrowRight", "ArrowLeft"):  # left when the slider starts at its maximum
        for _ in range(3):
            handle.press(key)
        time.sleep(1.0)
        if readout.inner_text().strip() != value_before:
            break
    end = time.time() + timeout
    while time.time() < end:
        after = figure_sources(cell)
        if after and after != before:
            settle = time.time() + 15  # let the redraws of the remaining key presses finish
            while time.time() < settle:
                time.sleep(1.5)
                latest = figure_sources(cell)
                if latest == after:
                    break
                after = latest
            value_after = readout.inner_text().strip()
            say(f"slider {label!r}: {value_before} -> {value_after}; the figure changed")
            if value_after == value_before:
                raise CheckFailed(f"the slider {label!r} readout did not move")
            cell.screenshot(path=str(out / "after-slider.png"))
            return label
        time.sleep(0.5)
    raise CheckFailed(f"moving the slider {label!r} did not change the figure in {timeout:.0f} s")


@contextmanager
def screenshot_on_failure(page, path: Path):
    """Save a full-page screenshot to ``path`` if the block raises, then re-raise."""
    try:
        yield
    except Exception:
        try:
            page.screenshot(path=str(path), full_page=True)
        except Exception:  # noqa: BLE001 - the screenshot is a best effort
            pass
        raise


def run_browser(url: str, nb_name: str, chromium: str, out: Path, timeout: float) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        raise FileNotFoundError(
            "the pip package 'playwright' is missing: pip install playwright "
            "(never 'playwright install': the browser is Debian's chromium)"
        ) from err
    n_code = len(
        [
            c
            for c in json.loads((out / "root" / nb_name).read_text())["cells"]
            if c["cell_type"] == "code"
        ]
    )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            with screenshot_on_failure(page, out / "failure.png"):
                page.set_default_timeout(60_000)
                say(f"opening {nb_name}")
                page.goto(url, wait_until="domcontentloaded")
                page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
                accept_kernel_dialog(page, wait_s=10)
                page.get_by_text("Kernel status: Idle").first.wait_for(
                    state="attached", timeout=120_000
                )
                page.screenshot(path=str(out / "opened.png"))
                say(f"running all {n_code} code cells")
                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_role("menuitem", name="Run All Cells", exact=False).first.click()
                wait_all_run(page, n_code, timeout)
                page.screenshot(path=str(out / "ran-all.png"), full_page=True)
                errors = page_errors(page)
                if errors:
                    raise CheckFailed(f"after running all cells the notebook shows {errors}")
                move_slider_and_check(page, out, timeout=60)
                errors = page_errors(page)
                if errors:
                    raise CheckFailed(f"after moving the slider the notebook shows {errors}")
                page.screenshot(path=str(out / "final.png"), full_page=True)
        finally:
            browser.close()


# --- the HTML edition ------------------------------------------------------------------------

HTML_DIR = ROOT / "build" / "html"


def default_page(html_dir: Path) -> str:
    """The built chapter page with the most formulas (elements of class ``math``)."""
    built = sorted(html_dir.glob("[0-9][0-9]-*.html"))
    if not built:
        raise FileNotFoundError(
            f"no chapter pages in {html_dir}: build the HTML edition with `python3 course.py html`"
        )

    def formulas(page: Path) -> int:
        return len(
            re.findall(r'class="math[ "]', page.read_text(encoding="utf-8", errors="replace"))
        )

    return max(built, key=lambda page: (formulas(page), page.name)).stem


def search_word(html_dir: Path, page: str) -> str:
    """A long word from the page's title, to look up with the book's search."""
    text = (html_dir / f"{page}.html").read_text(encoding="utf-8", errors="replace")
    title = text.split("<title>", 1)[-1].split("</title>", 1)[0]
    title = re.split(r"&#8212;|\u2014", title)[0]  # the chapter's, without the book's title
    words = sorted((w for w in title.replace("-", " ").split() if w.isalpha()), key=len)
    if not words:
        raise CheckFailed(f"the page {page}.html has no title word to search for")
    return words[-1].lower()


PAGE_CHECKS_JS = """() => {
    const main = document.querySelector('main') || document.body;
    const prose = main.cloneNode(true);
    prose.querySelectorAll('pre, code, .cell_input, .cell_output, script, style')
         .forEach(e => e.remove());
    const maths = Array.from(main.querySelectorAll('.math'));
    return {
        maths: maths.length,
        typeset: maths.filter(m => m.querySelector('mjx-container')).length,
        texErrors: main.querySelectorAll('mjx-merror').length,
        rawDollars: (prose.innerText.match(/\\$\\$/g) || []).length,
        images: Array.from(main.querySelectorAll('img')).map(
            i => ({src: i.getAttribute('src'), width: i.naturalWidth, complete: i.complete})),
        searchBoxes: document.querySelectorAll(
            'form.bd-search input[name="q"], input[type="search"]').length,
    };
}"""


def check_html_page(html_dir: Path, page_name: str, chromium: str, out: Path) -> None:
    """Open one page of the HTML edition with the network off and check what a reader sees."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        raise FileNotFoundError(
            "the pip package 'playwright' is missing: pip install playwright "
            "(never 'playwright install': the browser is Debian's chromium)"
        ) from err
    page_file = html_dir / f"{page_name}.html"
    if not page_file.exists():
        names = sorted(p.stem for p in html_dir.glob("[0-9][0-9]-*.html"))
        raise FileNotFoundError(f"no page {page_file}; built chapter pages: {names}")
    remote: list[str] = []

    def refuse_remote(route) -> None:
        url = route.request.url
        if url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            remote.append(url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.route("**/*", refuse_remote)
            page = context.new_page()
            page.set_default_timeout(60_000)
            with screenshot_on_failure(page, out / "html-failure.png"):
                say(
                    f"opening {page_file.relative_to(ROOT) if page_file.is_relative_to(ROOT) else page_file}"
                )
                page.goto(page_file.as_uri(), wait_until="load")
                if page.locator("main .math").count() == 0:
                    raise CheckFailed(f"{page_name} has no formula to check: pick a page with math")
                try:
                    page.wait_for_function(
                        "() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                        timeout=30_000,
                    )
                except Exception as err:  # noqa: BLE001 - Playwright's timeout, reported plainly
                    raise CheckFailed(
                        f"MathJax did not start on {page_name} within 30 s (requests refused: "
                        f"{sorted(set(remote))})"
                    ) from err
                page.evaluate("() => MathJax.startup.promise")
                page.wait_for_function(
                    "() => Array.from(document.querySelectorAll('main img')).every(i => i.complete)"
                )
                facts = page.evaluate(PAGE_CHECKS_JS)
                page.screenshot(path=str(out / "html-page.png"))
                for selector, shot in (
                    ("main div.math", "html-math.png"),
                    ("main .cell_output img", "html-figure.png"),
                    ("main p:has-text('A widget: here the figure')", "html-widget.png"),
                ):
                    first = page.locator(selector).first
                    if first.count():
                        first.evaluate("e => e.scrollIntoView({block: 'center'})")
                        page.screenshot(path=str(out / shot))
                broken = [i["src"] for i in facts["images"] if not i["width"]]
                say(
                    f"{page_name}: {facts['typeset']}/{facts['maths']} formulas typeset, "
                    f"{len(facts['images'])} figures ({len(broken)} broken), "
                    f"{facts['searchBoxes']} search box(es), {len(remote)} network requests"
                )
                if facts["typeset"] != facts["maths"]:
                    raise CheckFailed(
                        f"only {facts['typeset']} of {facts['maths']} formulas typeset"
                    )
                if facts["texErrors"]:
                    raise CheckFailed(
                        f"MathJax shows {facts['texErrors']} TeX error(s) on {page_name}"
                    )
                if facts["rawDollars"]:
                    raise CheckFailed(
                        f"{facts['rawDollars']} raw '$$' left in the text of {page_name}"
                    )
                if not facts["images"]:
                    raise CheckFailed(f"{page_name} shows no figure")
                if broken:
                    raise CheckFailed(f"figures that did not load: {broken}")
                if not facts["searchBoxes"]:
                    raise CheckFailed(f"{page_name} has no search box")
                word = search_word(html_dir, page_name)
                query = urllib.parse.urlencode({"q": word})
                page.goto(f"{(html_dir / 'search.html').as_uri()}?{query}", wait_until="load")
                hits = page.locator("#search-results li, ul.search li")
                hits.first.wait_for(timeout=30_000)
                links = hits.locator("a").evaluate_all(
                    "els => els.map(e => e.getAttribute('href'))"
                )
                page.screenshot(path=str(out / "html-search.png"))
                say(f"searching {word!r}: {hits.count()} results")
                if not any(page_name in (h or "") for h in links):
                    raise CheckFailed(f"searching {word!r} does not find {page_name}: {links}")
                if remote:
                    raise CheckFailed(f"the page requested from the network: {sorted(set(remote))}")
        finally:
            browser.close()


def lab_part(args, chromium: str, out: Path) -> int:
    """Run a chapter in JupyterLab and move a slider; the exit status of this part."""
    t0 = time.time()
    try:
        _, nb = prepare(args.chapter, out)
    except (FileNotFoundError, subprocess.CalledProcessError) as err:
        say(f"ERROR: {err}")
        return 2
    port, token = free_port(), secrets.token_hex(16)
    proc = start_lab(out / "root", out, port, token, fast=not args.full)

    def check():
        wait_for_lab(proc, port, token, timeout=120)
        url = f"http://127.0.0.1:{port}/lab/tree/{nb.name}?token={token}"
        run_browser(url, nb.name, chromium, out, args.timeout)

    try:
        status = checked(check, out)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    if status == 0:
        say(
            f"OK: {args.chapter} ran in JupyterLab, its widgets redraw, no errors "
            f"({time.time() - t0:.0f} s; screenshots in {out})"
        )
    return status


def checked(check, out: Path) -> int:
    """Run one part's ``check()``: 0 if it passed, 2 for a missing file, 1 for a failed check
    (any browser error counts as one), with the reason said."""
    try:
        check()
    except FileNotFoundError as err:
        say(f"ERROR: {err}")
        return 2
    except CheckFailed as err:
        say(f"FAILED: {err} (screenshots in {out})")
        return 1
    except Exception as err:  # noqa: BLE001 - report any browser failure as a failed check
        say(f"FAILED: {type(err).__name__}: {err} (screenshots in {out})")
        return 1
    return 0


def html_part(args, chromium: str, out: Path) -> int:
    """Open a page of the HTML edition offline and check it; the exit status of this part."""
    t0 = time.time()
    html_dir = Path(args.html_dir).resolve()
    page = None

    def check():
        nonlocal page
        page = args.page or default_page(html_dir)
        check_html_page(html_dir, page, chromium, out)

    status = checked(check, out)
    if status == 0:
        say(
            f"OK: {page}.html offline shows typeset formulas, its figures and a working search "
            f"({time.time() - t0:.0f} s; screenshots in {out})"
        )
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--parts",
        nargs="+",
        choices=["lab", "html"],
        default=None,
        help="what to test (default: lab, and html when build/html exists)",
    )
    ap.add_argument(
        "--chapter",
        default=DEFAULT_CHAPTER,
        help=f"lab: chapter file stem under book/ (default {DEFAULT_CHAPTER})",
    )
    ap.add_argument(
        "--html-dir",
        default=str(HTML_DIR),
        help="html: the built HTML edition (default build/html)",
    )
    ap.add_argument(
        "--page",
        default=None,
        help="html: chapter page to open (default: the one with the most formulas)",
    )
    ap.add_argument(
        "--out",
        default=str(ROOT / "build" / "browser"),
        help="folder for screenshots, logs and the scratch notebook",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="lab: seconds allowed for running all cells (default 600)",
    )
    ap.add_argument("--chromium", default=None, help="path of the chromium binary")
    ap.add_argument("--full", action="store_true", help="lab: run the chapter without FAST mode")
    args = ap.parse_args(argv)

    parts = args.parts
    if parts is None:
        parts = ["lab"]
        if (Path(args.html_dir) / "index.html").exists():
            parts.append("html")
        else:
            say(
                f"no HTML edition in {args.html_dir}: its check is skipped "
                "(build it with `python3 course.py html`)"
            )
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        chromium = find_chromium(args.chromium)
    except FileNotFoundError as err:
        say(f"ERROR: {err}")
        return 2
    codes = []
    if "lab" in parts:
        codes.append(lab_part(args, chromium, out))
    if "html" in parts:
        codes.append(html_part(args, chromium, out))
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
