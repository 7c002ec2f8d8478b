"""Feedback pages: nbgrader's feedback template, showing only what the grader wrote.

nbgrader's ``generate_feedback`` renders the *autograded* notebook, whose test cells hold
the hidden tests again (``OverwriteCells`` put them back). :class:`RedactTests` therefore

* replaces each test cell's source with its released (visible) version;
* replaces its outputs with the trusted verdict (:class:`~dnncourse.grading.protocol.Check`):
  points and the message the worker wrote, never anything the student's code printed or
  raised (a function under test can read its caller's source with ``linecache`` and print
  it, or stash it and show it later);
* drops the outputs of every other code cell for the same reason: a display can be updated
  later from student code that saw the hidden tests. Students have their outputs in their
  own notebook.

:class:`Scores` then does what nbgrader's ``GetGrades`` does, from the checks instead of the
gradebook (a worker has none), and the ``feedback`` HTML template runs. Pages are returned
as text: only the client writes them.

Everything a student's notebook puts into the page is student data, and the page is opened
by the student's browser (and the instructor's): :class:`SafeOutputs` keeps only plain text
and raster images of any output that is left (no HTML, JavaScript, SVG, Markdown, LaTeX or
widget state) and shows a Markdown or raw cell that would render to something active as
text (:mod:`~dnncourse.grading.safe_html`: a ``javascript:`` link survives a sanitizer of
the Markdown source), nbconvert's ``SanitizeHTML`` cleans the Markdown and raw cells with
bleach, and the finished page is scrubbed of every script, event handler and
``javascript:``/``data:`` URL, the template's own scripts included, so nothing in a feedback
page runs.
"""

import html
from pathlib import Path

from nbconvert.exporters import HTMLExporter, TemplateExporter
from nbconvert.filters.highlight import Highlight2HTML
from nbconvert.filters.widgetsdatatypefilter import WidgetsDataTypeFilter
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor, Preprocessor
from nbconvert.preprocessors.sanitize import SanitizeHTML
from nbformat.v4 import new_output
from nbgrader import utils as nbutils
from traitlets import Dict
from traitlets.config import Config

from .protocol import Check
from .safe_html import safe_cell, scrub_page


class SafeOutputs(Preprocessor):
    """Outputs reduced to escaped text and raster images; active Markdown shown as text."""

    def preprocess_cell(self, cell, resources, index):
        safe_cell(cell)
        return cell, resources


def verdict_output(points: float, max_points: float, passed: bool, message: str):
    """The one output a test cell shows in the feedback: the trusted verdict."""
    if passed:
        return new_output(
            "stream",
            name="stdout",
            text=f"hidden tests: {points:g}/{max_points:g} points, {message}\n",
        )
    text = f"{points:g}/{max_points:g} points, {message}"
    return new_output(
        "error", ename="HiddenTestFailed", evalue=text, traceback=[f"HiddenTestFailed: {text}"]
    )


class RedactTests(Preprocessor):
    """Test cells as released with the trusted verdict; no output of the student's code."""

    released = Dict(help="grade_id -> source of the released test cell")
    checks = Dict(help="grade_id -> (points, max_points, passed, message) from the verdict")

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        if nbutils.is_grade(cell) and not nbutils.is_solution(cell):
            gid = cell.metadata.nbgrader["grade_id"]
            cell.source = self.released.get(gid, "# (test code not shown)")
            check = self.checks.get(gid)
            if check is None:
                max_points = float(cell.metadata.nbgrader.get("points", 0) or 0)
                check = (0.0, max_points, False, "not graded")
            cell.outputs = [verdict_output(*check)]
        else:
            cell.outputs = []
        return cell, resources


class Scores(Preprocessor):
    """nbgrader's ``GetGrades`` without a gradebook: score and points of each grade cell."""

    points = Dict(help="grade_id -> [score, max_score]")

    def preprocess(self, nb, resources):
        nb, resources = super().preprocess(nb, resources)
        scores = list(self.points.values())
        resources["nbgrader"]["score"] = sum(s for s, _ in scores)
        resources["nbgrader"]["max_score"] = sum(m for _, m in scores)
        resources["nbgrader"]["late_penalty"] = 0
        return nb, resources

    def preprocess_cell(self, cell, resources, index):
        if nbutils.is_solution(cell) or nbutils.is_task(cell):
            cell.metadata.nbgrader["comment"] = None
        if nbutils.is_grade(cell) or nbutils.is_task(cell):
            gid = cell.metadata.nbgrader["grade_id"]
            score, points = self.points.get(gid, (0.0, cell.metadata.nbgrader.get("points", 0)))
            cell.metadata.nbgrader["score"] = score
            cell.metadata.nbgrader["points"] = points
        return cell, resources


