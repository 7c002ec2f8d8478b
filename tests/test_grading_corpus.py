"""A class of broken and hostile hw1 submissions, graded in one batch with two jobs.

Every submission is built here from the real homework: the released notebook
(``exercises/hw1``) with answer cells filled from the instructor's solution, then broken or
made hostile. Each student must get exactly one row with the score it deserves and the
status saying what happened. hw1's points: test_cubic_gradients 3, test_central_difference 3,
test_gradient_descent_step 2, test_fit_cubic 2 (10 in all).

The sandbox's students (issue 10) attack the grader from inside their kernel with the exact
paths of the course, the gradebook, the other students and the grader's home (as a student
who read the grader's source would guess them): they read, connect, plant code, start a
daemon, write the gradebook and the pipes. Each records what it tried, and how it failed, in
its own output (a line ``ATTACK {json}``), which the tests read from the graded notebook; the
tests then check that the grader stayed right: every score and row (a stub graded last is
the victim), no planted file anywhere outside, no process left.

The in-process attacks that beat the old in-kernel guard (skipping the test cells through a
wrapped ``do_execute``, forging records found with ``gc``, a patched ``session.send``, ``torch``
rebound in the test's globals, a tensor that agrees with every comparison) score zero, and a
function that reads the hidden tests with ``linecache`` shows nothing of them in the feedback
(its cells are held for review: it reads its caller's frames). Each attack prints ``armed:
<name>`` into the graded notebook, so the test sees that it really ran.

The attacks on the statement's rules (right answers by a forbidden capability, across
hw1-hw4) are ``tests/rule_attacks.py``, graded by ``tests/test_rules.py``.
"""

import csv
import hashlib
import html
import json
import os
import re
import secrets
import socket
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import nbgrader
import psutil
import pytest

import dnncourse
from dnncourse.grading import sandbox, template
from dnncourse.grading.totals import UID_BASE, UID_SLOTS
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


ATTEMPT = """\
import json, os, sys
T = json.loads({targets!r})
seen = {{}}
def attempt(name, action):
    try:
        seen[name] = ["ok", action()]
    except BaseException as error:
        seen[name] = [type(error).__name__, str(error)[:200]]
"""
REPORT = "\nprint('ATTACK ' + json.dumps(seen, default=str))\n"

SPY = """\
def read(path):
    with open(path, "rb") as f:
        return len(f.read())
for name in ("solution", "course solution", "gradebook", "other submission", "other feedback",
             "grader secret"):
    attempt(name, lambda path=T[name]: read(path))
seen["grader home"] = sorted(os.listdir(T["home"])) if os.path.isdir(T["home"]) else None
attempt("reference", lambda: __import__("dnncourse.optim"))
seen["env"] = dict(os.environ)
from ipykernel.connect import get_connection_file
with open(get_connection_file()) as f:
    conn = json.load(f)
seen["transport"], seen["uid"] = conn["transport"], os.getuid()
"""

NETWORK = """\
import glob, socket
from ipykernel.connect import get_connection_file
seen["interfaces"] = sorted(name for _, name in socket.if_nameindex())
attempt("internet", lambda: socket.create_connection(("1.1.1.1", 80), timeout=3).close())
attempt("dns", lambda: socket.getaddrinfo("pypi.org", 443))
attempt("host port", lambda: socket.create_connection(("127.0.0.1", T["port"]), 3).close())
own = os.path.dirname(get_connection_file())
seen["own folder"] = own
seen["kernel folders"] = sorted(set(glob.glob("/tmp/**/dnncourse-kernel-*", recursive=True)
                                    + glob.glob(T["tmp"] + "/**/dnncourse-kernel-*",
                                                recursive=True)))
seen["connection files"] = sorted(set(glob.glob("/tmp/**/*.json", recursive=True)
                                      + glob.glob(T["tmp"] + "/**/kernel*.json", recursive=True)))
for folder in seen["kernel folders"]:
    if folder != own:  # the kernel graded at the same time: its sockets
        for path in glob.glob(folder + "/*ipc*"):
            client = socket.socket(socket.AF_UNIX)
            attempt("other kernel " + path, lambda: client.connect(path))
"""

