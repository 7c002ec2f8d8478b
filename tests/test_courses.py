"""Courses that no one here wrote: nbgrader's quickstart course, classic assert tests, data files.

``nbgrader quickstart course101`` makes nbgrader's own example course (``source/ps1``: two
notebooks, an image, a header notebook; classic assert tests, answers graded by hand). It is
released and graded by ``dnncourse`` as it comes, with and without its image, and the same
submissions are graded by plain ``nbgrader autograde``: every score and every cell's
automatic score must be the same (nbgrader is the oracle). An assignment of our own mixes
probes and asserts, reads a CSV data set from a subfolder and imports a helper module.
"""

import csv
import json
import os
import shutil
import tempfile
import textwrap
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from nbgrader import utils as nbutils
from nbgrader.api import Gradebook

from dnncourse.grading import sandbox
from dnncourse.grading.api import grade, leaks, release_and_validate
from dnncourse.homework import layout, nbgrader, release

ROOT = Path(__file__).resolve().parents[1]
STUB = "    # YOUR CODE HERE\n    raise NotImplementedError()"  # in a function's body
needs_sandbox = pytest.mark.skipif(
    sandbox.problem() is not None, reason=f"no sandbox on this host: {sandbox.problem()}"
)


def quickstart(where: Path) -> Path:
    """nbgrader's example course, made by nbgrader itself."""
    where.mkdir(parents=True, exist_ok=True)
    nbgrader(where, "quickstart", "course101")
    return where / "course101"


# -- the course's layout ----------------------------------------------------------------------
def test_the_layout_comes_from_the_courses_nbgrader_config(tmp_path):
    ours = layout(ROOT)
    assert (ours.source, ours.release, ours.course_id) == ("solutions", "exercises", "dnncourse")
    course = quickstart(tmp_path)
    theirs = layout(course)  # sets only course_id: nbgrader's default folders
    assert (theirs.source, theirs.release, theirs.course_id) == ("source", "release", "course101")
    from dnncourse.service.config import ServiceConfig
    from dnncourse.service.grader import Grader

    nbgrader(course, "generate_assignment", "ps1")
    grader = Grader(ServiceConfig(data=tmp_path / "data", root=course))  # dnncourse serve's
    try:
        assert grader.source("ps1") == course / "source" / "ps1"
        assert grader.notebooks("ps1") == ["problem1", "problem2"]
    finally:
        grader.close()
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\nc.CourseDirectory.source_directory = 'masters'\n"
        "c.CourseDirectory.release_directory = 'handouts'\n"
        "c.CourseDirectory.ignore = ['*.tmp']\n"
    )
    custom = layout(course)
    assert (custom.source, custom.release, custom.ignore) == ("masters", "handouts", ("*.tmp",))
    (course / "nbgrader_config.py").write_text("c = get_config()\n")
    (course / "solutions").mkdir()  # unset, with our folder: ours
    assert (layout(course).source, layout(course).release) == ("solutions", "exercises")
    assert layout(course).ignored(Path("sub/__pycache__/helper.cpython-311.pyc"))


def test_a_hint_in_the_statement_is_not_a_leak_but_a_hidden_line_is(tmp_path):
    (tmp_path / "nbgrader_config.py").write_text("c = get_config()\n")
    hint = "assert total(3) == 6, 'the sum of 1, 2 and 3'"
    secret = "assert total(10) == 55, 'hidden'"
    test = f"{hint}\n### BEGIN HIDDEN TESTS\n{hint}\n{secret}\n### END HIDDEN TESTS\n"
    nb = new_notebook(
        cells=[new_markdown_cell(f"For example:\n\n    {hint}"), new_code_cell(test)]
    )
    (tmp_path / "solutions" / "a").mkdir(parents=True)
    nbformat.write(nb, tmp_path / "solutions" / "a" / "a.ipynb")
    (tmp_path / "exercises" / "a").mkdir(parents=True)
    released = new_notebook(cells=[new_markdown_cell(f"For example:\n\n    {hint}")])
    nbformat.write(released, tmp_path / "exercises" / "a" / "a.ipynb")
    assert leaks(tmp_path, "a") == []  # the instructor shows the hint on purpose
    released.cells.append(new_code_cell(secret))  # control: a hidden line that got out
    nbformat.write(released, tmp_path / "exercises" / "a" / "a.ipynb")
    assert [p.split(": ", 1)[1] for p in leaks(tmp_path, "a")] == [
        f"shows hidden lines, e.g. {secret!r}"
    ]


