#!/usr/bin/env python3
"""Test the course in a real browser: JupyterLab + headless Chromium driven by Playwright.

Steps: convert one chapter to a notebook in a scratch folder, start JupyterLab on 127.0.0.1
with a random token (FAST mode), open the notebook in Chromium, run all cells from the Run
menu, wait until every cell has run, move the first slider of the chapter's widgets, and check
that the figure next to it changed and that the page shows no "Error displaying widget" and no
traceback. Screenshots go to ``build/browser/``.

Needs: the Debian package ``chromium`` (``apt-get install -y chromium``) and the pip package
``playwright`` in the same Python (``pip install playwright``); Playwright's own browser
download is never used. Exit status 0 on success, 1 on a failed check, 2 on a missing tool.

    python tools/browser_test.py                 # the default chapter
    python tools/browser_test.py --chapter 01-symmetry-and-groups --timeout 600
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
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
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
        f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--ServerApp.open_browser=False", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
        "jupyterlab.NeverCheckForUpdate",
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


def run_browser(url: str, nb_name: str, chromium: str, out: Path, timeout: float) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        raise FileNotFoundError(
            "the pip package 'playwright' is missing: pip install playwright "
            "(never 'playwright install': the browser is Debian's chromium)"
        ) from err
    n_code = len([c for c in json.loads((out / "root" / nb_name).read_text())["cells"]
                  if c["cell_type"] == "code"])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            say(f"opening {nb_name}")
            page.goto(url, wait_until="domcontentloaded")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
            accept_kernel_dialog(page, wait_s=10)
            page.get_by_text("Kernel status: Idle").first.wait_for(state="attached", timeout=120_000)
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
        except Exception:
            try:
                page.screenshot(path=str(out / "failure.png"), full_page=True)
            except Exception:  # noqa: BLE001 - the screenshot is a best effort
                pass
            raise
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--chapter", default=DEFAULT_CHAPTER,
                    help=f"chapter file stem under book/ (default {DEFAULT_CHAPTER})")
    ap.add_argument("--out", default=str(ROOT / "build" / "browser"),
                    help="folder for screenshots, logs and the scratch notebook")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds allowed for running all cells (default 600)")
    ap.add_argument("--chromium", default=None, help="path of the chromium binary")
    ap.add_argument("--full", action="store_true", help="run the chapter without FAST mode")
    args = ap.parse_args(argv)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        chromium = find_chromium(args.chromium)
        _, nb = prepare(args.chapter, out)
    except (FileNotFoundError, subprocess.CalledProcessError) as err:
        say(f"ERROR: {err}")
        return 2
    port, token = free_port(), secrets.token_hex(16)
    proc = start_lab(out / "root", out, port, token, fast=not args.full)
    try:
        wait_for_lab(proc, port, token, timeout=120)
        url = f"http://127.0.0.1:{port}/lab/tree/{nb.name}?token={token}"
        run_browser(url, nb.name, chromium, out, args.timeout)
    except FileNotFoundError as err:
        say(f"ERROR: {err}")
        return 2
    except CheckFailed as err:
        say(f"FAILED: {err} (screenshots in {out})")
        return 1
    except Exception as err:  # noqa: BLE001 - report any browser failure as a failed check
        say(f"FAILED: {type(err).__name__}: {err} (screenshots in {out})")
        return 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    say(f"OK: {args.chapter} ran in JupyterLab, its widgets redraw, no errors "
        f"({time.time() - t0:.0f} s; screenshots in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
