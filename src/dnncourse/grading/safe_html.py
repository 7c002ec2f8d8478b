"""HTML that is stored or served runs no script: the feedback pages and the graded notebooks.

Two places show a student's notebook as HTML outside the sandbox: the feedback page (opened
in the student's and the instructor's browser, served by ``dnncourse serve``) and the graded
notebook kept under ``OUT/course/autograded/``, which nbgrader's formgrader renders with
nbconvert *without* sanitizing, in the instructor's Jupyter session. Markdown turns
``[x](javascript:...)`` into a link after any HTML sanitizer has looked at the source, and a
raw cell is pasted into the page as it is, so both are checked on what they *render to*:

* :func:`active_content` lists what a browser could run in a piece of HTML: script-like
  elements, ``on*`` event handlers, ``javascript:``, ``vbscript:`` and ``data:`` URLs in any
  attribute (after removing the blanks and control characters browsers ignore);
* :func:`safe_cells` shows a Markdown or raw cell with any of it as plain text instead (a
  fenced code block, or escaped) and reduces outputs to text and raster images
  (:data:`SAFE_MIME`, no metadata);
* :func:`scrub_page` removes, from a whole page, every script element, event handler and
  such URL, the page template's own included (the pages need no script).

OWASP's XSS prevention cheat sheet and the HTML standard's URL parsing (schemes compared
after stripping tabs and newlines) are the references.
"""

import functools
import html
import re

from bs4 import BeautifulSoup
from nbconvert.filters.markdown_mistune import markdown2html_mistune

SAFE_MIME = ("text/plain", "image/png", "image/jpeg")
ACTIVE_TAGS = frozenset(
    "script iframe frame frameset object embed applet base form meta link style template "
    "portal noscript animate set animatemotion animatetransform handler listener "
    "foreignobject".split()
)
BAD_URL = re.compile(r"^(javascript|vbscript|livescript|data):", re.IGNORECASE)
_IGNORED = re.compile(r"[\x00-\x20\x7f]+")


def _bad_value(value: str) -> bool:
    return bool(BAD_URL.match(_IGNORED.sub("", html.unescape(value or ""))))


def active_content(fragment: str) -> list[str]:
    """What a browser could run in ``fragment``: tags, handlers, URLs (empty when none)."""
    found = []
    for tag in BeautifulSoup(fragment, "html.parser").find_all(True):
        if tag.name.lower() in ACTIVE_TAGS:
            found.append(f"<{tag.name}>")
        for name, value in tag.attrs.items():
            values = value if isinstance(value, list) else [value]
            if name.lower().startswith("on"):
                found.append(f"{name}=")
            elif any(_bad_value(str(v)) for v in values):
                found.append(f"{name}={str(values[0])[:20]}")
    return found


def as_text(source: str) -> str:
    """Markdown that shows ``source`` as plain text (a fence longer than any in it)."""
    fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", source)), default=0))
    return f"*(shown as text: it held active content)*\n\n{fence}text\n{source}\n{fence}\n"


@functools.lru_cache(maxsize=1024)
def _active(source: str, markdown: bool) -> bool:
    return bool(active_content(markdown2html_mistune(source) if markdown else source))


def renders_active(source: str, markdown: bool) -> bool:
    """Whether a Markdown (or raw) cell's ``source`` renders to active content.

    Remembered for short sources: every student hands in the same released cells, and each
    page checks them twice (the graded notebook's cells, then the feedback page's)."""
    if len(source) > 20_000:  # a long one is checked each time, not kept
        return _active.__wrapped__(source, markdown)
    return _active(source, markdown)


def safe_cell(cell) -> None:
    """Make one cell safe to render with nbconvert, sanitizing or not (in place)."""
    if cell.cell_type == "markdown":
        if renders_active(cell.source, markdown=True):
            cell.source = as_text(cell.source)
    elif cell.cell_type == "raw":
        if renders_active(cell.source, markdown=False):  # nbconvert pastes it as it is
            cell.source = html.escape(cell.source)
    cell.get("metadata", {}).pop("attachments", None)
    cell.pop("attachments", None)
    for output in cell.get("outputs", []):
        if output.get("output_type") in ("display_data", "execute_result"):
            data = output.get("data", {})
            kept = {k: v for k, v in data.items() if k in SAFE_MIME}
            if not kept:
                kept = {"text/plain": f"[output of type {', '.join(sorted(data))} not shown]"}
            output["data"] = kept
            output["metadata"] = {}


def safe_cells(nb) -> None:
    """Every cell of ``nb`` made safe, and the notebook's widget state dropped (in place)."""
    for cell in nb.cells:
        safe_cell(cell)
    nb.metadata.pop("widgets", None)


def scrub_page(page: str, accessible: bool = False) -> str:
    """``page`` without script elements, event handlers or script/data URLs.

    With ``accessible``, first what nbconvert's ``HTMLExporter`` adds to its pages (an
    alternative text for images without one, input and output areas focusable), for
    :class:`~.feedback.FeedbackExporter`, which leaves that pass to this one.

    A tag is taken out with ``extract`` (its subtree stays whole, outside the page), so a
    tag inside it, still in the list, needs no check (bs4's ``decomposed`` searched the
    tag's whole subtree for a child named ``_decomposed``: quadratic in the page's size).
    """
    soup = BeautifulSoup(page, "html.parser")
    if accessible:  # as nbconvert's HTMLExporter.from_notebook_node
        for elem in soup.select("img:not([alt])"):
            elem.attrs["alt"] = "No description has been provided for this image"
        for elem in soup.select(".jp-Notebook div.jp-Cell-inputWrapper"):
            elem.attrs["tabindex"] = "0"
        for elem in soup.select(".jp-Notebook div.jp-OutputArea-output"):
            elem.attrs["tabindex"] = "0"
    for tag in soup.find_all(True):
        if tag.name.lower() in ACTIVE_TAGS - {"style", "meta", "link"}:
            tag.extract()
            continue
        if tag.name.lower() == "meta" and "http-equiv" in {a.lower() for a in tag.attrs}:
            tag.extract()
            continue
        for name in list(tag.attrs):
            values = tag.attrs[name] if isinstance(tag.attrs[name], list) else [tag.attrs[name]]
            if name.lower().startswith("on") or any(_bad_value(str(v)) for v in values):
                del tag.attrs[name]
    return str(soup)
