"""Stored HTML runs no script, in a real browser (issue 19, item 5).

A notebook whose outputs, Markdown and raw cells carry scripts, event handlers and
``javascript:`` links is turned into the two pages the grader stores: the feedback page
(:func:`dnncourse.grading.feedback.feedback_page`) and the graded notebook kept for
nbgrader's formgrader, rendered as the formgrader does (nbconvert's HTML exporter, *not*
sanitizing). Each is opened in Debian's headless chromium (selenium), every link is clicked,
and no payload may have run. The control renders the same notebook without our cleaning and
sees the payloads run, so the test would notice a payload that cannot run anyway.

Needs ``chromium`` and ``chromium-driver``; skipped without them, except when
``DNNCOURSE_REQUIRE_BROWSER=1`` (CI), where it fails instead.
"""

import copy
import json
import os
import shutil
import tempfile

import nbformat
import pytest
from nbconvert import HTMLExporter

from dnncourse.grading.feedback import feedback_page
from dnncourse.grading.safe_html import active_content, safe_cells

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def ran(tag: str) -> str:
    return f"(window.ran=window.ran||[]).push('{tag}')"


def hostile() -> nbformat.NotebookNode:
    code = nbformat.v4.new_code_cell("show()")
    code.outputs = [
        nbformat.v4.new_output(
            "display_data", data={"text/html": f"<script>{ran('html')}</script>"}
        ),
        nbformat.v4.new_output(
            "display_data", data={"text/html": f'<img src=x onerror="{ran("onerror")}">'}
        ),
        nbformat.v4.new_output("display_data", data={"application/javascript": ran("js")}),
        nbformat.v4.new_output(
            "display_data",
            data={
                "image/svg+xml": f"<svg xmlns='http://www.w3.org/2000/svg'><script>{ran('svg')}</script></svg>"
            },
        ),
        nbformat.v4.new_output(
            "execute_result",
            data={"text/markdown": f"[md output](javascript:{ran('md-output')})"},
            execution_count=1,
        ),
    ]
    markdown = nbformat.v4.new_markdown_cell(
        f"<script>{ran('md-script')}</script>\n\n"
        f"[a link](javascript:{ran('md-link')})\n\n"
        f"[a tab](jav&#x09;ascript:{ran('md-tab')})\n\n"
        f'<a href="javascript:{ran("md-a")}">html link</a>\n\n'
        f'<details open ontoggle="{ran("ontoggle")}">x</details>\n\n'
        f"[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)\n"
    )
    raw = nbformat.v4.new_raw_cell(f"<script>{ran('raw')}</script>")
    raw.metadata["raw_mimetype"] = "text/html"
    return nbformat.v4.new_notebook(cells=[code, markdown, raw])


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        if os.environ.get("DNNCOURSE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"DNNCOURSE_REQUIRE_BROWSER=1 but {missing} not found")
        pytest.skip(f"{missing} not found (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="dnncourse-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(arg)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


def payloads_run(browser, page: str, folder) -> list[str]:
    """Open ``page``, click every link, and say which payloads ran."""
    path = folder / f"page-{len(list(folder.iterdir()))}.html"
    path.write_text(page)
    browser.get(path.as_uri())
    browser.execute_script(
        "for (const a of document.querySelectorAll('a[href]')) {"
        "  try { if (!a.href.startsWith('file:')) a.click(); } catch (e) {} }"
    )
    browser.execute_script("return 1")  # let the clicks run
    return sorted(set(browser.execute_script("return window.ran || []")))


def formgrader_html(nb) -> str:
    """The graded notebook as the formgrader renders it: nbconvert, not sanitizing."""
    exporter = HTMLExporter()
    exporter.sanitize_html = False
    return exporter.from_notebook_node(nb)[0]


RUN_UNSANITIZED = {"html", "onerror", "js", "md-output", "md-script", "md-link", "md-a"}


def test_control_the_payloads_run_when_nothing_cleans_them(browser, tmp_path):
    got = payloads_run(browser, formgrader_html(hostile()), tmp_path)
    assert RUN_UNSANITIZED <= set(got), got


def test_the_graded_notebook_runs_no_script_in_the_formgrader(browser, tmp_path):
    nb = hostile()
    safe_cells(nb)  # what the worker does before it hands the graded notebook back
    assert payloads_run(browser, formgrader_html(nb), tmp_path) == []
    kinds = {k for c in nb.cells for o in c.get("outputs", []) for k in o.get("data", {})}
    assert kinds == {"text/plain"}, "outputs are kept as text and images only"
    assert "ran" not in json.dumps([o for c in nb.cells for o in c.get("outputs", [])])


def test_the_feedback_page_runs_no_script_and_holds_none(browser, tmp_path):
    resources = {"nbgrader": {"notebook": "nb", "score": 0, "max_score": 1, "late_penalty": 0}}
    page = feedback_page(copy.deepcopy(hostile()), {}, [], resources)
    assert payloads_run(browser, page, tmp_path) == []
    template = {"<meta>", "<style>", "<link>"}  # the page's own styles and charset
    found = [a for a in active_content(page) if a not in template]
    assert found == [], "no script, handler or script/data URL at all"
    assert "http-equiv" not in page
    assert "md-link" in page, "the Markdown is still shown (as text)"