# -- classic tests: nbgrader's score, messages from closed sets --------------------------------
def test_an_assert_cell_scores_as_nbgrader_and_its_message_quotes_nothing():
    from nbformat.v4 import new_output

    from dnncourse.grading import verdict

    def cell(*outputs, count=1):
        meta = {"grade": True, "solution": False, "grade_id": "t", "points": 2}
        c = new_code_cell("assert f() == 55", metadata={"nbgrader": meta})
        c.outputs, c.execution_count = list(outputs), count
        return c

    secret = "expected 55 (the hidden value)"
    cases = {
        "ok": (cell(new_output("stream", name="stdout", text="hi")), 2.0, "ran without error"),
        "assert": (
            cell(new_output("error", ename="AssertionError", evalue=secret, traceback=[secret])),
            0.0,
            "raised AssertionError",
        ),
        "made-up": (
            cell(new_output("error", ename="Expected55Error", evalue=secret, traceback=[])),
            0.0,
            "raised an exception",
        ),
        "stderr": (cell(new_output("stream", name="stderr", text=secret)), 0.0, "stderr"),
        "partial": (
            cell(new_output("execute_result", data={"text/plain": "0.5"}, execution_count=1)),
            0.5,
            "partial credit",
        ),
        "not run": (cell(count=None), 0.0, "not run: the grading stopped earlier (timeout)"),
    }
    for name, (c, points, words) in cases.items():
        nb = new_notebook(cells=[c])
        (check,) = verdict.decide(nb, {"t": []}, "nb", stopped="timeout")
        assert (check.kind, check.points, check.max_points) == ("assert", points, 2.0), name
        assert words in check.message and "55" not in check.message, (name, check.message)
        assert check.passed == (points == 2.0)
        if name != "not run":  # nbgrader's own verdict on the same cell
            assert check.points == float(nbutils.determine_grade(c)[0])


# -- which cells were decided where: summary, dashboard -----------------------------------------
def test_the_summary_and_the_dashboard_say_which_cells_asserts_decided():
    from types import SimpleNamespace

    from dnncourse.grading.engine import summary
    from dnncourse.grading.protocol import Check, Result
    from dnncourse.service.instructor import decided_by

    checks = (
        Check("lab", "fit_probe", 0.0, 2.0, False, "", kind="probe"),
        Check("lab", "fit_asserts", 1.0, 1.0, True, "", kind="assert"),
    )
    result = Result("ann", "lab", "ok", 1.0, 3.0, checks=checks)
    assert result.assert_score == 1.0 and result.row()["assert_score"] == 1.0
    text = summary([result])
    assert "1 decided by probes" in text and "1 by their asserts inside it" in text
    assert text.rstrip().endswith("lab/fit_asserts")
    assert "asserts" not in summary([Result("bob", "lab", "ok", 0.0, 2.0, checks=checks[:1])])
    stored = [{"notebook": c.notebook, "name": c.grade_id, "kind": c.kind} for c in checks]
    subs = [
        SimpleNamespace(state="graded", checks=stored),
        SimpleNamespace(state="queued", checks=[]),
        SimpleNamespace(state="graded", checks=[{"notebook": "lab", "name": "old"}]),
    ]
    assert decided_by(subs) == {
        "probe": ["lab/fit_probe", "lab/old"],
        "assert": ["lab/fit_asserts"],
    }


# -- data files, as an ordinary user ----------------------------------------------------------
@needs_sandbox
def test_data_files_are_readable_and_read_only_for_an_ordinary_user():
    """The sandbox made by a grader that is not root (a user namespace): the data folder is
    the grader's, private (0700, a 0600 file), and still readable inside, and not writable.

    The grader runs as the ordinary user of ``test_sandbox`` (made with ``useradd`` when the
    tests run as root, with the interpreter reachable in a private mount namespace)."""
    from test_sandbox import ordinary_user, run_as

    user = ordinary_user()
    if isinstance(user, str):
        pytest.skip(user)
    home = Path(tempfile.mkdtemp(prefix="dnncourse-user-data-"))
    try:
        data = home / "data"
        (data / "sub").mkdir(parents=True)
        (data / "sub" / "points.csv").write_text("x,y\n1,2\n")
        (data / "helper.py").write_text("ANSWER = 42\n")
        (data / "helper.py").chmod(0o600)
        data.chmod(0o700)
        home.chmod(0o755)
        for path in [data, *data.rglob("*")]:
            os.chown(path, *user)
        inner = (
            "import json, os, helper\n"
            "seen = dict(uid=os.getuid(), helper=helper.ANSWER, csv=open('sub/points.csv')"
            ".read())\n"
            "try:\n open('helper.py', 'a')\nexcept OSError as e: seen['write'] = e.errno\n"
            "print('SEEN', json.dumps(seen))\n"
        )
        _, out, err, _ = run_as("user", inner, data=data)
        lines = [ln for ln in out.splitlines() if ln.startswith("SEEN ")]
        assert lines, out + err
        seen = json.loads(lines[-1][5:])
        assert seen["uid"] == 65534 and seen["helper"] == 42 and seen["csv"] == "x,y\n1,2\n"
        assert seen["write"] in (13, 30)  # EACCES or EROFS: read-only
        assert (data / "helper.py").read_text() == "ANSWER = 42\n"
    finally:
        shutil.rmtree(home, ignore_errors=True)


