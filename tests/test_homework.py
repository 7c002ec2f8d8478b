"""Round trip of every assignment under solutions/, written once for all of them.

For each assignment: nbgrader generates the student version, and it equals the committed
exercises/; the instructor notebook autogrades to full marks and the untouched student
notebook to zero; no solution line or hidden test appears anywhere under exercises/.
A new assignment is covered by adding its files, nothing else.
"""

import json
import shutil
from pathlib import Path

import pytest
from nbgrader.api import Gradebook

from dnncourse.homework import (
    ROOT_MARKERS,
    assignments,
    generate,
    hidden_lines,
    nbgrader,
    scratch_course,
)

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = assignments(ROOT)


def comparable(path: Path) -> dict:
    """A notebook as JSON, minus what legitimately differs between two generations."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("execution", None)
    return nb


@pytest.fixture(scope="module", params=ASSIGNMENTS)
def graded(request, tmp_path_factory):
    """Generate the assignment in a scratch course and autograde two submissions."""
    assignment = request.param
    course = scratch_course(ROOT, tmp_path_factory.mktemp(assignment))
    released = generate(assignment, course)
    for student, source in (("solution", ROOT / "solutions"), ("stub", ROOT / "exercises")):
        nbgrader(course, "db", "student", "add", student)
        shutil.copytree(source / assignment, course / "submitted" / student / assignment)
    nbgrader(course, "autograde", assignment, "--force")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {
            student: (
                gb.find_submission(assignment, student).score,
                gb.find_submission(assignment, student).max_score,
            )
            for student in ("solution", "stub")
        }
    return assignment, released, scores


@pytest.mark.slow
def test_exercises_equal_a_fresh_generation(graded):
    assignment, released, _ = graded
    committed = ROOT / "exercises" / assignment
    fresh = sorted(p.relative_to(released) for p in released.rglob("*") if p.is_file())
    ours = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
    assert ours == fresh, f"exercises/{assignment} holds {ours}, a fresh generation {fresh}"
    for rel in fresh:
        if rel.suffix == ".ipynb":
            assert comparable(committed / rel) == comparable(released / rel), (
                f"exercises/{assignment}/{rel} differs from a fresh generation: "
                "run `make exercises` and commit the result (never edit exercises/ by hand)"
            )


@pytest.mark.slow
def test_solution_scores_full_marks(graded):
    assignment, _, scores = graded
    score, max_score = scores["solution"]
    assert max_score > 0, f"{assignment} has no points"
    assert score == max_score, (
        f"the instructor notebook of {assignment} scored {score}/{max_score}"
    )


@pytest.mark.slow
def test_untouched_student_notebook_scores_zero(graded):
    assignment, _, scores = graded
    score, max_score = scores["stub"]
    assert score == 0, f"the untouched student notebook of {assignment} scored {score}/{max_score}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_nothing_leaks_into_exercises(assignment):
    secret = set()
    for notebook in (ROOT / "solutions" / assignment).glob("*.ipynb"):
        secret |= hidden_lines(notebook)
    assert secret, f"solutions/{assignment} has no solution or hidden-test region"
    for path in (ROOT / "exercises").rglob("*"):
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for marker in ROOT_MARKERS:
            assert marker not in text, f"{path} contains the marker {marker!r}"
        if path.suffix == ".ipynb":
            cells = json.loads(text)["cells"]
            lines = {s.strip() for c in cells for s in "".join(c["source"]).splitlines()}
        else:
            lines = {s.strip() for s in text.splitlines()}
        leaked = sorted(lines & secret)
        assert not leaked, f"{path} shows lines of a solution or hidden test: {leaked[:3]}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_instructor_notebooks_have_no_outputs(assignment):
    for notebook in (ROOT / "solutions" / assignment).glob("*.ipynb"):
        cells = json.loads(notebook.read_text())["cells"]
        assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), (
            f"{notebook} is committed with outputs: clear them"
        )


MAX_CODE_LINE = 80  # as in tests/test_book.py: the released notebooks are book pages too


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_code_fits_the_column(assignment):
    """Homework code, instructor's and released: at most 80 characters a line, no fmt: skip."""
    long, escapes = [], []
    for folder in ("solutions", "exercises"):
        notebooks = sorted((ROOT / folder / assignment).glob("*.ipynb"))
        assert notebooks, f"no notebook in {folder}/{assignment}"
        for path in notebooks:
            name = path.relative_to(ROOT)
            cells = json.loads(path.read_text(encoding="utf8"))["cells"]
            for index, cell in enumerate(cells):
                if cell["cell_type"] != "code":
                    continue
                source = "".join(cell["source"])
                if "fmt: skip" in source or "fmt: off" in source:
                    escapes.append(f"{name} cell {index}")
                long += [
                    f"{name} cell {index}: {len(line)} characters: {line[:50]!r}"
                    for line in source.splitlines()
                    if len(line) > MAX_CODE_LINE
                ]
    assert not long, (
        f"{assignment}: {len(long)} code lines over {MAX_CODE_LINE} characters (ruff formats "
        "solutions/ at 80, comments and strings wrap by hand; then `dnncourse release`):\n"
        + "\n".join(long)
    )
    assert not escapes, f"{assignment}: a formatter escape in a code cell: {escapes}"
