"""Feedback pages: nbgrader's feedback template, showing only what the grader wrote.

nbgrader's ``generate_feedback`` renders the *autograded* notebook, whose test cells hold
the hidden tests again (``OverwriteCells`` put them back). :class:`RedactTests` therefore,
before nbgrader's ``GetGrades`` and the ``feedback`` HTML template run,

* replaces each test cell's source with its released (visible) version;
* replaces its outputs with the trusted verdict (:class:`~dnncourse.grading.protocol.Check`):
  points and the message the worker wrote, never anything the student's code printed or
  raised (a function under test can read its caller's source with ``linecache`` and print
  it, or stash it and show it later);
* drops the outputs of every other code cell for the same reason: a display can be updated
  later from student code that saw the hidden tests. Students have their outputs in their
  own notebook.
"""

import html
import os
from pathlib import Path

from nbconvert.exporters import HTMLExporter
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor, Preprocessor
from nbformat.v4 import new_output
from nbgrader import utils as nbutils
from nbgrader.preprocessors import GetGrades
from traitlets import Dict
from traitlets.config import Config


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


def exporter(released: dict[str, str], checks: dict | None = None) -> HTMLExporter:
    """nbconvert's HTML exporter set up like ``nbgrader generate_feedback``."""
    import nbgrader

    base = Path(nbgrader.__file__).parent / "server_extensions" / "formgrader"
    config = Config()
    config.HTMLExporter.template_name = "feedback"
    config.HTMLExporter.extra_template_basedirs = [str(base / "templates")]
    config.HTMLExporter.extra_template_paths = [
        str(base / "static" / "node_modules" / "bootstrap" / "dist" / "css")
    ]
    html_exporter = HTMLExporter(config=config)
    html_exporter.register_preprocessor(
        RedactTests(released=released, checks=checks or {}), enabled=True
    )
    html_exporter.register_preprocessor(GetGrades(), enabled=True)
    html_exporter.register_preprocessor(CSSHTMLHeaderPreprocessor(), enabled=True)
    return html_exporter


def write_feedback(nb, released: dict[str, str], resources: dict, path: Path, checks=()) -> None:
    """Render the feedback page of one graded notebook to ``path``.

    ``checks``: the :class:`~dnncourse.grading.protocol.Check` objects of this notebook.
    """
    table = {c.grade_id: (c.points, c.max_points, c.passed, c.message) for c in checks}
    body, _ = exporter(released, table).from_notebook_node(nb, resources=resources)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    os.chmod(path, 0o644)


def write_notice(path: Path, title: str, status: str, detail: str) -> None:
    """A short page for a notebook that could not be graded (missing, invalid, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p><strong>Not graded: {html.escape(status)}.</strong></p>"
        f"<p>{html.escape(detail)}</p><p>Score: 0</p></body></html>\n"
    )