# -- nbgrader's quickstart course, end to end -------------------------------------------------
def answer(nb, grade_id: str, code: str) -> None:
    """Write ``code`` into the body of the answer cell ``grade_id`` of a released notebook."""
    (cell,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    assert STUB in cell.source
    cell.source = cell.source.replace(STUB, textwrap.indent(textwrap.dedent(code).strip(), "    "))


SQUARES = """
if n < 1:
    raise ValueError("n must be at least 1")
return [i ** 2 for i in range(1, n + 1)]
"""


def submissions(course: Path, where: Path) -> dict[str, Path]:
    """Five students' ps1 folders: the solution, the untouched release, three others."""
    release = course / "release" / "ps1"
    folders = {}
    for name, folder in (("solution", course / "source" / "ps1"), ("stub", release)):
        folders[name] = shutil.copytree(folder, where / name)
    p1 = nbformat.read(release / "problem1.ipynb", as_version=4)
    # off by one, and no ValueError: fails everything but "uses squares"
    wrong = nbformat.from_dict(json.loads(json.dumps(p1)))
    answer(wrong, "squares", "return [i ** 2 for i in range(n)]")
    answer(wrong, "sum_of_squares", "return sum(squares(n))")
    # right, but sum_of_squares reimplemented; written answers filled in (graded by hand)
    partial = nbformat.from_dict(json.loads(json.dumps(p1)))
    answer(partial, "squares", SQUARES)
    answer(partial, "sum_of_squares", "return sum(i * i for i in range(1, n + 1))")
    for cell in partial.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "sum_of_squares_equation":
            cell.source = "$\\sum_{i=1}^n i^2$"
    # right, but squares writes to stderr: nbgrader fails every test cell that shows it
    noisy = nbformat.from_dict(json.loads(json.dumps(p1)))
    answer(noisy, "squares", "import sys\n\nprint('debug', file=sys.stderr)\n" + SQUARES)
    answer(noisy, "sum_of_squares", "return sum(squares(n))")
    for name, nb in (("wrong", wrong), ("partial", partial), ("noisy", noisy)):
        folder = where / name
        shutil.copytree(release, folder)
        nbformat.write(nb, folder / "problem1.ipynb")
        folders[name] = folder
    return folders


def nbgrader_autograde(course: Path, students: dict[str, Path]) -> dict:
    """Plain ``nbgrader autograde`` of ``students`` in ``course``: scores by student and cell."""
    nbgrader(course, "generate_assignment", "ps1")
    for student, folder in students.items():
        shutil.copytree(folder, course / "submitted" / student / "ps1")
    nbgrader(course, "autograde", "ps1", "--force")
    return gradebook_scores(f"sqlite:///{course / 'gradebook.db'}", list(students))


def gradebook_scores(db_url: str, students: list[str]) -> dict:
    with Gradebook(db_url) as gb:
        found = {}
        for student in students:
            sub = gb.find_submission("ps1", student)
            cells = {
                (nb.name, g.name): (g.auto_score, g.needs_manual_grade)
                for nb in sub.notebooks
                for g in nb.grades
            }
            found[student] = (sub.score, sub.max_score, cells)
        return found


@needs_sandbox
@pytest.mark.slow
def test_quickstart_course_released_and_graded_as_nbgrader_grades_it(tmp_path):
    course = quickstart(tmp_path / "dnncourse")
    release(["ps1"], root=course)  # validated in the test below (grading two more students)
    released = course / "release" / "ps1"
    assert sorted(p.name for p in released.iterdir()) == [
        "jupyter.png",
        "problem1.ipynb",
        "problem2.ipynb",
    ]
    header = nbformat.read(released / "problem1.ipynb", as_version=4).cells[0].source
    assert header.startswith("Before you turn this problem in")  # the course's header notebook
    students = submissions(course, tmp_path / "students")
    results = {
        r.student: r
        for r in grade("ps1", tmp_path / "students", tmp_path / "out", jobs=2, root=course)
    }
    ours = gradebook_scores(f"sqlite:///{tmp_path / 'out' / 'gradebook.db'}", list(students))
    theirs = nbgrader_autograde(quickstart(tmp_path / "nbgrader"), students)
    table = [(s, ours[s][0], theirs[s][0], ours[s][1]) for s in students]
    print("\n".join(f"{s:<8} dnncourse {a:g}  nbgrader {b:g}  of {m:g}" for s, a, b, m in table))
    assert ours == theirs
    assert {s: ours[s][0] for s in students} == {
        "solution": 3.0,  # every automatic point; 10 are graded by hand
        "stub": 0.0,
        "wrong": 0.5,
        "partial": 2.5,
        "noisy": 0.5,
    }
    kinds = {c.grade_id: c.kind for c in results["wrong"].checks}
    assert kinds["correct_squares"] == "assert" and results["wrong"].assert_score == 0.5
    assert all(r.status == "ok" for r in results.values()), results
    page = (tmp_path / "out" / "feedback" / "wrong" / "problem1.html").read_text()
    assert "raised AssertionError" in page and "inside your notebook" in page


@needs_sandbox
@pytest.mark.slow
def test_quickstart_course_without_its_image(tmp_path):
    course = quickstart(tmp_path)
    (course / "source" / "ps1" / "jupyter.png").unlink()
    validation = release_and_validate(["ps1"], root=course)["ps1"]
    assert validation.problems == []  # solution every automatic point, stub zero, no leak
    (asserted,) = [w for w in validation.warnings if "decided by their asserts" in w]
    assert "problem1/correct_squares" in asserted and "problem1/squares_invalid_input" in asserted
    assert any("10 of 13 points are graded by hand" in w for w in validation.warnings)
    assert sorted(p.name for p in (course / "release" / "ps1").iterdir()) == [
        "problem1.ipynb",
        "problem2.ipynb",
    ]


# -- probes and asserts in one assignment, a CSV data set and a helper module ------------------
LAB_TESTS = {
    "fit_probe": (
        2,
        '"""Check that fit_line recovers the line through the data set."""\n'
        "slope, intercept = fit_line(X, y)\n"
        "assert abs(slope - 2) < 1e-9, f'expected slope 2, got {slope}'\n"
        "### BEGIN HIDDEN TESTS\n"
        "from dnncourse.grading.probe import probe\n"
        "\n"
        "# exact data y = 2x + 1: least squares in float64 is exact to ~1e-15; a swapped\n"
        "# or unfitted answer is off by 1 or more\n"
        "probe('fit', lambda: list(fit_line(X, y)), atol=1e-9, what='the data set')\n"
        "probe('shifted', lambda: list(fit_line(X, y + 3)), atol=1e-9, what='y + 3')\n"
        "### END HIDDEN TESTS",
    ),
    "fit_asserts": (
        1,
        '"""Check the intercept (a classic nbgrader test)."""\n'
        "### BEGIN HIDDEN TESTS\n"
        "assert abs(fit_line(X, y)[1] - 1) < 1e-9\n"
        "assert abs(fit_line(X, 3 * y)[1] - 3) < 1e-9\n"
        "### END HIDDEN TESTS",
    ),
}


def guide_probe() -> str:
    """The guide's example of an assert test turned into a probe (its second code block of
    the section "Classic nbgrader tests")."""
    text = (ROOT / "book" / "instructors.md").read_text()
    section = text[text.index("## Classic nbgrader tests") :]
    return section.split("```python\n")[2].split("```")[0].strip()


def lab_course(root: Path) -> Path:
    """A course of our layout with one assignment: a CSV in a subfolder, a helper module,
    probes and asserts (and the guide's probe version of nbgrader's ``squares`` test)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "nbgrader_config.py", root / "nbgrader_config.py")
    lab = root / "solutions" / "lab"
    (lab / "data").mkdir(parents=True)
    rows = "\n".join(f"{x},{2 * x + 1}" for x in range(-3, 5))
    (lab / "data" / "points.csv").write_text(f"x,y\n{rows}\n")
    (lab / "helpers.py").write_text(
        "import numpy as np\n\n\ndef load_points(path):\n"
        "    data = np.loadtxt(path, delimiter=',', skiprows=1)\n"
        "    return data[:, 0], data[:, 1]\n"
    )
    meta = {"schema_version": 3, "locked": False}
    cells = [
        new_markdown_cell(
            "Fit a line to `data/points.csv`. For example, `fit_line(X, 3 * y)` gives "
            "an intercept of 3:\n\n    assert abs(fit_line(X, 3 * y)[1] - 3) < 1e-9"
        ),
        new_code_cell("from helpers import load_points\n\nX, y = load_points('data/points.csv')"),
        new_code_cell(
            "import numpy as np\n\n\ndef fit_line(X, y):\n    ### BEGIN SOLUTION\n"
            "    A = np.stack([X, np.ones_like(X)], axis=1)\n"
            "    slope, intercept = np.linalg.lstsq(A, y, rcond=None)[0]\n"
            "    return float(slope), float(intercept)\n    ### END SOLUTION",
            metadata={"nbgrader": {**meta, "grade": False, "solution": True, "grade_id": "fit"}},
        ),
    ]
    squares = "def squares(n):\n    ### BEGIN SOLUTION" + textwrap.indent(SQUARES, "    ")
    solution = {**meta, "grade": False, "solution": True, "grade_id": "squares"}
    cells.append(new_code_cell(squares + "    ### END SOLUTION", metadata={"nbgrader": solution}))
    for gid, (points, source) in {**LAB_TESTS, "squares_probe": (1, guide_probe())}.items():
        nbgrader_meta = {**meta, "grade": True, "solution": False, "grade_id": gid}
        cells.append(
            new_code_cell(source, metadata={"nbgrader": {**nbgrader_meta, "points": points}})
        )
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, lab / "lab.ipynb")
    return root


@needs_sandbox
@pytest.mark.slow
def test_probes_asserts_a_data_set_and_a_helper_module(tmp_path):
    course = lab_course(tmp_path / "course")
    validation = release_and_validate(["lab"], root=course)["lab"]
    assert validation.problems == []  # solution 3/3, stub 0; the statement's hint no leak
    assert [w for w in validation.warnings if "lab/fit_asserts" in w]
    assert not [w for w in validation.warnings if "fit_probe" in w]
    released = course / "exercises" / "lab"
    assert sorted(p.relative_to(released).as_posix() for p in released.rglob("*.*")) == [
        "data/points.csv",
        "helpers.py",
        "lab.ipynb",
    ]
    stub = nbformat.read(released / "lab.ipynb", as_version=4)
    students = tmp_path / "students"
    for name, body in {
        "swapped": "    return 1.0, 2.0",  # wrong: both cells fail
        # wrong, and hides every error of its process: the assert cell is fooled (as in
        # plain nbgrader), the probes are not
        "forger": "    get_ipython().showtraceback = lambda *a, **k: None\n    return 0.0, 0.0",
    }.items():
        nb = nbformat.from_dict(json.loads(json.dumps(stub)))
        (cell,) = [c for c in nb.cells if "def fit_line" in c.source]
        cell.source = cell.source.replace(STUB, body)
        if name == "swapped":  # and squares off by one, as in nbgrader's example
            (cell,) = [c for c in nb.cells if "def squares" in c.source]
            cell.source = cell.source.replace(STUB, "    return [i**2 for i in range(n)]")
        if name == "forger":
            cell.source += "\n\nfit_line(X, y)"  # arms it
        shutil.copytree(released, students / name)
        nbformat.write(nb, students / name / "lab.ipynb")
    results = {r.student: r for r in grade("lab", students, tmp_path / "out", jobs=2, root=course)}
    points = {s: {c.grade_id: (c.points, c.kind) for c in r.checks} for s, r in results.items()}
    assert points["swapped"] == {
        "fit_probe": (0.0, "probe"),
        "fit_asserts": (0.0, "assert"),
        "squares_probe": (0.0, "probe"),
    }
    assert points["forger"] == {
        "fit_probe": (0.0, "probe"),
        "fit_asserts": (1.0, "assert"),
        "squares_probe": (0.0, "probe"),
    }
    assert results["forger"].assert_score == 1.0 and results["forger"].status == "ok"
    with open(tmp_path / "out" / "grades.csv") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    assert rows["forger"]["assert_score"] == "1.0" and rows["swapped"]["assert_score"] == "0.0"
