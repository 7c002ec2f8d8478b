"""The statement's rules decided from the student's code (:mod:`dnncourse.grading.rules`).

Three kinds of test:

* precision: every solution notebook of hw1-hw4, every correct and every wrong answer of the
  mutation check, and ordinary student code around them (an autograd self-check at the top
  level, magics, a class with its own ``backward``) give no finding at all;
* the attack corpus (``tests/rule_attacks.py``): each attack's route is found, as a certain
  use (the cell fails) or as code the analysis cannot follow (the cell is held), in the cell
  it attacks; statically (fast) and then by grading (slow: each attack really ran and
  computed the right answer, since its message says every hidden check matched);
* the decision (:func:`rules.apply`) and where a held cell shows: ``grades.csv``'s ``review``
  column, the summary, the gradebook's "needs manual grade", the feedback page without the
  evidence.
"""

import csv
import json
import re
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook
from rule_attacks import ATTACKS

from dnncourse.grading import reference, rules, sandbox
from dnncourse.grading.api import grade
from dnncourse.grading.course import COURSE_ID
from dnncourse.grading.engine import summary
from dnncourse.grading.protocol import Check, Result, Status
from dnncourse.homework import assignments

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^\s*### (BEGIN|END) SOLUTION\n", flags=re.MULTILINE)
HWS = assignments(ROOT)


def solution_path(hw: str) -> Path:
    (path,) = (ROOT / "solutions" / hw).glob("*.ipynb")
    return path


def graded_notebook(hw: str, replace: dict, extra=()) -> nbformat.NotebookNode:
    """The notebook as the worker sees it after the rebuild: the instructor's test cells
    (hidden tests included), the answers of ``replace`` or the instructor's, ``extra`` cells."""
    nb = nbformat.read(solution_path(hw), as_version=4)
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            cell.source = replace.get(meta["grade_id"], MARKER.sub("", cell.source))
    for after, source in extra:
        ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]
        nb.cells.insert(ids.index(after) + 1, nbformat.v4.new_code_cell(source))
    return nb


_REFERENCES = {}


def references(hw: str, cache: Path) -> dict:
    if hw not in _REFERENCES:
        sandboxed = sandbox.problem() is None
        _REFERENCES[hw] = reference.records(solution_path(hw), cache, sandbox=sandboxed)
    return _REFERENCES[hw]


def findings(hw, replace, cache, extra=()) -> dict:
    verdicts = rules.analyze(graded_notebook(hw, replace, extra), references(hw, cache))
    return {
        gid: ([str(f) for f in v.used], [str(f) for f in v.opaque])
        for gid, v in verdicts.items()
        if v.used or v.opaque
    }


