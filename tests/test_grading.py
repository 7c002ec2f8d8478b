"""Unit tests of the grader's pieces that need no kernel: reading, rebuilding, feedback, rows.

Whole submissions, graded end to end, are in test_grading_corpus.py; probes and verdicts in
test_verdict.py.
"""

import copy
import json
import os
from pathlib import Path

import nbformat
import pytest

from dnncourse.grading import sanitize
from dnncourse.grading.api import students_in, unpack_zip
from dnncourse.grading.engine import summary, write_csv
from dnncourse.grading.feedback import RedactTests
from dnncourse.grading.protocol import Result, Status, result_from_json, result_to_json

ROOT = Path(__file__).resolve().parents[1]
NAME = "hw1_polynomial_gradients"
RELEASE = ROOT / "exercises" / "hw1" / f"{NAME}.ipynb"


@pytest.fixture
def release():
    return nbformat.read(RELEASE, as_version=4)


def gids(nb) -> list:
    return [sanitize.grade_id(c) for c in nb.cells]


# -- reading ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "is empty"),
        (RELEASE.read_bytes()[:1000], "not valid JSON"),
        (b"[1, 2, 3]", "not a notebook"),
        (b'{"cells": [42]}', "not a cell"),
        (b"\xff\xfe garbage", "not valid JSON"),
        (b'{"cells": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"cells": [], "metadata": ' + b"[" * 500 + b"]" * 500 + b"}", "nested more than"),
        (b'{"cells": [{"cell_type": "code", "source": "\\ud800"}]}', "not valid JSON"),
    ],
)
def test_broken_files_are_invalid_notebooks(tmp_path, content, reason):
    path = tmp_path / "nb.ipynb"
    path.write_bytes(content)
    with pytest.raises(sanitize.Rejected) as info:
        sanitize.read_notebook(path)
    assert info.value.status == "invalid notebook"
    assert reason in info.value.detail


def test_duplicated_cell_ids_do_not_stop_reading(tmp_path):
    nb = json.loads(RELEASE.read_text())
    for cell in nb["cells"]:
        cell["id"] = "same"
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    assert len(sanitize.read_notebook(path).cells) == len(nb["cells"])


def test_symlinked_notebooks_and_folders_are_invalid(tmp_path):
    student = tmp_path / "student"
    student.mkdir()
    (student / f"{NAME}.ipynb").symlink_to(RELEASE)
    with pytest.raises(sanitize.Rejected, match="symbolic link") as info:
        sanitize.find_notebook(student, NAME, {NAME})
    assert info.value.status == "invalid notebook"
    (student / f"{NAME}.ipynb").unlink()
    (student / "renamed.ipynb").symlink_to(RELEASE)  # under another name, too
    with pytest.raises(sanitize.Rejected, match="symbolic link"):
        sanitize.find_notebook(student, NAME, {NAME})
    (tmp_path / "linked").symlink_to(RELEASE.parent, target_is_directory=True)
    with pytest.raises(sanitize.Rejected, match="linked is a symbolic link"):
        sanitize.find_notebook(tmp_path / "linked", NAME, {NAME})
    with pytest.raises(sanitize.Rejected, match="cannot be read"):
        sanitize.read_notebook(student / "renamed.ipynb")  # O_NOFOLLOW


def test_the_gradebook_lock_has_a_timeout(tmp_path):
    import fcntl
    import time

    from dnncourse.grading.course import Course, GradebookBusy, gradebook

    course = Course(str(tmp_path), str(tmp_path), "hw1", f"sqlite:///{tmp_path}/gb.db", [])
    with open(course.lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a student's daemon would do, if it could
        start = time.monotonic()
        with pytest.raises(GradebookBusy, match=r"busy for 0\.3 s"):
            with gradebook(course, timeout=0.3):
                pass
        assert 0.3 <= time.monotonic() - start < 5


def test_find_notebook_by_name_then_a_single_renamed_one(tmp_path):
    expected = {NAME}
    (tmp_path / "renamed.ipynb").write_text("{}")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "old.ipynb").write_text("{}")
    path, note = sanitize.find_notebook(tmp_path, NAME, expected)
    assert path.name == "renamed.ipynb" and "in place of" in note
    (tmp_path / f"{NAME}.ipynb").write_text("{}")
    path, note = sanitize.find_notebook(tmp_path, NAME, expected)
    assert path.name == f"{NAME}.ipynb" and note is None