PLANTER = """\
import fcntl, sqlite3, subprocess
def write(path, text):
    if path == T["plant"]["startup"]:  # the grader's IPython profile may not exist yet
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
for name in ("package", "pth", "startup", "template", "nbconvert template", "next work folder",
             "victim submission", "grades.csv"):
    attempt(name, lambda path=T["plant"][name]: write(path, T["payload"][name]))
def gradebook():
    db = sqlite3.connect("file:" + T["gradebook"] + "?mode=rw", uri=True)
    db.execute("UPDATE grade SET manual_score = 10")
    db.commit()
attempt("gradebook", gradebook)
def lock():
    f = open(T["lock"], "a")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return "locked"
attempt("lock", lock)
# a daemon outside the kernel's session: rewrites grades.csv and holds the lock for minutes
daemon = subprocess.Popen([sys.executable, "-c", T["daemon"], T["token"], json.dumps(T)],
                          start_new_session=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
import time
time.sleep(1)
seen["daemon alive"] = daemon.poll() is None
# the worker's pipes through /proc: every pipe of every process this kernel can see
seen["processes"] = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        seen["processes"][pid] = open(f"/proc/{pid}/cmdline").read().replace("\\0", " ")[:80]
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        continue
    for fd in fds:
        path = f"/proc/{pid}/fd/{fd}"
        try:
            if "pipe:" in os.readlink(path) and int(pid) != os.getpid():
                attempt("pipe " + path, lambda p=path: write(p, T["payload"]["pipe"]))
        except OSError:
            pass
"""

DAEMON = """\
import fcntl, json, sys, time
T = json.loads(sys.argv[2])
held = None
for _ in range(600):
    for path, text in ((T["plant"]["grades.csv"], "student_id,score\\nplanter,10\\n"),
                       (T["canary"], "the daemon outlived the kernel")):
        try:
            with open(path, "w") as f:
                f.write(text)
        except OSError:
            pass
    try:
        held = held or open(T["lock"], "a")
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass
    time.sleep(0.5)
"""

XSS = """\
from IPython.display import HTML, Javascript, SVG, display
display(HTML("<script>document.title = 'XSS_MARK html'</script>"))
display(Javascript("document.title = 'XSS_MARK js'"))
display(SVG("<svg xmlns='http://www.w3.org/2000/svg'><script>XSS_MARK_svg()</script></svg>"))
print("<script>XSS_MARK_print()</script>")
"""
XSS_MARKDOWN = (
    "Notes <script>XSS_MARK_md()</script> <img src=x onerror='XSS_MARK_img()'> "
    "[a link](javascript:XSS_MARK_link()) [data](data:text/html,XSS_MARK_data)"
)

# issue 19: a function under test that has read the hidden tests tries to carry a line of
# them out through everything the grader reads back from the kernel
EXFILTRATE = {
    "cubic_gradients": """\
import builtins
import inspect
import itertools
import json
import linecache

from IPython.display import display, publish_display_data

_calls = itertools.count()


def cubic_gradients(x, y, coeffs):
    source = "".join(linecache.getlines(inspect.stack()[1].filename))
    hidden = source.split("BEGIN HIDDEN TESTS")[-1].splitlines()
    text = max((line.strip() for line in hidden if "END HIDDEN" not in line), key=len)
    word = "".join(c if c.isalnum() else "_" for c in text)
    number = int.from_bytes(text.encode(), "big")
    codes = list(text.encode()[:6])
    n = next(_calls)
    if n == 0:
        builtins.exfil = {"text": text, "word": word, "number": str(number)[:40],
                          "codes": str(tuple(codes))[:-1]}
        get_ipython().execution_count = number  # the prompt numbers
        handle = display(text, display_id=True)
        handle.update(text)
        print(text)
        tensor = {"dtype": text, "shape": codes, "device": text}
        for name in ("the visible " + "example", text):  # its own text, not a leak
            publish_display_data({"application/vnd.dnncourse.probe+json": {
                "v": 1, "name": name, "value": {"tensor": tensor}, "raised": word,
                "check": {"kind": "close", "what": text}, "watched": [text],
                "calls": {text: 1}}, "text/plain": text})
        raise type(word[:200], (Exception,), {})(text)
    if n == 1:
        return text
    if n == 2:
        return torch.empty(codes, device="meta")
    if n == 3:
        return {text: 1.0, word: text}
    return [0.0] * (number % 5000)
""",
}
SHOW_EXFIL = "import builtins, json\n\nprint('EXFIL ' + json.dumps(builtins.exfil))"
FLOODS = {  # each sends its flood, then writes a line the test finds in the graded notebook
    "display_flood": """\
from IPython.display import display
handles = [display("small", display_id=True) for _ in range(30)]
for handle in handles:
    handle.update("x" * 1_000_000)
""",
    "comm_flood": """\
ip = get_ipython()
for i in range(30):
    ip.kernel.session.send(ip.kernel.iopub_socket, "comm_open",
        {"comm_id": f"c{i}", "target_name": "jupyter.widget",
         "data": {"state": {"_model_name": "M", "value": "x" * 1_000_000}}},
        parent=ip.kernel.get_parent())
""",
    "huge_traceback": """\
try:
    raise ValueError("x" * 40_000_000)
finally:
    print("armed: huge_traceback")
""",
}