def mutants(hw: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"m_{hw}", ROOT / "tests/mutants" / f"{hw}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.WRONG, module.CORRECT


# -- precision --------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", HWS)
def test_solutions_and_every_mutant_have_no_finding(hw, shared_reference_cache):
    wrong, correct = mutants(hw)
    cases = {"the solution": {}, **correct, **{k: v for k, (_, v) in wrong.items()}}
    verdicts = rules.analyze(graded_notebook(hw, {}), references(hw, shared_reference_cache))
    assert verdicts, f"{hw}: some test cell has a rule (its probes watch names)"
    for name, replace in cases.items():
        assert findings(hw, replace, shared_reference_cache) == {}, name


ORDINARY = [  # what students write around their answers: never a finding
    # a self-check with autograd at the top level: the probes never reach it
    "x = torch.linspace(-1, 1, 5, requires_grad=True)\n"
    "c = torch.tensor([0.5, 1.0, -0.2, 0.1], requires_grad=True)\n"
    "loss = ((c[0] + c[1] * x - torch.sin(x)) ** 2).sum()\n"
    "loss.backward()\n"
    "print(c.grad, cubic_gradients(x.detach(), torch.sin(x.detach()), c.detach()))\n"
    "torch.testing.assert_close(c.grad, cubic_gradients(x.detach(), torch.sin(x), c))\n",
    "%timeit cubic_gradients(torch.ones(3), torch.ones(3), torch.ones(4))\n"
    "%matplotlib inline\n!ls\nimport numpy as np\nimport matplotlib.pyplot as plt\n",
    "%%time\nfor lr in [1e-3, 1e-2]:\n    print(lr, getattr(torch, 'float64'))\n",
    "import not_installed_here  # fails in the kernel: nothing ran\n",
    "print(type(torch.ones(1)).__name__, torch.ones(1).__class__)\n",
    "from IPython.display import Markdown, display\n\ndisplay(Markdown('**done**'))\n",
]


@pytest.mark.parametrize("source", ORDINARY, ids=range(len(ORDINARY)))
def test_ordinary_student_cells_are_not_flagged(source, shared_reference_cache):
    extra = [("cubic_gradients", source), ("fit_cubic", source)]
    assert findings("hw1", {}, shared_reference_cache, extra) == {}


def test_a_helper_followed_through_names_and_aliases(shared_reference_cache):
    helper = (
        "import torch.autograd as _ag\n\n\n"
        "def _helper(loss, c):\n    return _ag.grad(loss, c)[0]\n"
    )
    answer = (
        "def cubic_gradients(x, y, coeffs):\n"
        "    c = coeffs.detach().clone().requires_grad_(True)\n"
        "    a, b, cc, d = c\n"
        "    return _helper(((a + b * x + cc * x**2 + d * x**3 - y) ** 2).sum(), c)\n"
    )
    found = findings(
        "hw1", {"cubic_gradients": answer}, shared_reference_cache, [("setup", helper)]
    )
    assert found["test_cubic_gradients"] == (
        [
            "autograd (a cell added after 'setup', line 5)",  # _ag.grad
            "autograd (a cell added after 'setup', line 1)",  # the import it follows to
        ],
        [],
    )
    # the other answers do not call it: their cells are not touched (fit_cubic calls the
    # gradient, so its cell is)
    assert "test_central_difference" not in found and "test_fit_cubic" in found


def test_setattr_on_an_object_of_ones_own_is_plain_code(shared_reference_cache):
    own = (
        "class Stepper:\n"
        "    def __init__(self, **options):\n"
        "        for key, value in options.items():\n"
        "            setattr(self, key, value)\n\n\n"
        "def gradient_descent_step(params, grads, lr):\n"
        "    Stepper(lr=lr)\n"
        "    with torch.no_grad():\n"
        "        for p, g in zip(params, grads):\n"
        "            p -= lr * g\n"
    )
    assert findings("hw1", {"gradient_descent_step": own}, shared_reference_cache) == {}


def test_a_class_of_ones_own_with_backward_is_held_not_failed(shared_reference_cache):
    micrograd = """
class Value:
    def __init__(self, data):
        self.data = data

    def backward(self):
        return self.data


def cubic_gradients(x, y, coeffs):
    a, b, c, d = coeffs
    r = 2 * (a + b * x + c * x**2 + d * x**3 - y)
    Value(r).backward()
    return torch.stack([r.sum(), (r * x).sum(), (r * x**2).sum(), (r * x**3).sum()])
"""
    found = findings("hw1", {"cubic_gradients": micrograd}, shared_reference_cache)
    assert found["test_cubic_gradients"][0] == []
    assert found["test_cubic_gradients"][1] == [
        f"{rules.SHARED_NAME} (answer cell 'cubic_gradients', line 13)"
    ]


# -- the attack corpus, statically -----------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_each_attack_is_found(name, shared_reference_cache):
    attack = ATTACKS[name]
    found = findings(attack.hw, attack.replace, shared_reference_cache, attack.extra)
    assert attack.question in found, f"{name}: nothing found in {attack.question}"
    used, opaque = found[attack.question]
    if attack.outcome == "fails":
        assert used, f"{name}: a certain use expected, got {opaque}"
    else:
        assert not used and opaque, f"{name}: held expected, got {used}"


# -- the decision ----------------------------------------------------------------------------
def _check(passed=True):
    return Check("nb", "test_a", 3.0 if passed else 0.0, 3.0, passed, "all 5 hidden checks passed")


def test_a_certain_use_fails_the_cell_and_says_the_checks_matched():
    used = rules.Verdict(used=[rules.Finding(rules.AUTOGRAD, "answer cell 'a'", 4)])
    (check,) = rules.apply([_check()], {"test_a": used})
    assert (check.points, check.passed, check.review) == (0.0, False, "")
    assert check.message == (
        "every hidden check matched, but your code uses autograd (answer cell 'a', line 4), "
        "which the statement rules out"
    )
    (failed,) = rules.apply([_check(passed=False)], {"test_a": used})
    assert failed.message.endswith(
        "and your code uses autograd (answer cell 'a', line 4), which the statement rules out"
    )


def test_opaque_code_holds_a_passing_cell_for_review_at_zero():
    opaque = rules.Verdict(opaque=[rules.Finding(rules.EXEC, "answer cell 'a'", 2)])
    (check,) = rules.apply([_check()], {"test_a": opaque})
    assert (check.points, check.passed) == (0.0, False)
    assert check.review == "exec, eval or compile (answer cell 'a', line 2)"
    assert check.message == rules.HELD and "answer cell" not in check.message
    (failed,) = rules.apply([_check(passed=False)], {"test_a": opaque})
    assert failed == _check(passed=False), "a failing cell is not held: it has failed"


def test_held_cells_show_in_grades_csv_and_the_summary(tmp_path):
    held = Check("nb", "test_a", 0.0, 3.0, False, rules.HELD, review="exec (answer cell 'a')")
    row = Result("alice", "hw1", Status.OK, 7.0, 10.0, checks=(held, _check()))
    assert row.row()["review"] == "test_a: exec (answer cell 'a')"
    text = summary([row, Result("bob", "hw1", Status.OK, 10.0, 10.0)])
    assert "held for review: 1 cells of 1 students" in text
    assert "alice: test_a: exec (answer cell 'a')" in text


# -- the attack corpus, graded ----------------------------------------------------------------
def _graded_class(hw: str, tmp: Path):
    from test_mutants import student

    names = [n for n, a in ATTACKS.items() if a.hw == hw and a.graded]
    subs = tmp / "subs"
    for name in names:
        attack = ATTACKS[name]
        notebook, nb = student(hw, attack.replace)
        for after, source in attack.extra:
            ids = [c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb["cells"]]
            nb["cells"].insert(ids.index(after) + 1, nbformat.v4.new_code_cell(source))
        (subs / name).mkdir(parents=True)
        (subs / name / f"{notebook}.ipynb").write_text(json.dumps(nb))
    rows = {r.student: r for r in grade(hw, subs, tmp / "out", jobs=2, progress=False)}
    return names, rows, notebook


@pytest.mark.slow
@pytest.mark.parametrize("hw", HWS)
def test_attacks_compute_the_right_answer_and_score_zero_or_are_held(hw, tmp_path):
    names, rows, notebook = _graded_class(hw, tmp_path)
    assert names, f"{hw} has attacks"
    with open(tmp_path / "out" / "grades.csv") as f:
        csv_rows = {r["student_id"]: r for r in csv.DictReader(f)}
    text = (tmp_path / "out" / "summary.txt").read_text()
    with Gradebook(f"sqlite:///{tmp_path / 'out' / 'gradebook.db'}", COURSE_ID) as gb:
        manual = {
            name: {
                g.name: g.needs_manual_grade
                for g in gb.find_submission_notebook(notebook, hw, name).grades
            }
            for name in names
        }
    for name in names:
        attack, row = ATTACKS[name], rows[name]
        assert row.status == "ok", (name, row.status, row.detail)
        check = next(c for c in row.checks if c.grade_id == attack.question)
        assert check.points == 0.0, (name, check)
        if attack.outcome == "fails":
            # the control: without the rule every hidden check matched (the right answer)
            assert check.message.startswith("every hidden check matched, but your code uses")
            assert not check.review
        else:
            assert check.message == rules.HELD, (name, check.message)  # matched, held
            assert check.review and csv_rows[name]["review"].startswith(attack.question)
            assert f"  {name}: {attack.question}: " in text
            assert manual[name][attack.question] is True, "listed for a manual grade"
            page = (tmp_path / "out" / "feedback" / name / f"{notebook}.html").read_text()
            assert "held for review by the instructor" in page
            assert check.review.split(" (")[0] not in page, "the evidence stays with you"
    if hw != "hw3":
        return
    # a person decides: a manual grade in the gradebook, then the class graded again
    # (without --resume) counts it
    name = next(n for n in names if ATTACKS[n].outcome == "held")
    question = ATTACKS[name].question
    with Gradebook(f"sqlite:///{tmp_path / 'out' / 'gradebook.db'}", COURSE_ID) as gb:
        cell = gb.find_grade(question, notebook, hw, name)
        cell.manual_score = cell.max_score
        gb.db.commit()
        points = cell.max_score
    again = {
        r.student: r
        for r in grade(hw, tmp_path / "subs", tmp_path / "out", jobs=2, progress=False)
    }
    assert again[name].score == rows[name].score + points
    with open(tmp_path / "out" / "grades.csv") as f:
        assert float({r["student_id"]: r for r in csv.DictReader(f)}[name]["score"]) == (
            again[name].score
        )


# -- fair distribution tests (item 6) ---------------------------------------------------------
def test_ks_allows_rounding_but_not_a_wrong_share_or_scale():
    import numpy as np
    import torch

    from dnncourse.grading import verdict

    gen = torch.Generator().manual_seed(0)
    x = torch.full((100_000,), 3.0)
    keep = torch.rand(x.shape, generator=gen) >= 0.1
    want = (x * keep / 0.9).numpy()  # float32 arithmetic
    rounded = (x.double() * keep / 0.9).float().numpy()  # in float64, then rounded: 1 ulp off
    assert not np.array_equal(np.unique(want), np.unique(rounded))
    plain = verdict.ks_statistic(rounded, want)
    assert plain > 0.8, "without the slack, 1 ulp moves the whole kept share"

    def encode(values):
        return verdict.Tensor("float32", values.shape, "cpu", values)

    assert verdict.compare_ks(encode(rounded), encode(want), 1e-6) is None
    fresh = torch.rand(x.shape, generator=gen)
    for wrong in (x * (fresh >= 0.11) / 0.89, x * (fresh >= 0.1) / 0.1):  # share, scale
        assert verdict.compare_ks(encode(wrong.numpy()), encode(want), 1e-6) is not None


# -- every route and construct the guide names, statically -------------------------------------
BODY = (
    "    a, b, c, d = coeffs\n"
    "    r = 2 * (a + b * x + c * x**2 + d * x**3 - y)\n"
    "    return torch.stack([r.sum(), (r * x).sum(), (r * x**2).sum(), (r * x**3).sum()])\n"
)


def answer(line: str, head: str = "") -> dict:
    """hw1's gradient answer, right, with ``line`` run first in its body."""
    return {"cubic_gradients": f"{head}def cubic_gradients(x, y, coeffs):\n    {line}\n{BODY}"}


USED = {  # a line in the answer's body -> the capability found (the cell fails)
    "torch.autograd.grad(coeffs.sum(), coeffs)": rules.AUTOGRAD,
    "coeffs.sum().backward()": rules.AUTOGRAD,
    "print(coeffs.grad_fn)": rules.AUTOGRAD,
    "torch.func.jacrev(torch.sin)(x)": rules.AUTOGRAD,
    "torch.autograd.forward_ad.make_dual(x, x)": rules.AUTOGRAD,
    "torch.autograd.Variable._execution_engine.run_backward": rules.AUTOGRAD,
    "torch.ops.aten.tanh_backward(x, x)": rules.AUTOGRAD,
    "t = torch\n    t.autograd.grad(x.sum(), x)": rules.AUTOGRAD,
}
NOT_USED = [  # allowed by the table's exceptions
    "with torch.autograd.no_grad(): pass",
    "torch.func.vmap(torch.sin)(x)",
    "torch.set_grad_enabled(False)",
]
OPAQUE_IN_SCOPE = {
    "exec('pass')": rules.EXEC,
    "eval('1')": rules.EXEC,
    "compile('1', 'x', 'eval')": rules.EXEC,
    "__import__('torch')": rules.DUNDER,
    "importlib.import_module(name)": rules.DYNAMIC_IMPORT,
    "getattr(torch, 'auto' + 'grad')": rules.COMPUTED_ATTRIBUTE,
    "ctypes.pythonapi": rules.NATIVE,
    "sys.modules['torch']": rules.MODULE_TABLE,
    "sys.setprofile(None)": rules.TRACING,
    "sys._getframe(1)": rules.TRACING,
    "gc.get_objects()": rules.TRACING,
    "inspect.stack()": rules.TRACING,
    "print(torch.__dict__)": rules.DUNDER,
    "print(x.__class__.__subclasses__())": rules.DUNDER,
    "print(cubic_gradients.__globals__)": rules.DUNDER,
    "torch._C._get_tracing_state()": rules.TORCH_INTERNALS,
    "torch.overrides.has_torch_function((x,))": rules.DISPATCH,
    "torch.library.Library": rules.DISPATCH,
    "torch.utils._python_dispatch.TorchDispatchMode": rules.DISPATCH,
    "get_ipython()": rules.IPYTHON,
    "subprocess.run(['true'])": rules.PROCESS,
    "os.system('true')": rules.PROCESS,
    "pickle.loads(b'')": rules.SERIALIZED,
    "types.FunctionType": rules.SERIALIZED,
    "print(helper_made_by_exec)": rules.UNBOUND,
}
HEAD = "import ctypes, gc, importlib, inspect, os, pickle, subprocess, sys, types\nname = 'x'\n"


@pytest.mark.parametrize("line", sorted(USED))
def test_each_route_to_a_capability_is_a_use(line, shared_reference_cache):
    found = findings("hw1", answer(line), shared_reference_cache)
    assert found["test_cubic_gradients"][0][0].startswith(USED[line] + " (answer cell")


@pytest.mark.parametrize("line", NOT_USED)
def test_the_exceptions_are_allowed(line, shared_reference_cache):
    assert findings("hw1", answer(line), shared_reference_cache) == {}


@pytest.mark.parametrize("line", sorted(OPAQUE_IN_SCOPE))
def test_each_construct_in_the_scope_holds_the_cell(line, shared_reference_cache):
    found = findings("hw1", answer(line, HEAD), shared_reference_cache)
    used, opaque = found["test_cubic_gradients"]
    assert not used
    assert any(f.startswith(OPAQUE_IN_SCOPE[line] + " (answer cell") for f in opaque), opaque


GLOBAL = {  # a top-level statement of an added cell -> held, even out of every scope
    "exec('x = 1')": rules.EXEC,
    "globals()['y'] = 1": rules.NAMESPACE,
    "setattr(torch, 'auto' + 'grad', None)": rules.COMPUTED_SETATTR,
    "importlib.import_module(name)": rules.DYNAMIC_IMPORT,
    "sys.modules['x'] = None": rules.MODULE_TABLE,
    "sys.settrace(None)": rules.TRACING,
    "print(torch.__dict__)": rules.DUNDER,
    "torch._C._set_grad_enabled(True)": rules.TORCH_INTERNALS,
    "torch.overrides.TorchFunctionMode": rules.DISPATCH,
    "get_ipython().run_line_magic('run', 'x.py')": rules.IPYTHON,
    "ctypes.CDLL(None)": rules.NATIVE,
    "pickle.loads(b'')": rules.SERIALIZED,
    "open('m.py', 'w').write('')\nimport m": rules.WRITTEN_MODULE,
}


@pytest.mark.parametrize("line", sorted(GLOBAL))
def test_constructs_that_change_every_later_cell_hold_it_from_the_top_level(
    line, shared_reference_cache
):
    found = findings("hw1", {}, shared_reference_cache, [("setup", HEAD + line)])
    for cell in ("test_cubic_gradients", "test_central_difference", "test_fit_cubic"):
        used, opaque = found[cell]
        assert not used and any(f.startswith(GLOBAL[line]) for f in opaque), (cell, opaque)


def test_a_shared_object_changed_at_the_top_level_joins_the_scope_when_touched(
    shared_reference_cache,
):
    patch = "def _g(self):\n    return torch.autograd.grad\n\n\ntorch.Tensor.{} = _g\n"
    touched = answer("coeffs.sneaky()")
    found = findings("hw1", touched, shared_reference_cache, [("setup", patch.format("sneaky"))])
    assert found["test_cubic_gradients"][0] == ["autograd (a cell added after 'setup', line 2)"]
    found = findings("hw1", {}, shared_reference_cache, [("setup", patch.format("sneaky"))])
    assert found == {}, "nothing the probes reach touches it"
    thread = "import threading\n\nthreading.Thread(target=lambda: x.backward())\n"
    found = findings("hw1", {}, shared_reference_cache, [("setup", "x = 1\n" + thread)])
    assert found["test_central_difference"][0] == ["autograd (a cell added after 'setup', line 4)"]


OTHER_RULES = {  # (hw, question, answer grade id, source) -> the capability found
    ("hw2", "test_heavy_ball", "momentum_sgd"): (
        "class MomentumSGD(torch.optim.Optimizer):\n"
        "    def step(self, closure=None):\n"
        "        torch.optim.NAdam  # any optimizer\n"
        "        torch._fused_adam_  # a fused kernel\n",
        rules.OPTIMIZERS,
    ),
    ("hw2", "test_staircase", "staircase"): (
        "class StaircaseLR(torch.optim.lr_scheduler.LRScheduler):\n"
        "    def get_lr(self):\n"
        "        return torch.optim.lr_scheduler.CosineAnnealingLR.get_lr(self)\n",
        rules.SCHEDULES,
    ),
    ("hw3", "test_init", "init"): (
        "def fan_in_and_fan_out(w):\n    return torch.nn.init.calculate_gain('relu')\n",
        rules.INIT,
    ),
    ("hw3", "test_softmax", "softmax"): (
        "def softmax(z, dim=-1):\n    return torch.nn.Softmax(dim)(z)\n",
        "Softmax",
    ),
    ("hw3", "test_activations", "activations"): (
        "def leaky_relu(x, negative_slope=0.01):\n"
        "    return torch.prelu(x, torch.tensor([negative_slope]))\n",
        "prelu",
    ),
    ("hw4", "test_batchnorm_train", "batchnorm"): (
        "class BatchNorm1d(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return torch.nn.functional.group_norm(x, 1)\n",
        "group_norm",
    ),
}


@pytest.mark.parametrize("key", sorted(OTHER_RULES))
def test_other_rules_by_capability_and_twins(key, shared_reference_cache):
    hw, question, gid = key
    source, what = OTHER_RULES[key]
    found = findings(hw, {gid: source}, shared_reference_cache)
    assert found[question][0] and all(f.startswith(what) for f in found[question][0])


def test_the_dashboard_and_its_grades_csv_show_held_cells():
    from datetime import datetime
    from types import SimpleNamespace

    from dnncourse.service import grades
    from dnncourse.service.models import Assignment, Submission
    from dnncourse.service.web import _env

    held = {"name": "test_a", "points": 0.0, "passed": False, "review": "exec (answer cell 'a')"}
    sub = Submission(
        id=7,
        user_id=1,
        created_at=datetime(2026, 1, 1),
        score=7.0,
        max_score=10.0,
        state="graded",
        status="ok",
        detail="",
        checks_json=json.dumps([held, {"name": "test_b", "points": 3.0, "review": ""}]),
        finished=1,
        graded_at=datetime(2026, 1, 1),
    )
    user = SimpleNamespace(id=1, login="alice", name="Alice")
    sub.user = user
    a = Assignment(name="hw1", policy="last", late_penalty=None, deadline=None, per_hour=5)
    clean = Submission(id=8, state="graded", status="ok", checks_json="[]")
    assert grades.needs_a_look([sub, clean]) == [sub]
    table = grades.rows([user], [sub], a, 10.0)
    assert table[0]["review"] == "test_a: exec (answer cell 'a')"
    assert "test_a: exec (answer cell 'a')" in grades.to_csv(table)
    page = (
        _env()
        .get_template("dashboard.html")
        .render(
            a=a,
            table=table,
            states={"queued": 0, "grading": 0, "graded": 1},
            total=1,
            look=[sub],
            histogram="",
            max_score=10.0,
            user=None,
            csrf="",
            questions=[],
            extensions=[],
            decided={"probe": ["nb/test_a", "nb/test_b"], "assert": []},
        )
    )
    look = page[page.index('id="look"') : page.index('id="students"')]
    assert "Held for review" in look and '<td class="review">test_a</td>' in look
    assert "test_a: exec (answer cell &#39;a&#39;)" in page[page.index('id="students"') :]


def test_the_rmsprop_closure_probe_is_well_conditioned_over_its_30_steps():
    """hw2's comment: rounding grows ~4x a step after step 45 of that run, so the probe
    stops at 30, where a 1-ulp change of the start stays far below the tolerance."""
    import torch

    nb = nbformat.read(solution_path("hw2"), as_version=4)
    tools = {}
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") in ("setup", "tools"):
            exec(cell.source, tools)
    make_problem = tools["make_problem"]

    def nudged(device, dtype=torch.float64, seed=0):
        weights, objective = make_problem(device, dtype, seed)
        with torch.no_grad():
            for w in weights:
                w.mul_(1 + 2.2e-16)
        return weights, objective

    def worst(steps):
        paths = []
        for problem in (make_problem, nudged):
            tools["make_problem"] = problem
            paths.append(
                tools["run_trajectory"](
                    lambda g: torch.optim.RMSprop(g, lr=0.01, foreach=False),
                    num_steps=steps,
                    second_group={"alpha": 0.8},
                    set_to_none=False,
                    use_closure=True,
                )[0]
            )
        a, b = paths
        return ((a - b).abs() / (1e-9 * a.abs() + 1e-12)).max().item()  # the probe's rtol, atol

    assert worst(30) < 1e-3
    assert worst(60) > 1, "over 60 steps rounding alone would exceed the tolerance"


def test_the_evidence_never_quotes_the_students_text(shared_reference_cache):
    marker = "zz_marker_of_the_student"
    source = (
        f"def {marker}(v):\n    return eval('{marker}')\n\n\n"
        f"def cubic_gradients(x, y, coeffs, {marker}_p=1):\n"
        f"    {marker}(x).{marker}_attr.backward()\n{BODY}"
    )
    found = findings("hw1", {"cubic_gradients": source}, shared_reference_cache)
    assert found["test_cubic_gradients"][0] and found["test_cubic_gradients"][1]
    assert marker not in json.dumps(found)