def test_no_notebook_or_two_candidates_is_a_missing_notebook(tmp_path):
    with pytest.raises(sanitize.Rejected, match="no notebook") as info:
        sanitize.find_notebook(tmp_path, NAME, {NAME})
    assert info.value.status == "missing notebook"
    (tmp_path / "a.ipynb").write_text("{}")
    (tmp_path / "b.ipynb").write_text("{}")
    with pytest.raises(sanitize.Rejected, match=r"a\.ipynb, b\.ipynb"):
        sanitize.find_notebook(tmp_path, NAME, {NAME})


# -- rebuilding --------------------------------------------------------------------------------
def test_an_untouched_notebook_is_rebuilt_unchanged(release):
    nb, notes = sanitize.rebuild(copy.deepcopy(release), release)
    assert nb == release and notes == []


def test_deleted_edited_and_reordered_test_cells_come_back(release):
    student = copy.deepcopy(release)
    cells = {sanitize.grade_id(c): c for c in student.cells}
    cells["test_cubic_gradients"].source = "assert True"
    cells["test_cubic_gradients"].metadata.nbgrader["points"] = 1000
    cells["test_central_difference"].metadata.nbgrader["grade"] = False
    student.cells.remove(cells["test_fit_cubic"])
    student.cells.remove(cells["test_gradient_descent_step"])
    student.cells.insert(0, cells["test_gradient_descent_step"])  # moved to the top
    nb, notes = sanitize.rebuild(student, release)
    assert gids(nb) == gids(release)
    for mine, theirs in zip(nb.cells, release.cells, strict=True):
        assert mine.source == theirs.source and mine.metadata == theirs.metadata
    assert any("test_fit_cubic was missing" in n for n in notes)
    assert any("restored the instructor's cell test_cubic_gradients" in n for n in notes)


def test_answers_and_extra_cells_are_kept_in_place(release):
    student = copy.deepcopy(release)
    answer = next(c for c in student.cells if sanitize.grade_id(c) == "cubic_gradients")
    answer.source = "def cubic_gradients(x, y, coeffs):\n    return coeffs"
    at = student.cells.index(answer)
    student.cells.insert(at + 1, nbformat.v4.new_code_cell("print('mine')"))
    fake = nbformat.v4.new_code_cell("x = 1")
    fake.metadata["nbgrader"] = {"grade": True, "grade_id": "bonus", "points": 99}
    student.cells.append(fake)
    nb, notes = sanitize.rebuild(student, release)
    index = gids(nb).index("cubic_gradients")
    assert nb.cells[index].source == answer.source
    assert nb.cells[index + 1].source == "print('mine')"
    assert "nbgrader" not in nb.cells[-1].metadata, "a student cannot add graded cells"
    assert any("removed nbgrader metadata" in n for n in notes)
    ids = [c.id for c in nb.cells]
    assert len(ids) == len(set(ids))
    nbformat.validate(nb)


def test_copies_of_cells_with_the_same_grade_id(release):
    student = copy.deepcopy(release)
    test = next(c for c in student.cells if sanitize.grade_id(c) == "test_fit_cubic")
    answer = next(c for c in student.cells if sanitize.grade_id(c) == "fit_cubic")
    second = copy.deepcopy(answer)
    second.source = "def fit_cubic(*args):\n    return 'second'"
    student.cells += [copy.deepcopy(test), second]
    for cell in student.cells:
        cell.id = "same"
    nb, notes = sanitize.rebuild(student, release)
    assert gids(nb).count("test_fit_cubic") == 1
    assert gids(nb).count("fit_cubic") == 1
    assert nb.cells[-1].source == second.source, "a copied answer runs, as a plain cell"
    assert any("removed a copy of cell test_fit_cubic" in n for n in notes)


# -- feedback, rows ----------------------------------------------------------------------------
def test_feedback_shows_released_tests_and_only_the_trusted_verdict():
    cell = nbformat.v4.new_code_cell("visible\n### BEGIN HIDDEN TESTS\nsecret\n")
    cell.metadata["nbgrader"] = {"grade": True, "grade_id": "t", "points": 1, "locked": True}
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="secret (printed by the student)"),
        nbformat.v4.new_output(
            "error", ename="AssertionError", evalue="secret", traceback=["---> secret"]
        ),
    ]
    answer = nbformat.v4.new_code_cell("def f(): pass")
    answer.outputs = [nbformat.v4.new_output("stream", name="stdout", text="secret")]
    check = (0.0, 1.0, False, "1 of 1 hidden checks failed: 'p': expected dtype float64")
    redact = RedactTests(released={"t": "visible\n"}, checks={"t": check})
    redacted, _ = redact.preprocess_cell(cell, {}, 0)
    assert redacted.source == "visible\n"
    assert "secret" not in json.dumps(redacted.outputs)
    assert redacted.outputs[0].evalue == "0/1 points, " + check[3]
    plain, _ = redact.preprocess_cell(answer, {}, 1)
    assert plain.outputs == [], "no output of the student's code reaches the feedback"