def targets(root: Path, subs: Path, out: Path, port: int, token: str) -> dict:
    """What the attackers aim at: real paths of this grading run (and of this machine)."""
    site = next(p for p in sys.path if p.endswith("site-packages"))
    victim_nb = json.dumps(notebook(correct=ALL))
    return {
        "solution": str(root / "solutions" / HW / f"{NAME}.ipynb"),
        "course solution": str(out / "course" / "solutions" / HW / f"{NAME}.ipynb"),
        "gradebook": str(out / "gradebook.db"),
        "lock": str(out / ".gradebook.lock"),
        "other submission": str(subs / "solution" / f"{NAME}.ipynb"),
        "other feedback": str(out / "feedback" / "solution" / f"{NAME}.html"),
        "grader secret": str(out.parent / "instructor-secret.txt"),
        "home": str(Path.home()),
        "tmp": sandbox.tempfile.gettempdir(),
        "port": port,
        "token": token,
        "canary": str(out / f"daemon-{token}.txt"),
        "daemon": DAEMON,
        "plant": {
            "package": str(Path(dnncourse.__file__).parent / f"planted_{token}.py"),
            "pth": str(Path(site) / f"zz_planted_{token}.pth"),
            "startup": str(
                Path.home() / ".ipython" / "profile_default" / "startup" / f"zz_{token}.py"
            ),
            "template": str(
                Path(nbgrader.__file__).parent
                / "server_extensions/formgrader/templates/feedback"
                / f"planted_{token}.j2"
            ),
            "nbconvert template": str(
                Path(sys.prefix) / "share/jupyter/nbconvert/templates" / f"planted_{token}.j2"
            ),
            "next work folder": str(out / "course" / "autograded" / "zz_victim" / HW / "torch.py"),
            "victim submission": str(subs / "zz_victim" / f"{NAME}.ipynb"),
            "grades.csv": str(out / "grades.csv"),
        },
        "payload": {  # harmless if they landed (the test removes them), but detected
            "package": "PLANTED = True\n",
            "pth": "/nonexistent-planted-path\n",
            "startup": "# planted\n",
            "template": "{# planted #}\n",
            "nbconvert template": "{# planted #}\n",
            "next work folder": "raise SystemExit('planted')\n",
            "victim submission": victim_nb,
            "grades.csv": "student_id,score\nplanter,10\n",
            "pipe": '@@dnncourse-result {"student_id": "planter", "score": 10.0}\n',
        },
    }


def planted(target: dict) -> list[Path]:
    """The files the planter and its daemon would have left outside the sandbox."""
    return [Path(target["canary"])] + [
        Path(p) for k, p in target["plant"].items() if k not in ("victim submission", "grades.csv")
    ]


def attack(nb: dict, snippet: str, target: dict, cell_id: str) -> dict:
    """``nb`` with a first cell that runs ``snippet`` and reports what it saw."""
    source = ATTEMPT.format(targets=json.dumps(target)) + snippet + REPORT
    return insert_after(nb, None, code(source, cell_id))


