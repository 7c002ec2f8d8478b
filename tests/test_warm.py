"""Kernels launched before their student arrives (:mod:`dnncourse.grading.warm`).

A kernel launched ahead must be exactly the kernel its student would have got: a sandbox of
its own, nothing of the student before; one made for other settings, or dead, is never used;
none is left behind. Each test proves the kernel it talks about really was launched ahead
(its start precedes the notebook's arrival) or really was discarded (its process is gone).
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from dnncourse.grading import sandbox, warm
from dnncourse.grading.execute import execute
from dnncourse.grading.processes import kill_tree
from dnncourse.grading.protocol import Limits, Status

pytestmark = pytest.mark.skipif(
    sandbox.problem() is not None, reason=f"no sandbox on this host: {sandbox.problem()}"
)

# the kernel's own start, in seconds since the host booted (no time namespace: the host's
# clock), and the time the cell ran: compared with the host's /proc/uptime at arrival
WHEN = """\
import os, time
_tick = os.sysconf("SC_CLK_TCK")
_start = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]) / _tick
_now = float(open("/proc/uptime").read().split()[0])
print("WHEN", _start, _now)
"""


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def when(outputs) -> tuple[float, float]:
    """(kernel start, cell run) printed by :data:`WHEN`, in seconds since boot."""
    text = "".join(o.get("text", "") for o in outputs)
    line = [ln for ln in text.splitlines() if ln.startswith("WHEN ")][-1]
    start, now = map(float, line.split()[1:])
    return start, now


def kernels_under(pid: int) -> list[int]:
    """The grading kernels in ``pid``'s process tree: a cold one runs ``dnncourse.grading.
    kernel`` (under bwrap); a forked one is the child of a child of the kernel template
    (:mod:`dnncourse.grading.template`), whose command line a fork keeps."""

    def command(p: psutil.Process) -> str:
        try:  # bwrap's own command line holds the command it runs: not that process
            return "" if p.name() == "bwrap" else " ".join(p.cmdline())
        except psutil.Error:
            return ""

    found = []
    for p in psutil.Process(pid).children(recursive=True):
        try:  # a process may end while we look: it is no kernel waiting
            chain = [p, *p.parents()[:2]]
        except psutil.Error:
            continue
        if "dnncourse.grading.kernel" in command(p):
            found.append(p.pid)
        elif all("dnncourse.grading.template" in command(q) for q in chain):
            found.append(p.pid)
    return found


def notebook(*sources: str):
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])


# Two students in a row, the second one's kernel launched while the first one runs. Student
# 1 leaves files in every writable folder and a process running; student 2 looks for them.
LEAVE = """\
import json, os, subprocess
for path in ("/tmp/left", os.path.expanduser("~/left"), "left", "/dev/shm/left"):
    with open(path, "w") as f:
        f.write("student 1")
sleeper = subprocess.Popen(["sleep", "987.654"], start_new_session=True)
print("SEEN", json.dumps({"uid": os.getuid(), "pidns": os.readlink("/proc/self/ns/pid"),
                          "sleeper": sleeper.pid}))
"""
LOOK = """\
import json, os
paths = ("/tmp/left", os.path.expanduser("~/left"), "left", "/dev/shm/left")
procs = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        procs.append(open(f"/proc/{pid}/cmdline").read().replace("\\0", " "))
    except OSError:
        pass
print("SEEN", json.dumps({"uid": os.getuid(), "pidns": os.readlink("/proc/self/ns/pid"),
                          "found": [p for p in paths if os.path.exists(p)], "procs": procs}))
"""

DRIVER = r"""
import json, os, sys, time
import nbformat, psutil
from dnncourse.grading import warm
from dnncourse.grading.execute import execute
from dnncourse.grading.protocol import Limits
leave, look, when = json.loads(sys.argv[1])
def uptime():
    return float(open("/proc/uptime").read().split()[0])
def seen(nb):
    text = "".join(o.get("text", "") for c in nb.cells for o in c.outputs)
    return json.loads([ln for ln in text.splitlines() if ln.startswith("SEEN ")][-1][5:])
def sleepers():
    procs = psutil.process_iter(["cmdline"])
    return [p.pid for p in procs if p.info["cmdline"] == ["sleep", "987.654"]]
