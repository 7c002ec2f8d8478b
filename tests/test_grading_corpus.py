"""A class of broken and hostile hw1 submissions, graded in one batch with two jobs.

Every submission is built here from the real homework: the released notebook
(``exercises/hw1``) with answer cells filled from the instructor's solution, then broken or
made hostile. Each student must get exactly one row with the score it deserves and the
status saying what happened. hw1's points: test_cubic_gradients 3, test_central_difference 3,
test_gradient_descent_step 2, test_fit_cubic 2 (10 in all).

The in-process attacks that beat the old in-kernel guard (skipping the test cells through a
wrapped ``do_execute``, forging records found with ``gc``, a patched ``session.send``, ``torch``
rebound in the test's globals, a tensor that agrees with every comparison) score zero, and a
function that reads the hidden tests with ``linecache`` gets its points but shows nothing of
them in the feedback. Each attack prints ``armed: <name>`` into the graded notebook, so the
test sees that it really ran.
"""

import csv
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dnncourse.homework import tool_env

ROOT = Path(__file__).resolve().parents[1]
HW = "hw1"
NAME = "hw1_polynomial_gradients"
SOLUTION = ROOT / "solutions" / HW / f"{NAME}.ipynb"
RELEASE = ROOT / "exercises" / HW / f"{NAME}.ipynb"
MARKER = re.compile(r"^\s*### (BEGIN|END) SOLUTION\n", flags=re.MULTILINE)