def build(folder: Path, target: dict | None = None) -> dict[str, tuple[float, str]]:
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
    for name, snippet in ATTACKS.items():
        put(name, insert_after(notebook(wrong=ALL), "setup", code(snippet, f"atk-{name}")), 0)
    put("rebound_torch", notebook(replace=REBIND_TORCH), 0)
    put("agreeable_tensor", notebook(replace=AGREEABLE), 0)
    nb = notebook(correct=ALL[1:], replace=LEAK)
    nb["cells"].append(code(SHOW_LEAK, "leak-show"))
    # its answer reads its caller's frames (inspect) and writes builtins: the rules hold
    # cubic_gradients and fit_cubic (which calls it) for review, at 0 until you decide
    put("linecache_leak", nb, 5)
    nb = notebook(correct=ALL[1:3], replace=EXFILTRATE)  # fit_cubic uses the gradients
    nb["cells"].append(code(SHOW_EXFIL, "exfil-show"))
    put("exfiltrator", nb, 5)
    for name, flood in FLOODS.items():  # last: a frame over the limit stops the run
        armed = "" if name == "huge_traceback" else f"\nprint('armed: {name}')"
        nb = notebook(correct=ALL)
        nb["cells"].append(code(flood + armed, f"f-{name}"))
        put(name, nb, 10, "output limit")
    if target is None:
        return expected

    # -- the sandbox (issue 10): attacks from inside the kernel ---------------------------
    # right answers, but a top-level cell with __import__ and ipykernel's machinery: every
    # cell with a rule (all but the gradient step's 2 points) is held for review
    put("spy", attack(notebook(correct=ALL), SPY, target, "s1"), 2)
    put("network", attack(notebook(), NETWORK, target, "s2"), 0)
    put("planter", attack(notebook(), PLANTER, target, "s3"), 0)
    nb = insert_after(notebook(correct=ALL), "cubic_gradients", code(XSS, "s4"))
    nb["cells"].append(
        {"cell_type": "markdown", "id": "s5", "metadata": {}, "source": XSS_MARKDOWN}
    )
    put("xss", nb, 10)
    put("zz_victim", notebook(), 0)  # graded last: a stub, whatever was planted for it
    (folder / "linked_notebook").mkdir()
    (folder / "linked_notebook" / f"{NAME}.ipynb").symlink_to(SOLUTION)
    expected["linked_notebook"] = (0, "invalid notebook")
    (folder / "linked_folder").symlink_to(SOLUTION.parent, target_is_directory=True)
    expected["linked_folder"] = (0, "invalid notebook")
    deep = '{"cells": [], "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}"
    put("deep_json", raw=deep.encode(), status="invalid notebook")
    nb = notebook(correct=ALL)
    nb["metadata"]["nested"] = json.loads("[" * 500 + "]" * 500)
    put("deep_metadata", nb, status="invalid notebook")
    text = json.dumps(notebook(correct=ALL)).replace('"def cubic', '"\\ud800def cubic', 1)
    put("lone_surrogate", raw=text.encode(), status="invalid notebook")
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


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The whole corpus graded once, in one batch with two jobs (sandboxed when possible)."""
    tmp = tmp_path_factory.mktemp("corpus")
    subs, out = tmp / "submissions", tmp / "out"
    (tmp / "instructor-secret.txt").write_text("the grader's own file")
    listener = socket.socket()  # a port on the host's loopback, as a TCP kernel's would be
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    token = secrets.token_hex(8)
    target = targets(ROOT, subs, out, listener.getsockname()[1], token)
    sandboxed = sandbox.problem() is None
    expected = build(subs, target if sandboxed else None)
    victim = (subs / "zz_victim" / f"{NAME}.ipynb").read_bytes() if sandboxed else b""
    env = {**tool_env(), "DNNCOURSE_CANARY": f"instructor-secret-{token}"}
    try:
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
                *([] if sandboxed else ["--no-sandbox"]),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        try:
            connected = listener.accept()
        except BlockingIOError:
            connected = None
        left = [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if token in " ".join(p.info["cmdline"] or [])
        ]
        landed = [p for p in planted(target) if p.exists()]
    finally:
        listener.close()
        for path in planted(target):  # if the sandbox failed: leave nothing behind
            path.unlink(missing_ok=True)
        for pid in locals().get("left", []):
            psutil.Process(pid).kill()
    rows = {}
    if (out / "grades.csv").is_file():
        with open(out / "grades.csv") as f:
            rows = {r["student_id"]: r for r in csv.DictReader(f)}
    return {
        "proc": proc,
        "out": out,
        "subs": subs,
        "rows": rows,
        "expected": expected,
        "token": token,
        "victim": victim,
        "connected": connected,
        "left": left,
        "landed": landed,
    }


def attacked(graded, student: str) -> dict:
    """What ``student``'s attack cell recorded (from its graded notebook in OUT)."""
    path = graded["out"] / "course" / "autograded" / student / HW / f"{NAME}.ipynb"
    for cell in _read(path)["cells"]:
        for output in cell.get("outputs", []):
            text = "".join(output.get("text", ""))
            if text.startswith("ATTACK "):
                return json.loads(text[len("ATTACK ") :])
    raise AssertionError(f"{student}: the attack did not run (no ATTACK line in {path})")