before = {p.pid for p in psutil.Process().children(recursive=True)}
kernels = warm.Kernels()
key = warm.Key("bundle", "notebook", None, Limits(), True)
kernels.prepare(key)
first = kernels.take(key)
kernels.prepare(key)  # student 2's kernel, launched while student 1 runs
second = kernels.waiting[1]
one = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(leave)])
run1 = execute(one, None, Limits(), kernel=first)
left_running = sleepers()  # student 1's kernel is closed: its process must be gone
time.sleep(1.0)
arrived = uptime()
two = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(when + look)])
taken = kernels.take(key)
run2 = execute(two, None, Limits(), kernel=taken)
kernels.close()
from dnncourse.grading import template
template.close_all()  # the kernel template, if on, ends with the grading process
text = "".join(o.get("text", "") for o in two.cells[0].outputs)
start = float([ln for ln in text.splitlines() if ln.startswith("WHEN ")][-1].split()[1])
left = [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in before]
print("RESULT " + json.dumps({
    "status": [run1.status, run2.status], "details": run1.details + run2.details,
    "one": seen(one), "two": seen(two), "same kernel": taken is second,
    "start": start, "arrived": arrived, "sleepers after 1": left_running,
    "sleepers at end": sleepers(), "left": left,
}))
"""


@pytest.mark.parametrize("mode", ["root", "user"])
def test_the_next_students_kernel_is_a_sandbox_of_its_own(mode):
    """Student 2's kernel runs while student 1's does (launched ahead): it sees none of the
    files student 1 left in /tmp, HOME, the working folder or /dev/shm, nor the process
    student 1 left running (gone with student 1's kernel), in a pid namespace (and, as root,
    a uid) of its own; nothing is left after both."""
    from test_sandbox import _as_user_argv, ordinary_user

    if mode == "root" and os.geteuid() != 0:
        pytest.skip("grading as root needs root")
    argv = [sys.executable, "-c", DRIVER, json.dumps([LEAVE, LOOK, WHEN])]
    env = None
    if mode == "user":
        user = ordinary_user()
        if isinstance(user, str):
            pytest.skip(user)
        argv, env = _as_user_argv(*user, argv)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, done.stdout + done.stderr
    seen = json.loads(lines[-1][7:])
    assert seen["status"] == ["ok", "ok"] and not seen["details"], seen
    one, two = seen["one"], seen["two"]
    assert seen["same kernel"], "student 2 did not get the kernel launched ahead"
    assert seen["start"] < seen["arrived"], "student 2's kernel started after the notebook came"
    assert one["sleeper"] > 1, "student 1's process did start"
    assert two["found"] == [], f"student 2 sees student 1's files: {two['found']}"
    assert not any("987.654" in p for p in two["procs"]), two["procs"]
    assert seen["sleepers after 1"] == [], "student 1's process outlived their kernel"
    assert one["pidns"] != two["pidns"], "the two kernels share a pid namespace"
    if mode == "root":
        assert one["uid"] != two["uid"], "the two kernels share a uid"
    assert seen["sleepers at end"] == [] and seen["left"] == [], seen


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_kernel_made_for_other_settings_is_closed_not_used():
    """A waiting kernel serves only its own key (bundle, notebook, data, limits, sandbox):
    with any of them changed it is closed with all it holds (process, per-kernel folder,
    uid, cgroup) and none is handed out; with the same key it is handed out (the control)."""
    kernels = warm.Kernels()
    key = warm.Key("bundle", "notebook", None, Limits(), True)
    others = [
        warm.Key("other bundle", "notebook", None, Limits(), True),
        warm.Key("bundle", "other notebook", None, Limits(), True),
        warm.Key("bundle", "notebook", "/data", Limits(), True),
        warm.Key("bundle", "notebook", None, Limits(memory_limit_mb=1000), True),
        warm.Key("bundle", "notebook", None, Limits(), False),
    ]
    try:
        for other in others:
            kernels.prepare(key)
            _, kernel = kernels.waiting
            pid, folder = kernel.pid, kernel.work
            held = [kernel.box.identity.path] if kernel.box.identity else []
            groups = kernel.box.group.folders if kernel.box.group else []
            assert kernels.take(other) is None, other
            assert kernels.waiting is None
            assert _gone(pid), f"the kernel for {key} still runs after a take for {other}"
            assert not folder.exists() and not any(p.exists() for p in held + groups)
        kernels.prepare(key)
        kernel = kernels.waiting[1]
        kernels.prepare(key)  # the same key again: the one waiting is kept
        assert kernels.take(key) is kernel
        pid = kernel.pid
        kernel.close()
        assert _gone(pid)
    finally:
        kernels.close()


def test_a_kernel_that_died_waiting_is_replaced_and_never_charged():
    """A waiting kernel killed before its student came is not handed out; one that dies
    after it was handed out, before it answered, is replaced by a fresh kernel: the student
    gets ``ok`` with no word of it (no student code had run)."""
    kernels = warm.Kernels()
    key = warm.Key("bundle", "notebook", None, Limits(), True)
    kernels.prepare(key)
    kill_tree(kernels.waiting[1].pid)
    assert kernels.take(key) is None, "a dead kernel was handed out"

    kernels.prepare(key)
    kernel = kernels.take(key)
    kill_tree(kernel.pid)
    killed = float(open("/proc/uptime").read().split()[0])
    # the notebook says when its process started (in clock ticks since boot, as the host's)
    nb = notebook("print(int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[19]))")
    run = execute(nb, None, Limits(), kernel=kernel)
    assert run.status == Status.OK and run.details == [], run
    started = int(nb.cells[0].outputs[0]["text"]) / os.sysconf("SC_CLK_TCK")
    assert started >= killed - 0.01, "the notebook ran in the dead kernel (started before it)"


# -- the grading process ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_notebooks(tmp_path_factory):
    """The engine tests' tiny assignment with a second notebook, its bundle unpacked."""
    from test_grading_engine import tiny_course

    from dnncourse.grading.course import make_bundle, prepare

    root = tiny_course(tmp_path_factory.mktemp("course"))
    source = root / "solutions" / "tiny"
    (source / "tiny.ipynb").rename(source / "a.ipynb")
    tiny_course(root)
    (source / "tiny.ipynb").rename(source / "b.ipynb")
    for name in ("a", "b"):  # where the engine tests' student_notebook reads it
        (root / "solutions" / name).mkdir()
        shutil.copy(source / f"{name}.ipynb", root / "solutions" / name)
    grading = prepare(root, "tiny", root / "out")
    bundle = make_bundle(grading)
    folder = root / "bundle"
    for name, data in bundle.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return root, bundle, folder


