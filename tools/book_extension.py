"""Sphinx extension of the HTML edition: pages that load nothing from another host.

Loaded by ``book/_config.yml`` (``sphinx.local_extensions``). Jupyter Book 1 adds sphinx-thebe
to every book, and sphinx-thebe puts the address of thebe's script on a CDN into every page
(fetched when a reader presses a "live code" button, which this book does not show: thebe is
off in ``_config.yml``). This extension

* drops from every page each script and style sheet on another host, each inline script that
  names an address on another host, and sphinx-thebe's own files;
* after the build, keeps in ``_static/mathjax`` (copied there by sphinx-mathjax-offline) only
  the one MathJax bundle that ``mathjax_path`` names, with the components it loads from its
  folders, instead of every bundle MathJax ships (some of which name CDN addresses);
* keeps the search box where sphinx-book-theme puts it, in the sidebar: pydata-sphinx-theme
  (which it builds on) otherwise adds a header bar with a second one above every page.
"""

from __future__ import annotations

import re
from pathlib import Path

REMOTE = re.compile(r"^(?:https?:)?//", flags=re.I)
REMOTE_IN_BODY = re.compile(r"[\"'](?:https?:)?//", flags=re.I)


def _is_remote(asset) -> bool:
    """Whether a script or style sheet of a page is on another host or loads from one."""
    filename = str(getattr(asset, "filename", asset) or "")
    body = str(getattr(asset, "attributes", {}).get("body", "") or "")
    return bool(REMOTE.match(filename) or REMOTE_IN_BODY.search(body) or "sphinx-thebe" in filename)


def drop_remote_assets(app, pagename, templatename, context, doctree) -> None:
    for key in ("script_files", "css_files"):
        files = context.get(key)
        if files is not None:
            files[:] = [f for f in files if not _is_remote(f)]


def prune_mathjax(app, exc) -> None:
    """Keep only the MathJax bundle the pages load (and the folders of components it loads)."""
    if exc is not None or app.builder.format != "html":
        return
    folder = Path(app.outdir) / "_static" / "mathjax"
    used = Path(str(app.config.mathjax_path)).name
    if not (folder / used).exists():
        return
    for bundle in folder.glob("*.js"):
        if bundle.name != used:
            bundle.unlink()


def one_search_box(app, config) -> None:
    config.html_theme_options.setdefault("navbar_persistent", [])


def setup(app):
    app.connect("config-inited", one_search_box)
    # After sphinx.ext.mathjax and sphinx-thebe have added their files (priority 500).
    app.connect("html-page-context", drop_remote_assets, priority=900)
    # After sphinx-mathjax-offline has copied MathJax (build-finished, priority 500).
    app.connect("build-finished", prune_mathjax, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