@pytest.mark.slow
def test_a_hostile_class_gets_the_grades_it_deserves(graded):
    proc, out, rows, expected = graded["proc"], graded["out"], graded["rows"], graded["expected"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(rows) == sorted(expected), "one row per student"
    got = {s: (float(r["score"]), r["status"]) for s, r in rows.items()}
    wrong = {
        s: (got[s], expected[s], r["detail"]) for s, r in rows.items() if got[s] != expected[s]
    }
    assert not wrong, f"(got, expected, detail): {wrong}"
    assert all(float(r["max_score"]) == 10 for r in rows.values())
    hidden = hidden_test_lines()
    for page in (out / "feedback").rglob("*.html"):
        text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))
        shown = [line for line in hidden if line in text]
        assert not shown, f"{page} shows hidden tests: {shown[:2]}"
    for student in expected:
        assert (out / "feedback" / student / f"{NAME}.html").is_file()
    autograded = out / "course" / "autograded"
    for student in [*ATTACKS, "rebound_torch", "agreeable_tensor", "linecache_leak", *FLOODS]:
        text = (autograded / student / HW / f"{NAME}.ipynb").read_text()
        assert f"armed: {student}" in text, f"the attack of {student} did not run"
    leaked = (autograded / "linecache_leak" / HW / f"{NAME}.ipynb").read_text()
    assert any(json.dumps(line)[1:-1] in leaked for line in hidden), "the leak did not happen"


needs_sandbox = pytest.mark.skipif(
    sandbox.problem() is not None, reason=f"no sandbox here: {sandbox.problem()}"
)


@pytest.mark.slow
@needs_sandbox
def test_the_summary_says_the_sandbox_is_active(graded):
    assert "sandbox: active" in graded["proc"].stdout
    assert "sandbox: active" in (graded["out"] / "summary.txt").read_text()
    assert not any("without a sandbox" in r["detail"] for r in graded["rows"].values())


@pytest.mark.slow
@needs_sandbox
def test_a_spy_reads_nothing_of_the_course_the_class_or_the_grader(graded):
    seen = attacked(graded, "spy")
    for name in ("solution", "course solution", "gradebook", "other submission", "other feedback"):
        assert seen[name][0] == "FileNotFoundError", (name, seen[name])
    assert seen["grader secret"][0] == "FileNotFoundError"
    assert seen["grader home"] is None or set(seen["grader home"]) <= {".pyenv"}
    assert seen["reference"][0] == "ModuleNotFoundError", "the reference implementation"
    assert graded["token"] not in json.dumps(seen["env"]), "the grader's environment"
    # a uid of its own: from the reserved range as root, 65534 in a user namespace otherwise
    own = range(UID_BASE, UID_BASE + UID_SLOTS) if os.geteuid() == 0 else (65534,)
    assert seen["transport"] == "ipc" and seen["uid"] in own, seen["uid"]
    spy = graded["rows"]["spy"]  # right answers, held for a person to decide (the rules)
    assert spy["score"] == "2.0" and spy["review"].count("an import by a computed name") == 3


@pytest.mark.slow
@needs_sandbox
def test_no_network_and_no_other_kernel(graded):
    seen = attacked(graded, "network")
    assert seen["interfaces"] == ["lo"]
    assert seen["internet"][0] == "OSError" and "unreachable" in seen["internet"][1]
    assert seen["dns"][0] == "gaierror"
    assert seen["host port"][0] == "ConnectionRefusedError"
    assert graded["connected"] is None, "nothing reached the host's port"
    if template.enabled():  # forked: its connection file is in its own /run/kernel, and no
        assert seen["kernel folders"] == [], seen  # per-kernel folder of the host is inside
    else:
        assert seen["kernel folders"] == [seen["own folder"]], "only its own kernel folder"
    assert all(f.startswith(seen["own folder"]) for f in seen["connection files"])
    assert not [k for k in seen if k.startswith("other kernel")]