WRONG = {  # answers that run but are wrong
    "cubic_gradients": "def cubic_gradients(x, y, coeffs):\n    return 0 * coeffs\n",
    "central_difference": "def central_difference(f, w, h=1e-5):\n    return 0 * w\n",
    "gradient_descent_step": "def gradient_descent_step(params, grads, lr):\n    return None\n",
    "fit_cubic": "def fit_cubic(x, y, coeffs, lr, num_steps):\n    return coeffs, [0.0]\n",
}
PATCH_COMPARISONS = """\
import numpy, torch, torch.testing
torch.allclose = lambda *args, **kwargs: True
torch.equal = lambda *args, **kwargs: True
numpy.allclose = lambda *args, **kwargs: True
torch.testing.assert_close = lambda *args, **kwargs: None
"""
INPUT_TRANSFORMER = """\
def _blank(lines):
    return []
get_ipython().input_transformers_cleanup.append(_blank)
"""
HIDE_TRACEBACKS = """\
import sys
ip = get_ipython()
ip.showtraceback = lambda *args, **kwargs: None
ip._showtraceback = lambda *args, **kwargs: None
sys.excepthook = lambda *args: None
"""


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _gid(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def answers() -> dict[str, str]:
    """The instructor's answers, markers removed (what a good student writes)."""
    return {
        _gid(c): MARKER.sub("", "".join(c["source"]))
        for c in _read(SOLUTION)["cells"]
        if c.get("metadata", {}).get("nbgrader", {}).get("solution")
    }


def notebook(correct=(), wrong=(), replace=None) -> dict:
    """The released notebook with answers: ``correct`` ones right, ``wrong`` ones wrong,
    ``replace`` = {grade_id: source} for anything else; the rest stay stubs."""
    nb = _read(RELEASE)
    good = answers()
    for cell in nb["cells"]:
        gid = _gid(cell)
        if gid in correct:
            cell["source"] = good[gid]
        if gid in wrong:
            cell["source"] = WRONG[gid]
        if replace and gid in replace:
            cell["source"] = replace[gid]
    return nb


ALL = ("cubic_gradients", "central_difference", "gradient_descent_step", "fit_cubic")


def code(source: str, cell_id: str) -> dict:
    return {
        "cell_type": "code",
        "id": cell_id,
        "metadata": {},
        "execution_count": None,
        "outputs": [],
        "source": source,
    }


def insert_after(nb: dict, gid: str | None, cell: dict) -> dict:
    """Insert ``cell`` after the cell ``gid`` (at the top if None)."""
    index = 0 if gid is None else [_gid(c) for c in nb["cells"]].index(gid) + 1
    nb["cells"].insert(index, cell)
    return nb


def build(folder: Path) -> dict[str, tuple[float, str]]:
    """Write the corpus under ``folder``; returns student -> (deserved score, status)."""
    expected = {}

    def put(student, nb=None, score=0.0, status="ok", filename=f"{NAME}.ipynb", raw=None):
        (folder / student).mkdir(parents=True)
        path = folder / student / filename
        if raw is not None:
            path.write_bytes(raw)
        elif nb is not None:
            path.write_text(json.dumps(nb, indent=1))
        expected[student] = (score, status)

    full = json.dumps(notebook(correct=ALL), indent=1)
    put("solution", notebook(correct=ALL), 10)
    put("stub", notebook(), 0)
    put("truncated", raw=full[: len(full) // 2].encode(), status="invalid notebook")
    put("empty_file", raw=b"", status="invalid notebook")
    put("renamed", notebook(correct=ALL), 10, "renamed notebook", filename="my homework.ipynb")
    put("missing", status="missing notebook")
    (folder / "missing" / "answers.txt").write_text("I forgot the notebook")
    put("partial", notebook(correct=("cubic_gradients", "gradient_descent_step")), 5)

    nb = notebook(correct=ALL)  # a deleted test cell is put back: the answer is right
    nb["cells"] = [c for c in nb["cells"] if _gid(c) != "test_fit_cubic"]
    put("deleted_test", nb, 10)

    nb = notebook(correct=ALL[1:], wrong=("cubic_gradients",))
    for cell in nb["cells"]:
        if _gid(cell) == "test_cubic_gradients":
            cell["source"] = "assert True"
    put("edited_test", nb, 5)  # fit_cubic uses the wrong gradients: 3 + 2 lost

    nb = notebook(correct=ALL)  # duplicated cell ids (plain nbgrader aborts the class)
    for cell in nb["cells"]:
        cell["id"] = "same-id"
    copy = json.loads(json.dumps(next(c for c in nb["cells"] if _gid(c) == "test_fit_cubic")))
    nb["cells"].append(copy)  # and a duplicated test cell
    put("duplicated_ids", nb, 10)

    nb = notebook(correct=ALL[:2] + ALL[3:], wrong=("gradient_descent_step",))
    for cell in nb["cells"]:
        if _gid(cell) == "test_gradient_descent_step":
            cell["metadata"]["nbgrader"]["grade"] = False
        if _gid(cell) == "test_cubic_gradients":
            cell["metadata"]["nbgrader"]["points"] = 1000
    # a wrong step also breaks fit_cubic (it uses the step): 3 + 3 of 10
    put("changed_metadata", nb, 6)

    exit_fit = "import os\n\ndef fit_cubic(x, y, coeffs, lr, num_steps):\n    os._exit(1)\n"
    put(
        "kernel_exit", notebook(correct=ALL[:3], replace={"fit_cubic": exit_fit}), 8, "kernel died"
    )

    put("input_transformer", insert_after(notebook(), None, code(INPUT_TRANSFORMER, "a1")), 0)
    put("hidden_tracebacks", insert_after(notebook(), "setup", code(HIDE_TRACEBACKS, "a2")), 0)
    nb = insert_after(notebook(wrong=ALL), "setup", code(PATCH_COMPARISONS, "a3"))
    put("patched_allclose", nb, 0)

    sneaky = (
        "def cubic_gradients(x, y, coeffs):\n"
        "    torch.allclose = lambda *args, **kwargs: True\n"
        "    return torch.zeros_like(coeffs)\n"
    )  # patches during the test: caught after the cell (fit_cubic uses it too)
    put("patch_during_test", notebook(correct=ALL[1:], replace={"cubic_gradients": sneaky}), 5)

    loop = (
        "import signal\n\ndef gradient_descent_step(params, grads, lr):\n"
        "    signal.signal(signal.SIGINT, signal.SIG_IGN)\n    while True:\n        pass\n"
    )
    put(
        "infinite_loop",
        notebook(correct=ALL[:2] + ALL[3:], replace={"gradient_descent_step": loop}),
        6,
        "timeout",
    )

    bomb = (
        "def central_difference(f, w, h=1e-5):\n    hog = []\n    while True:\n"
        "        hog.append(bytearray(2**28))\n"
    )
    put(
        "memory_bomb",
        notebook(correct=ALL[:1] + ALL[2:], replace={"central_difference": bomb}),
        7,
        "memory limit",
    )

    flood = "for i in range(30_000):\n    print('spam', i)"
    put(
        "output_flood",
        insert_after(notebook(correct=ALL), "setup", code(flood, "a4")),
        10,
        "output limit",
    )

    forge = (  # a fake result line on the worker's stdout, and the worker's stdin read
        "import json, os\nos.read(0, 100)\nrow = {'student_id': 'forger', 'score': 10.0}\n"
        "os.write(1, ('@@dnncourse-result ' + json.dumps(row) + '\\n').encode())"
    )
    put("forger", insert_after(notebook(), None, code(forge, "a5")), 0)

    nb = notebook(correct=ALL)
    insert_after(nb, "cubic_gradients", code("print(cubic_gradients)", "x1"))
    insert_after(
        nb, "intro", {"cell_type": "markdown", "id": "x2", "metadata": {}, "source": "My notes"}
    )
    nb["cells"].append(code("helper = 42", "x3"))
    put("extra_cells", nb, 10)

    # the in-process attacks that beat the in-kernel guard (issue 11): each one prints
    # "armed: <name>" once installed, so the test sees that it really ran
    for name, attack in ATTACKS.items():
        put(name, insert_after(notebook(wrong=ALL), "setup", code(attack, f"atk-{name}")), 0)
    put("rebound_torch", notebook(replace=REBIND_TORCH), 0)
    put("agreeable_tensor", notebook(replace=AGREEABLE), 0)
    nb = notebook(correct=ALL[1:], replace=LEAK)
    nb["cells"].append(code(SHOW_LEAK, "leak-show"))
    put("linecache_leak", nb, 10)
    return expected


ATTACKS = {
    "skipped_tests": """\
kernel = get_ipython().kernel
original = kernel.do_execute


async def do_execute(code, *args, **kwargs):  # reached in the old guard through its closure
    if "Check that" in code:
        code = "pass"
    return await original(code, *args, **kwargs)


kernel.do_execute = do_execute
print("armed: skipped_tests")
""",
    "forged_records": """\
import gc

import dnncourse.grading.probe

for found in gc.get_objects():  # the old guard's receipts were found like this
    if isinstance(found, dict) and found.get("MIME") == dnncourse.grading.probe.MIME:
        emit = found["_emit"]

        def forged(payload, emit=emit):
            payload.update(raised=None, value=0.0, calls={})
            emit(payload)
            emit(payload)

        found["_emit"] = forged
        print("armed: forged_records")
""",
    "patched_send": """\
session = get_ipython().kernel.session
original_send = session.send


def send(stream, msg_or_type, content=None, *args, **kwargs):
    if isinstance(msg_or_type, str) and msg_or_type == "error":
        return None
    if isinstance(content, dict) and content.get("status") == "error":
        content = {**content, "status": "ok"}
    return original_send(stream, msg_or_type, content, *args, **kwargs)


session.send = send
print("armed: patched_send")
""",
}
REBIND_TORCH = {
    "cubic_gradients": """\
import sys


class Agree:
    def __getattr__(self, name):
        return getattr(sys.modules["torch"], name)

    def allclose(self, *args, **kwargs):
        return True


def cubic_gradients(x, y, coeffs):
    sys._getframe(1).f_globals["torch"] = Agree()  # the test cell's torch
    print("armed: rebound_torch")
    return 0 * coeffs
""",
}
AGREEABLE = {
    "cubic_gradients": """\
class Agreeable(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.__repr__, torch.Tensor.tolist, torch.Tensor.__format__):
            return super().__torch_function__(func, types, args, kwargs)
        return True


def cubic_gradients(x, y, coeffs):
    print("armed: agreeable_tensor")
    return torch.zeros(4, dtype=coeffs.dtype, device=coeffs.device).as_subclass(Agreeable)
""",
}
LEAK = {
    "cubic_gradients": "import builtins\nimport inspect\nimport linecache\n\n"
    + answers()["cubic_gradients"].replace(
        "    a, b, c, d = coeffs\n",
        "    if not hasattr(builtins, 'leaked'):  # the caller's source: the hidden tests\n"
        "        builtins.leaked = ''.join(linecache.getlines(inspect.stack()[1].filename))\n"
        "        print(builtins.leaked)\n"
        "    a, b, c, d = coeffs\n",
    ),
}
SHOW_LEAK = "import builtins\n\nprint(builtins.leaked)\nprint('armed: linecache_leak')"


@pytest.mark.slow
def test_a_hostile_class_gets_the_grades_it_deserves(tmp_path):
    subs, out = tmp_path / "submissions", tmp_path / "out"
    expected = build(subs)
    assert len(expected) >= 15
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dnncourse.cli",
            "grade",
            HW,
            str(subs),
            "--out",
            str(out),
            "--jobs",
            "2",
            "--cell-timeout",
            "30",
            "--timeout",
            "120",
            "--memory-limit",
            "3072",
            "--no-progress",
        ],
        cwd=ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out / "grades.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["student_id"] for r in rows) == sorted(expected), "one row per student"
    got = {r["student_id"]: (float(r["score"]), r["status"]) for r in rows}
    wrong = {
        s: (got[s], expected[s], r["detail"])
        for r in rows
        if got[(s := r["student_id"])] != expected[s]
    }
    assert not wrong, f"(got, expected, detail): {wrong}"
    assert all(float(r["max_score"]) == 10 for r in rows)
    hidden = hidden_test_lines()
    for page in (out / "feedback").rglob("*.html"):
        text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))
        shown = [line for line in hidden if line in text]
        assert not shown, f"{page} shows hidden tests: {shown[:2]}"
    for student in expected:
        assert (out / "feedback" / student / f"{NAME}.html").is_file()
    graded = out / "course" / "autograded"
    for student in [*ATTACKS, "rebound_torch", "agreeable_tensor", "linecache_leak"]:
        text = (graded / student / HW / f"{NAME}.ipynb").read_text()
        assert f"armed: {student}" in text, f"the attack of {student} did not run"
    leaked = (graded / "linecache_leak" / HW / f"{NAME}.ipynb").read_text()
    assert any(json.dumps(line)[1:-1] in leaked for line in hidden), "the leak did not happen"


def hidden_test_lines(min_length: int = 12) -> set[str]:
    """Lines of the hidden tests only (answers may legitimately appear in feedback)."""
    region = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.DOTALL)
    lines = set()
    for cell in _read(SOLUTION)["cells"]:
        for match in region.finditer("".join(cell["source"])):
            lines |= {
                s.strip() for s in match.group(1).splitlines() if len(s.strip()) >= min_length
            }
    return lines