@pytest.mark.slow
def test_the_grading_process_launches_each_kernel_before_it_is_needed(two_notebooks, tmp_path):
    """Through the grading process: warmed ahead of the first student, each student's first
    notebook runs in a kernel started before the student arrived, and their second notebook
    in one started while the first ran (before the first notebook's cell ran); scores are
    right; one kernel waits after each student; stopping the grading process leaves no
    kernel behind."""
    from test_grading_engine import ANSWERS, student_notebook

    from dnncourse.grading.protocol import Task
    from dnncourse.grading.worker import GradingProcess

    root, bundle, folder = two_notebooks
    grader = GradingProcess(tmp_path)
    seen_kernels = set()

    def processes_now() -> set[int]:
        return {p.pid for p in psutil.Process(grader.proc.pid).children(recursive=True)}

    def kernels_now() -> set[int]:
        return set(kernels_under(grader.proc.pid))

    try:
        assert grader.warm(folder, Limits(), True)
        for student in ("s1", "s2"):
            deadline = time.monotonic() + 60
            while not kernels_now() and time.monotonic() < deadline:
                time.sleep(0.1)
            seen_kernels |= processes_now()
            assert kernels_now(), "no kernel was launched ahead"
            time.sleep(0.5)
            arrived = uptime()
            files = {}
            for name in ("a", "b"):
                nb = student_notebook(root, ANSWERS["solution"][0], WHEN, name=name)
                files[f"{name}.ipynb"] = nbformat.writes(nb).encode()
            result = grader.grade(Task(student, "tiny", files, bundle.hash), folder)
            assert result.status == Status.OK and result.score == 2 * 3.0, result
            graded = {n: nbformat.reads(result.graded[n], as_version=4) for n in ("a", "b")}
            start_a, ran_a = when(graded["a"].cells[2].outputs)
            start_b, _ = when(graded["b"].cells[2].outputs)
            assert start_a < arrived, f"{student}'s kernel started after they arrived"
            assert start_b < ran_a, f"{student}'s second kernel started after the first ran"
            deadline = time.monotonic() + 60
            while not kernels_now() and time.monotonic() < deadline:
                time.sleep(0.1)
            waiting = kernels_now()
            assert len(waiting) == 1, f"one kernel waits for the next student, not {waiting}"
        seen_kernels |= processes_now()
    finally:
        grader.stop()
    left = [pid for pid in seen_kernels if not _gone(pid)]
    assert not left, f"kernels outlived the grading process: {left}"