@pytest.mark.slow
@needs_sandbox
def test_planted_code_daemons_and_gradebook_writes_reach_nobody(graded):
    seen = attacked(graded, "planter")
    # read-only (the venv, nbgrader's and nbconvert's templates), or not there at all
    for name in ("pth", "template", "nbconvert template"):
        assert seen[name][0] == "OSError" and "Read-only" in seen[name][1], (name, seen[name])
    # IPython's startup folder: not writable (EACCES), or on the read-only root (EROFS)
    startup = seen["startup"]
    assert startup[0] == "PermissionError" or "Read-only" in startup[1], startup
    for name in ("package", "next work folder", "victim submission", "grades.csv", "lock"):
        assert seen[name][0] == "FileNotFoundError", (name, seen[name])
    assert seen["gradebook"] == ["OperationalError", "unable to open database file"]
    assert seen["daemon alive"] is True, "the daemon did start"
    assert not any("dnncourse.grading.worker" in c for c in seen["processes"].values())
    assert len(seen["processes"]) <= 4, seen["processes"]
    pipes = {k: v for k, v in seen.items() if k.startswith("pipe ")}
    assert not [k for k, v in pipes.items() if v[0] == "ok" and "/proc/1/" in k]
    assert graded["landed"] == [], "files planted outside the sandbox"
    assert graded["left"] == [], "the daemon outlived the kernel"
    rows = graded["rows"]
    assert rows["planter"]["score"] == "0.0" and rows["planter"]["status"] == "ok"
    victim = rows["zz_victim"]
    assert (victim["score"], victim["status"]) == ("0.0", "ok"), victim
    submitted = graded["subs"] / "zz_victim" / f"{NAME}.ipynb"
    assert (
        hashlib.sha256(submitted.read_bytes()).digest()
        == hashlib.sha256(graded["victim"]).digest()
    ), "the victim's submission was overwritten"


@pytest.mark.slow
def test_hidden_tests_carried_in_a_record_reach_no_page(graded):
    """The exfiltrator's line of the hidden tests, carried in every field of its records, an
    exception's name, the prompt numbers and its outputs, is in no page, row or result."""
    out = graded["out"]
    graded_nb = out / "course" / "autograded" / "exfiltrator" / HW / f"{NAME}.ipynb"
    sent = None
    for cell in _read(graded_nb)["cells"]:
        for output in cell.get("outputs", []):
            text = "".join(output.get("text", ""))
            if text.startswith("EXFIL "):
                sent = json.loads(text[len("EXFIL ") :])
    assert sent, "the exfiltrator did not run"
    assert sent["text"] in hidden_test_lines(), "it had read a line of the hidden tests"
    pages = [
        (out / "feedback" / "exfiltrator" / f"{NAME}.html").read_text(),
        (out / "results" / "exfiltrator.json").read_text(),
        json.dumps(graded["rows"]["exfiltrator"]),
    ]
    for page in pages:
        text = html.unescape(page)
        for carried in (sent["text"], sent["word"], sent["number"], sent["codes"]):
            assert carried not in text and json.dumps(carried)[1:-1] not in text, carried
    counts = [c.get("execution_count") for c in _read(graded_nb)["cells"]]
    assert max(c for c in counts if c) <= len(counts), "the grader numbers the prompts"


class _Active(HTMLParser):
    """Collects what a browser would run: script bodies and attribute values."""

    def __init__(self):
        super().__init__()
        self.active, self._script = [], False

    def handle_starttag(self, tag, attrs):
        self._script = tag == "script"
        self.active += [value or "" for _, value in attrs]

    def handle_endtag(self, tag):
        self._script = False

    def handle_data(self, data):
        if self._script:
            self.active.append(data)


@pytest.mark.slow
def test_a_script_in_an_output_never_runs_in_the_feedback_page(graded):
    page = (graded["out"] / "feedback" / "xss" / f"{NAME}.html").read_text()
    assert "XSS_MARK" in page, "the outputs are in the page (as text)"
    parser = _Active()
    parser.feed(page)
    assert not [a for a in parser.active if "XSS_MARK" in a]
    assert graded["rows"]["xss"]["score"] == "10.0"


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
