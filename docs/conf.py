"""Sphinx configuration of manualbp's documentation site.

Build it (from the repository root) with the one command the getting-started page gives::

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

``-W`` turns every warning into an error: a broken reference, a public name without a docstring, a docstring
that does not parse, a tutorial script that fails. ``MANUALBP_DOCS_QUICK=1`` runs the tutorials with fewer
steps (CI); every tutorial still executes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

import manualbp  # noqa: E402

project = "manualbp"
author = "the manualbp developers"
copyright = "2026, the manualbp developers"
release = manualbp.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "manualbp_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = [
    "_build",
    "_generated",
    "tutorials/README.rst",
    "auto_tutorials/*.ipynb",
    "auto_tutorials/*.py",
    "auto_tutorials/*.zip",
    "**/*.codeobj.json",
]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"manualbp {release}"

# The API reference: every public name with its docstring, in source order; members without a docstring are
# listed too, so that a missing docstring is seen (the build fails on it: manualbp_docs checks the public names).
autodoc_default_options = {"members": True, "member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "description"
autodoc_preserve_defaults = True
autoclass_content = "class"

# sphinx-gallery: the tutorials are scripts, executed at every build; their printed output and figures are
# part of the page.
sphinx_gallery_conf = {
    "examples_dirs": "tutorials",
    "gallery_dirs": "auto_tutorials",
    "filename_pattern": r"/tutorial_",
    "within_subsection_order": "FileNameSortKey",
    "only_warn_on_example_error": False,
    "abort_on_example_error": True,
    "remove_config_comments": True,
    "download_all_examples": False,
    "image_scrapers": ("matplotlib",),
    "matplotlib_animations": False,
    "capture_repr": ("_repr_html_", "__repr__"),
    "show_memory": False,
    "plot_gallery": "True",
}

os.environ.setdefault("MPLBACKEND", "agg")
nitpicky = False
autodoc_inherit_docstrings = False  # a Function's forward/backward without a docstring of its own: the class says it
