"""Write ``sklearn.inv``: an intersphinx inventory of the *installed* scikit-learn.

The docs build has no network, so intersphinx cannot download scikit-learn's
``objects.inv``. This script builds one from the installed package's public objects, with
the page layout scikit-learn's own autosummary produces (checked against the inventory of
Debian's python-sklearn-doc 1.2.1, where every public class, function and method follows
it): ``modules/generated/<module>.<Name>.html#<module>.<Name>``, methods as anchors on
their class's page. Names that differ from another name of their module only by case
(``dbscan`` / ``DBSCAN``) are left out: scikit-learn gives those a different file name.
Run it again after upgrading scikit-learn:
``python docs/_inventories/make_sklearn_inventory.py``.
"""

import importlib
import inspect
import zlib
from pathlib import Path

import sklearn

#: The user-guide label and glossary term that scikit-learn's generated
#: ``set_*_request`` docstrings (on our estimators' pages) reference; their addresses are
#: those of scikit-learn's published pages.
LABELS = {"metadata_routing": ("metadata_routing.html#metadata-routing", "Metadata Routing")}
TERMS = {"meta-estimator": "glossary.html#term-meta-estimator"}


#: Documented modules that ``sklearn.__all__`` does not list.
ALSO = ("base",)
#: Subpackages that are not part of the documented API.
SKIP = ("experimental", "externals", "utils")


def public_names(module):
    """``__all__``, or for the few modules without one (sklearn.calibration, dummy, ...)
    the public classes and functions defined in the module or its private submodules."""
    if hasattr(module, "__all__"):
        return [n for n in module.__all__ if not n.startswith("_")]
    return [n for n, obj in vars(module).items()
            if not n.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
            and getattr(obj, "__module__", "").startswith(module.__name__)]


def documented():
    """(module, public names) for sklearn itself and each public subpackage."""
    yield sklearn, [n for n in sklearn.__all__
                    if not n.startswith("_") and not inspect.ismodule(getattr(sklearn, n, None))
                    and n not in SKIP]
    for name in sorted({*sklearn.__all__, *ALSO}):
        if name.startswith("_") or name in SKIP:
            continue
        try:
            module = importlib.import_module(f"sklearn.{name}")
        except ImportError:  # a function such as sklearn.clone, listed above
            continue
        yield module, public_names(module)


def entries():
    for module, names in documented():
        lower = [n.lower() for n in names]
        for name in names:
            if lower.count(name.lower()) > 1:
                continue
            try:
                obj = getattr(module, name, None)
            except ImportError:  # experimental estimators need an enable_* import
                continue
            full = f"{module.__name__}.{name}"
            page = f"modules/generated/{full}.html"
            if inspect.isclass(obj):
                yield full, "py:class", page
                for attr, value in vars(obj).items():
                    if not attr.startswith("_") and inspect.isfunction(value):
                        yield f"{full}.{attr}", "py:method", page
            elif inspect.isfunction(obj):
                yield full, "py:function", page


def main():
    lines = [f"{name} {role} 1 {page}#$ -" for name, role, page in sorted(set(entries()))]
    lines += [f"{label} std:label -1 {uri} {title}" for label, (uri, title) in LABELS.items()]
    lines += [f"{term} std:term -1 {uri} -" for term, uri in TERMS.items()]
    header = ("# Sphinx inventory version 2\n# Project: scikit-learn\n"
              f"# Version: {sklearn.__version__}\n"
              "# The remainder of this file is compressed using zlib.\n")
    out = Path(__file__).with_name("sklearn.inv")
    out.write_bytes(header.encode() + zlib.compress("\n".join(lines).encode() + b"\n"))
    print(f"{out}: {len(lines)} entries from scikit-learn {sklearn.__version__}")


if __name__ == "__main__":
    main()