def test_feedback_page_runs_no_script_of_the_student():
    from html.parser import HTMLParser

    from dnncourse.grading.feedback import feedback_page

    cell = nbformat.v4.new_code_cell("print(1)")
    mark = "XSS_MARK"
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data",
            data={"text/html": f"<script>{mark}1()</script>", "text/plain": f"<b>{mark}2</b>"},
        ),
        nbformat.v4.new_output("display_data", data={"application/javascript": f"{mark}3()"}),
        nbformat.v4.new_output(
            "display_data", data={"image/svg+xml": f"<svg><script>{mark}4()</script></svg>"}
        ),
        nbformat.v4.new_output("stream", name="stdout", text=f"<script>{mark}5()</script>"),
        nbformat.v4.new_output(
            "display_data",
            data={"image/png": "iVBORw0KGgo="},
            metadata={"image/png": {"width": f"1 onerror={mark}6()"}},
        ),
    ]
    markdown = nbformat.v4.new_markdown_cell(f"<script>{mark}7()</script><img onerror='{mark}8'>")
    nb = nbformat.v4.new_notebook(cells=[cell, markdown])
    resources = {"nbgrader": {"notebook": "nb", "score": 0, "max_score": 1, "late_penalty": 0}}
    page = feedback_page(nb, {}, [], resources)

    class Active(HTMLParser):
        active, script = [], False

        def handle_starttag(self, tag, attrs):
            self.script = tag == "script"
            self.active += [v or "" for _, v in attrs]

        def handle_data(self, data):
            if self.script:
                self.active.append(data)

    parser = Active()
    parser.feed(page)
    assert f"{mark}2" not in page and f"{mark}5" not in page, "no student output is shown"
    assert f"{mark}7" not in page or "&lt;script&gt;" in page, "Markdown is sanitized"
    assert not [a for a in parser.active if mark in a]


def _hostile_page_cells() -> list:
    """Cells whose page a scrub must change: outputs, Markdown and a raw cell with scripts
    and handlers; and an image."""
    code = nbformat.v4.new_code_cell("print(1)")
    code.outputs = [
        nbformat.v4.new_output("display_data", data={"text/html": "<script>x()</script>"}),
        nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="}),
    ]
    image = nbformat.v4.new_markdown_cell("![an image](b.png) <img src='a.png'>")
    markdown = nbformat.v4.new_markdown_cell(
        "<img src=c onerror=1> <script>1</script> [l](javascript:1)"
    )
    raw = nbformat.v4.new_raw_cell("<img src=d><object><iframe></iframe></object>")
    raw.metadata["raw_mimetype"] = "text/html"
    return [code, image, markdown, raw]


def test_the_feedback_page_is_nbconvert_s_page_scrubbed_in_one_parse(monkeypatch):
    """FeedbackExporter leaves nbconvert's own pass over the page (alternative text,
    focusable cells) to scrub_page's parse: each page is exactly nbconvert's HTMLExporter's
    page, scrubbed."""
    from nbconvert.exporters import HTMLExporter

    from dnncourse.grading import feedback
    from dnncourse.grading.protocol import Check
    from dnncourse.grading.safe_html import active_content, scrub_page

    release = nbformat.read(RELEASE, as_version=4)
    tests = {
        c.metadata.nbgrader["grade_id"]: c.source
        for c in release.cells
        if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"
    }
    checks = [
        Check(NAME, gid, i % 2, 1.0, i % 2 == 1, f"<b>{i}</b>") for i, gid in enumerate(tests)
    ]
    cases = [
        (nbformat.v4.new_notebook(cells=_hostile_page_cells()), {}, []),
        (release, tests, checks),
    ]

    def resources():
        return {"nbgrader": {"student": "s", "assignment": "hw1", "notebook": NAME}}

    with monkeypatch.context() as m:  # the same exporter, set up on nbconvert's own class
        m.setattr(feedback, "FeedbackExporter", HTMLExporter)
        plain, redact, scores = feedback.exporter()
    assert type(plain) is HTMLExporter
    pages = []
    for nb, released, cell_checks in cases:
        redact.released = released
        scores.points = {c.grade_id: [c.points, c.max_points] for c in cell_checks}
        redact.checks = {
            c.grade_id: (c.points, c.max_points, c.passed, c.message) for c in cell_checks
        }
        body, _ = plain.from_notebook_node(copy.deepcopy(nb), resources=resources())
        page = feedback.feedback_page(copy.deepcopy(nb), released, cell_checks, resources())
        assert page == scrub_page(body)
        pages.append(page)
    assert '<img alt="an image" src="b.png"/>' in pages[0]
    kept = ("<style>", "<meta>", "<link>")  # the template's own, kept by the scrub
    assert [a for a in active_content(pages[0]) if a not in kept] == []


