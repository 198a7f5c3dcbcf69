"""Sphinx configuration of the cxr_estimators documentation (``make docs``).

The build is offline: no extension downloads anything, the examples gallery is rendered
without running the examples (their figures are the committed ones under ``_static``), and
intersphinx reads only the inventory files kept in ``docs/_inventories``
(``docs/_inventories/README.md`` says where each comes from).
"""

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # the checkout's package, not an installed copy

import cxr_estimators  # noqa: E402

project = "cxr_estimators"
author = "the cxr_estimators developers"
copyright = "the cxr_estimators developers, BSD-3-Clause"
version = release = cxr_estimators.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_inventories", "_templates", "**.ipynb_checkpoints",
                    "auto_examples/*.ipynb", "auto_examples/**/*.ipynb"]
templates_path = ["_templates"]
default_role = "literal"  # single backticks in the Markdown/reST guides are code

# Every cross-reference must resolve (with -W a broken one fails the build), except those
# to projects without an inventory in _inventories and to private modules, which the
# docstrings name for the design but the site does not document.
nitpicky = True
NO_INVENTORY = ("torch", "torchvision", "skorch", "numpy", "scipy", "matplotlib", "PIL",
                "pydicom", "dask", "distributed", "ray", "timm", "torchxrayvision",
                "safetensors", "pandas", "joblib", "tqdm")
nitpick_ignore_regex = [
    (r"py:.*", rf"({'|'.join(NO_INVENTORY)})(\..*)?"),
    (r"py:.*", r"(.*\.)?_[a-z]\w*(\..*)?"),  # private modules, functions and methods
]

# -- API reference: autosummary over each public module's __all__ --------------------
autosummary_generate = True
autosummary_ignore_module_all = False  # a module's __all__ is its public API
autosummary_imported_members = False
autodoc_typehints = "none"  # the numpydoc "Parameters" tables carry the types
autodoc_member_order = "groupwise"
autodoc_inherit_docstrings = False  # sklearn's own methods keep their docs on sklearn's site
numpydoc_show_class_members = False  # the class template lists the members itself
numpydoc_class_members_toctree = False
numpydoc_validation_checks = set()

# -- Markdown guides (myst) -------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # `page.md#a-heading` links resolve, as on GitHub
suppress_warnings = ["myst.header"]  # the guides start at "# Title" then use "##"

# -- Examples gallery: rendered, never executed ------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": ["../examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"(^|/)_[^/]*\.py$",  # _shared.py and other helpers
    "plot_gallery": "False",  # a build does not train models
    "download_all_examples": False,
    "within_subsection_order": "FileNameSortKey",
    "write_computation_times": False,
    "remove_config_comments": True,
}

# -- Cross-links to Python and scikit-learn (offline inventories) -------------------------
INVENTORIES = DOCS / "_inventories"
intersphinx_mapping = {
    "python": ("https://docs.python.org/3.11/", str(INVENTORIES / "python.inv")),
    "sklearn": ("https://scikit-learn.org/stable/", str(INVENTORIES / "sklearn.inv")),
}
intersphinx_timeout = 1

# -- HTML -----------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = "cxr_estimators"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
toc_object_entries_show_parents = "hide"  # "fit()", not "CXRClassifier.fit()", in page TOCs
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "header_links_before_dropdown": 6,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"index": [], "auto_examples/**": []}
html_show_sourcelink = False
html_copy_source = False

# -- Names the package re-exports (documented once, under ``cxr_estimators``) -----------
TOPLEVEL = [name for name in cxr_estimators.__all__
            if not isinstance(getattr(cxr_estimators, name), type(sys))]
SUBMODULES = [name for name in cxr_estimators.__all__
              if isinstance(getattr(cxr_estimators, name), type(sys))]
autosummary_context = {"toplevel": TOPLEVEL, "submodules": SUBMODULES}


def _check_api_index(app):
    """Fail the build (a warning under -W) when a public submodule has no API page."""
    from sphinx.util import logging

    listed = (DOCS / "api" / "index.rst").read_text()
    for name in cxr_estimators.__all__:
        if (isinstance(getattr(cxr_estimators, name), type(sys))
                and f"cxr_estimators.{name}\n" not in listed):
            logging.getLogger(__name__).warning(
                "cxr_estimators.%s is public (cxr_estimators.__all__) but has no line in "
                "docs/api/index.rst", name)


def _exists_in_package(target, context):
    """Whether ``target`` names something in cxr_estimators, looked up from the docstring's
    module ``context``, its parents, or any loaded cxr_estimators module."""
    import importlib

    bases = [""]
    while context:
        bases.append(context)
        context = context.rpartition(".")[0]
    bases += [name for name in sorted(sys.modules) if name.startswith("cxr_estimators")]
    for base in bases:
        parts = (f"{base}.{target}" if base else target).split(".")
        if parts[0] != "cxr_estimators":
            continue
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                break
            return True
    return False


def _resolve_short_name(app, env, node, contnode):
    """A reference that Sphinx could not resolve, made in a cxr_estimators docstring:

    * a short name (``:func:`save```, ``:class:`CXRClassifier```) in a docstring shown away
      from its module's page (a re-exported class, a module summary in the API index)
      links to the one documented object of that name;
    * a name that exists in the package but has no page of its own (a submodule of a
      subpackage, a constant named in prose) stays plain text;
    * anything else (a typo, a renamed or removed function) is left to Sphinx, which
      reports it: with -W and nitpicky, a broken reference fails the build.
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    domain = env.get_domain("py")
    matches = [name for name in domain.objects
               if name.startswith("cxr_estimators") and name.endswith("." + target)
               and not domain.objects[name].aliased]  # autodoc's canonical-name twins
    if len(matches) == 1:
        found = domain.resolve_any_xref(env, node["refdoc"], app.builder, matches[0], node,
                                        contnode)
        if found:
            return found[0][1]
    if _exists_in_package(target, node.get("py:module") or ""):
        return contnode
    return None


def setup(app):
    app.connect("builder-inited", _check_api_index)
    app.connect("missing-reference", _resolve_short_name)
