"""Mutation check of the hidden tests: wrong answers lose points, other correct answers don't.

For each homework, ``tests/mutants/<hw>.py`` holds plausible wrong answers written by hand (one
defect each: a wrong constant, a missing clone, a schedule stepped too often, ...) and correct
answers written another way. Each becomes a student: the released notebook with the
instructor's answers, some replaced. The class is graded in one batch with two jobs, and
every wrong answer must lose the points of its question (that test cell scores zero) while
every correct one earns full marks.
"""

import importlib.util
import json
import re
from pathlib import Path

import pytest
from nbgrader.api import Gradebook

from dnncourse.grading.api import grade
from dnncourse.grading.course import COURSE_ID
from dnncourse.homework import assignments

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^\s*### (BEGIN|END) SOLUTION\n", flags=re.MULTILINE)


def mutants(hw: str):
    spec = importlib.util.spec_from_file_location(
        f"mutants_{hw}", ROOT / "tests/mutants" / f"{hw}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.WRONG, module.CORRECT


def _gid(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def student(hw: str, replace: dict[str, str]) -> tuple[str, dict]:
    """(notebook name, notebook): the release with the instructor's answers, some replaced."""
    (solution,) = (ROOT / "solutions" / hw).glob("*.ipynb")
    answers = {
        _gid(c): MARKER.sub("", "".join(c["source"]))
        for c in json.loads(solution.read_text())["cells"]
        if c.get("metadata", {}).get("nbgrader", {}).get("solution")
    }
    unknown = set(replace) - set(answers)
    assert not unknown, f"{hw}: no answer cell {unknown}"
    nb = json.loads((ROOT / "exercises" / hw / solution.name).read_text())
    for cell in nb["cells"]:
        gid = _gid(cell)
        if gid in answers:
            cell["source"] = replace.get(gid, answers[gid])
    return solution.stem, nb


@pytest.mark.slow
@pytest.mark.parametrize("hw", assignments(ROOT))
def test_wrong_answers_lose_points_and_other_correct_answers_do_not(hw, tmp_path):
    wrong, correct = mutants(hw)
    assert len(wrong) >= 12 and len(correct) >= 3, "12 wrong and 3 correct answers at least"
    ids = {}
    for i, (name, (_question, replace)) in enumerate(wrong.items()):
        ids[f"wrong{i:02d}"] = (name, replace)
    for i, (name, replace) in enumerate(correct.items()):
        ids[f"correct{i:02d}"] = (name, replace)
    for sid, (_, replace) in ids.items():
        notebook, nb = student(hw, replace)
        (tmp_path / "subs" / sid).mkdir(parents=True)
        (tmp_path / "subs" / sid / f"{notebook}.ipynb").write_text(json.dumps(nb))
    rows = {
        r.student: r
        for r in grade(hw, tmp_path / "subs", tmp_path / "out", jobs=2, progress=False)
    }
    with Gradebook(f"sqlite:///{tmp_path / 'out' / 'gradebook.db'}", COURSE_ID) as gb:
        scores = {
            sid: {
                g.name: (g.score, g.max_score)
                for g in gb.find_submission_notebook(notebook, hw, sid).grades
            }
            for sid in ids
        }
    failures = []
    for i, (name, (question, _)) in enumerate(wrong.items()):
        sid = f"wrong{i:02d}"
        got, most = scores[sid][question]
        if got >= most or rows[sid].status != "ok":
            failures.append(
                f"wrong answer {name!r}: {question} scored {got}/{most} ({rows[sid].status})"
            )
    for i, name in enumerate(correct):
        sid = f"correct{i:02d}"
        row = rows[sid]
        if row.score != row.max_score or row.status != "ok":
            lost = {q: s for q, s in scores[sid].items() if s[0] < s[1]}
            failures.append(f"correct answer {name!r} lost points: {lost} ({row.detail})")
    assert not failures, "\n".join(failures)