def test_scrub_page_takes_out_nested_active_elements_whole():
    from dnncourse.grading.safe_html import scrub_page

    page = (
        "<div><object><iframe><b onclick=1>y</b></iframe><embed src=x></object>"
        "<p onload=2 title=t>z</p><a href=' jav&#x09;ascript:1'>l</a><style>a{}</style></div>"
    )
    assert scrub_page(page) == '<div><p title="t">z</p><a>l</a><style>a{}</style></div>'


def test_the_grader_s_processes_import_no_pytorch():
    """The Dask workers and the grading processes import the grading side only: no PyTorch
    (about 2 s of CPU in each), which the kernel's side (probe.py) does need; the two spell
    the probe records' MIME type alike."""
    import subprocess
    import sys

    from dnncourse.grading import probe, protocol

    assert protocol.PROBE_MIME == probe.MIME
    code = (
        "import sys, dnncourse, dnncourse.grading.worker, dnncourse.grading.engine\n"
        "print('torch' in sys.modules)\n"
        "dnncourse.train  # the package's own names still load, on first use\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_worst_status_and_summary(tmp_path):
    assert Status.worst(["ok", "output limit", "timeout"]) == "timeout"
    assert Status.worst([]) == "ok"
    rows = [
        Result("a", "hw1", Status.OK, 10.0, 10.0),
        Result("b", "hw1", Status.TIMEOUT, 0.0, 10.0, detail="took, too long"),
    ]
    table = summary(rows)
    assert "timeout" in table and "5.00" in table and "sandbox" not in table
    assert "sandbox: active" in summary(rows, sandbox=True)
    assert "sandbox: OFF (--no-sandbox)" in summary(rows, sandbox=False)
    write_csv(rows, tmp_path / "grades.csv")
    lines = (tmp_path / "grades.csv").read_text().splitlines()
    header = "student_id,assignment,score,max_score,status,detail,seconds,assert_score,review"
    assert lines[0] == header
    assert lines[2] == 'b,hw1,0.0,10.0,timeout,"took, too long",0.0,0.0,'


def test_a_result_survives_json_with_its_pages_and_notebooks():
    from dnncourse.grading.protocol import Check

    result = Result(
        "a",
        "hw1",
        Status.RENAMED,
        3.0,
        10.0,
        checksum="c",
        bundle="b",
        checks=(Check("nb", "t1", 3.0, 3.0, True), Check("nb", "t2", 0.0, 7.0, False, "no")),
        feedback={"nb": "<html>é</html>"},
        graded={"nb": b'{"cells": []}\xff'},
        timings={"kernel start": (1.5, 1.25), "store": (0.01, 0.0)},
    )
    assert result_from_json(result_to_json(result)) == result
    short = result_from_json(result_to_json(result, pages=False))
    assert short.feedback == {} and short.graded == {} and short.checks == result.checks


def test_a_task_crosses_the_pipe_typed_and_nonsense_is_refused():
    """The worker's pipe carries a Task (bytes, Limits) through the one codec; a line that
    is not a well-formed value of the type is an error, never a half-read value."""
    from dnncourse.grading.protocol import Limits, Task, decode, encode
    from dnncourse.grading.worker import Job

    task = Task("a", "hw1", {"x/nb.ipynb": b"\x00\xff{}"}, "h", Limits(timeout=0), False)
    job = decode(Job, encode(Job(task, "/b", "n")))
    assert job.task == task and job.task.checksum == task.checksum
    assert job.task.limits.timeout is None and isinstance(job.task.limits, Limits)
    line = result_to_json(Result("a", "hw1", Status.OK, 1.0, 1.0))
    for bad in (
        line.replace('"ok"', '"fine"'),  # not a Status
        line.replace('"score": 1.0', '"score": "1"'),  # not a number
        line.replace('"checks": []', '"checks": [{"notebook": 1}]'),
        line.replace("{", '{"extra": 1, ', 1),  # a field a Result has not
        "[1]",
    ):
        with pytest.raises((TypeError, ValueError)):
            result_from_json(bad)


def test_failed_and_zero_results_are_built_in_one_place():
    from dnncourse.grading.protocol import failed, zero_checks

    result = failed("a", "hw1", "why", Status.TIMEOUT)
    assert (result.status, result.score, result.max_score, result.detail) == (
        Status.TIMEOUT,
        0.0,
        0.0,
        "why",
    )
    checks = zero_checks("nb", {"t2": 2.0, "t1": 1.0}, "not graded: timeout")
    assert [(c.grade_id, c.points, c.max_points, c.passed) for c in checks] == [
        ("t1", 0.0, 1.0, False),
        ("t2", 0.0, 2.0, False),
    ]
    assert {c.message for c in checks} == {"not graded: timeout"}


def test_an_unknown_comparison_is_an_error_at_release_not_a_silent_default():
    from dnncourse.grading import reference
    from dnncourse.grading.protocol import Compare, Comparison

    def record(**check):
        return {"name": "p", "value": {"float": 1.0}, "check": check}

    known = Comparison.of(record(kind="ks", rtol=None, atol=None, what="w", alpha=0.01))
    assert (known.kind, known.alpha, known.what) == (Compare.KS, 0.01, "w")
    assert Comparison.of(record()) == Comparison()  # probe() always writes the kind
    with pytest.raises(ValueError, match="unknown comparison 'closee'"):
        Comparison.of(record(kind="closee"))
    assert reference.problems({"t": [record(kind="close")]}) == []
    found = reference.problems({"t": [record(kind="closee")]})
    assert len(found) == 1 and "unknown comparison 'closee'" in found[0]


def test_nbgrader_grading_settings_are_refused_not_ignored(tmp_path):
    """``c.Execute.timeout`` and ``c.LimitOutput.*`` are nbgrader autograde's: dnncourse
    refuses a course that sets them, naming its own option, before grading anything."""
    from dnncourse.grading.course import prepare, refuse_grading_settings

    config = tmp_path / "nbgrader_config.py"
    plain = (ROOT / "nbgrader_config.py").read_text()
    config.write_text(plain)
    refuse_grading_settings(config)  # the course's own settings pass
    config.write_text(plain + "c.Execute.timeout = 30\nc.LimitOutput.max_lines = 10\n")
    with pytest.raises(ValueError) as error:
        refuse_grading_settings(config)
    message = str(error.value)
    assert "c.Execute.timeout, c.LimitOutput.max_lines" in message
    assert "--cell-timeout" in message and "Limits" in message
    with pytest.raises(ValueError, match=r"c\.Execute\.timeout"):
        prepare(tmp_path, "hw1", tmp_path / "out")
    assert not (tmp_path / "out").exists(), "refused before anything was written"


def test_students_and_a_safe_zip(tmp_path):
    import zipfile

    archive = tmp_path / "class.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("class/alice/hw.ipynb", "{}")
        zf.writestr("class/bob/hw.ipynb", "{}")
        zf.writestr("../evil.txt", "escape")
    dest = tmp_path / "unpacked"
    dest.mkdir()
    folder = unpack_zip(archive, dest)
    assert sorted(students_in(folder)) == ["alice", "bob"]
    assert not (tmp_path / "evil.txt").exists()


# -- temporary folders -------------------------------------------------------------------------
def test_a_killed_workers_folder_is_removed_by_the_next_worker(tmp_path, monkeypatch):
    """A worker killed outright leaves its temporary folder (its atexit never ran); the next
    worker on the machine removes it, and never the folder of a worker still running."""
    import subprocess
    import sys

    from dnncourse.grading import worker

    monkeypatch.setattr(worker.tempfile, "tempdir", str(tmp_path))
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = tmp_path / f"{worker.HOME_PREFIX}{ended.stdout.strip()}-abc"
    alive = tmp_path / f"{worker.HOME_PREFIX}{os.getpid()}-def"
    other = tmp_path / "dnncourse-worker-notes"
    for folder in (dead, alive, other):
        (folder / "bundle").mkdir(parents=True)
    worker._sweep_homes()
    assert not dead.exists() and alive.exists() and other.exists()
