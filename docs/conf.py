"""Sphinx configuration of the flask_dill_session docs.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (or ``.ci/docs``).
"""

from __future__ import annotations

import socket
from importlib.metadata import metadata
from urllib.parse import urlsplit

from pallets_sphinx_themes import ProjectLink, get_version

# -- Project ------------------------------------------------------------------------------

project = "flask_dill_session"
copyright = "the flask_dill_session authors"
author = "the flask_dill_session authors"
release, version = get_version("flask-dill-session")

# -- General ------------------------------------------------------------------------------

default_role = "code"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx_click",
    "myst_parser",
    "pallets_sphinx_themes",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
myst_heading_anchors = 3

# Intersphinx reads each project's inventory over the network when the docs are built.
# A build without a route to a project's docs leaves links to it out (and says so) rather
# than failing: the pages are the same, only those links are missing.
_INVENTORIES = {
    "python": "https://docs.python.org/3/",
    "flask": "https://flask.palletsprojects.com/en/stable/",
    "werkzeug": "https://werkzeug.palletsprojects.com/en/stable/",
    "redis": "https://redis.readthedocs.io/en/stable/",
}


def _reachable(url: str) -> bool:
    """Whether a connection to *url*'s host opens within two seconds."""
    host = urlsplit(url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=2).close()
    except OSError:
        print(f"intersphinx: {host} cannot be reached; links to it are left out of this build")
        return False
    return True


intersphinx_mapping = {name: (url, None) for name, url in _INVENTORIES.items() if _reachable(url)}

# -- HTML ---------------------------------------------------------------------------------

html_theme = "flask"
html_theme_options = {"index_sidebar_logo": False}
_links = [
    entry.split(", ", 1) for entry in metadata("flask-dill-session").get_all("Project-URL") or []
]
html_context = {
    "project_links": [ProjectLink(title, url) for title, url in _links if title != "Documentation"]
}
html_sidebars = {
    "index": ["project.html", "localtoc.html", "searchbox.html"],
    "**": ["localtoc.html", "relations.html", "searchbox.html"],
}
singlehtml_sidebars = {"index": ["project.html", "localtoc.html"]}
html_static_path = ["_static"]
html_title = f"flask_dill_session Documentation ({version})"
html_show_sourcelink = False