class FeedbackExporter(HTMLExporter):
    """nbconvert's ``HTMLExporter`` whose own pass over the finished page (alternative text
    for images, focusable cells) is made in :func:`scrub_page`'s parse: the page (some 2,000
    tags, most of them the highlighted code) is parsed and written once, not twice."""

    def from_notebook_node(self, nb, resources=None, **kw):
        # HTMLExporter.from_notebook_node up to its BeautifulSoup pass, which scrub_page makes
        langinfo = nb.metadata.get("language_info", {})
        lexer = langinfo.get("pygments_lexer", langinfo.get("name", None))
        highlight_code = self.filters.get(
            "highlight_code", Highlight2HTML(pygments_lexer=lexer, parent=self)
        )
        resources = self._init_resources(resources)
        filter_data_type = WidgetsDataTypeFilter(
            notebook_metadata=self._nb_metadata, parent=self, resources=resources
        )
        self.register_filter("highlight_code", highlight_code)
        self.register_filter("filter_data_type", filter_data_type)
        page, resources = TemplateExporter.from_notebook_node(self, nb, resources, **kw)
        return scrub_page(page, accessible=True), resources


def exporter() -> tuple[HTMLExporter, RedactTests, Scores]:
    """nbconvert's HTML exporter set up like ``nbgrader generate_feedback``; its two
    preprocessors of ours, to be given each notebook's released tests and points."""
    import nbgrader

    base = Path(nbgrader.__file__).parent / "server_extensions" / "formgrader"
    config = Config()
    config.HTMLExporter.template_name = "feedback"
    config.HTMLExporter.extra_template_basedirs = [str(base / "templates")]
    config.HTMLExporter.extra_template_paths = [
        str(base / "static" / "node_modules" / "bootstrap" / "dist" / "css")
    ]
    config.HTMLExporter.sanitize_html = True
    # the notebook validated once, after the last preprocessor, not after each of them
    # (about a tenth of a page's time)
    config.HTMLExporter.optimistic_validation = True
    html_exporter = FeedbackExporter(config=config)
    html_exporter.register_preprocessor(SanitizeHTML(), enabled=True)  # Markdown, raw cells
    html_exporter.register_preprocessor(SafeOutputs(), enabled=True)  # and what bleach left
    redact, scores = RedactTests(), Scores()
    html_exporter.register_preprocessor(redact, enabled=True)
    html_exporter.register_preprocessor(scores, enabled=True)
    html_exporter.register_preprocessor(CSSHTMLHeaderPreprocessor(), enabled=True)
    return html_exporter, redact, scores


_EXPORTER = []  # one per process: its templates are compiled once (about 0.15 s a page)


def feedback_page(nb, released: dict[str, str], checks: list[Check], resources: dict) -> str:
    """The feedback page of one graded notebook."""
    if not _EXPORTER:
        _EXPORTER.append(exporter())
    html_exporter, redact, scores = _EXPORTER[0]
    redact.released = released
    scores.points = {c.grade_id: [c.points, c.max_points] for c in checks}
    redact.checks = {c.grade_id: (c.points, c.max_points, c.passed, c.message) for c in checks}
    page, _ = html_exporter.from_notebook_node(nb, resources=resources)  # scrubbed
    return page


def notice_page(title: str, status: str, detail: str) -> str:
    """A short page for a notebook that could not be graded (missing, invalid, ...)."""
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p><strong>Not graded: {html.escape(status)}.</strong></p>"
        f"<p>{html.escape(detail)}</p><p>Score: 0</p></body></html>\n"
    )


def write_page(path: Path, page: str) -> None:
    """Write a page (the client does, never a worker), readable by the web server."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    path.chmod(0o644)
