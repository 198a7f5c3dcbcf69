"""The one template of the HTML report: a page with inline CSS, no script, no network."""

from __future__ import annotations

import html
from string import Template

#: Marks a file as written by :func:`cxr_estimators.evaluation.report`; a file at the
#: report's path without it is never overwritten.
GENERATOR = "cxr_estimators evaluation report"

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="$generator">
<title>$title</title>
<style>
body { font-family: "DejaVu Sans", Arial, sans-serif; max-width: 1100px; margin: 1.5em auto;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; }
h2 { border-bottom: 2px solid #446; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #eef; }
.warn { background: #fff3cd; border-left: 5px solid #d39e00; padding: 0.5em 0.8em; }
.ok { background: #e8f5e9; border-left: 5px solid #2e7d32; padding: 0.5em 0.8em; }
.todo { background: #fdecea; }
.figures { display: flex; flex-wrap: wrap; gap: 0.8em; align-items: flex-start; }
.figures img { max-width: 520px; border: 1px solid #ddd; }
.gallery img { max-width: 260px; }
.meta { color: #555; font-size: 0.9em; }
</style>
</head>
<body>
<h1>$title</h1>
<p class="meta">$subtitle</p>
$summary
$sections
<p class="meta">Written by cxr_estimators $version. Every number on this page is also in
<code>$json_name</code>.</p>
</body>
</html>
""")


def escape(value):
    """Text for the page (HTML-escaped)."""
    return html.escape(str(value))


def number_cell(value, key, digits=3):
    """A right-aligned table cell whose ``data-json`` names the JSON value it shows."""
    if value is None or value != value:  # None or NaN
        text = "n/a"
    elif isinstance(value, int):
        text = str(value)
    else:
        text = f"{value:.{digits}f}"
    return f'<td class="num" data-json="{escape(key)}">{text}</td>'


def table(header, rows):
    """An HTML table; ``rows`` hold ready cells (``<td>...</td>``) or plain text."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(c if str(c).startswith("<td") else f"<td>{escape(c)}</td>"
                         for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
