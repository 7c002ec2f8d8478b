"""Kernels forked from the template (grading/template.py): nothing passes between students.

One scenario, run by a grading process as root and as an ordinary user (the harness of
test_sandbox.py): from one template, student 1 leaves a secret in memory, in every folder it
may write, in an abstract unix socket and a System V message queue, and tampers with the
libraries it shares with the template (``torch``, ``builtins``); while it is still running,
student 2 looks for all of it, tries to see and signal other processes and to unmount its
folders; after student 1 has ended, student 3 is forked from the same template and looks
again. Each attack has its control: student 1 finds its own secret with the same scanner,
reaches its own socket and queue, and sees its own tampering, so the attacks really ran.
The message queue needs the seccomp filter off (it denies ``msgget``): that run shows the
IPC namespace alone keeps them apart.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dnncourse.grading import sandbox

pytestmark = [
    pytest.mark.skipif(sandbox.problem() is not None, reason="no sandbox on this host"),
    pytest.mark.slow,
]

# run in the sandbox, ``ROLE`` set before it; student 1 draws its secret itself (a student's
# data reaches its kernel over ZMQ, never through the template); prints one JSON line
STUDENT = r"""
import builtins, ctypes, os, re, signal, socket, sys, time, json
seen = {"pid": os.getpid(), "uid": os.getuid(), "uid_map": open("/proc/self/uid_map").read()}
libc = ctypes.CDLL(None, use_errno=True)
def attempt(name, action):
    try:
        seen[name] = ["ok", action()]
    except BaseException as error:
        seen[name] = [type(error).__name__, str(error)[:120]]
def scan():  # every token DNNSECRET-<32 hex> in this process's writable memory
    found = set()
    with open("/proc/self/maps") as maps:
        regions = [line.split() for line in maps]
    for fields in regions:  # read in place (the kernel is not dumpable: no /proc/self/mem)
        if fields[1][:2] != "rw" or (len(fields) > 5 and fields[5].startswith("[v")):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        data = ctypes.string_at(start, end - start)
        found.update(m.decode() for m in re.findall(rb"DNNSECRET-[0-9a-f]{32}", data))
    return sorted(found)
def msgget(key, flags):
    libc.syscall.restype = ctypes.c_long
    value = libc.syscall(68, key, flags)  # msgget (x86-64)
    if value < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return value
FOLDERS = ["/tmp", "/dev/shm", os.path.expanduser("~"), os.getcwd(), "/run/kernel"]
import torch
if ROLE == "first":
    import secrets
    SECRET = "DNNSECRET-" + secrets.token_hex(16)
    seen["secret"] = SECRET
    kept = (SECRET + " ") * 1000  # in memory, for as long as it runs
    for folder in FOLDERS:
        attempt("write " + folder, lambda: open(folder + "/left-by-1", "w").write(SECRET))
    torch.left_by_1 = SECRET  # the libraries the template has loaded, tampered with
    builtins.left_by_1 = SECRET
    torch.nn.functional.relu = lambda x: SECRET
    server = socket.socket(socket.AF_UNIX)
    server.bind("\0dnncourse-student-1")
    server.listen()
    attempt("own socket", lambda: socket.socket(socket.AF_UNIX).connect("\0dnncourse-student-1"))
    attempt("own queue", lambda: msgget(0x5EC, 0o1666))  # IPC_CREAT | 0666
    seen["own memory"] = SECRET in scan()
    seen["own tampering"] = getattr(torch, "left_by_1", None) == SECRET
    print("READY " + json.dumps(seen), flush=True)
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 12)
else:
    seen["memory"] = scan()
    seen["files"] = {f: sorted(os.listdir(f)) for f in FOLDERS}
    seen["tampering"] = [hasattr(torch, "left_by_1"), hasattr(builtins, "left_by_1"),
                         getattr(torch.nn.functional.relu, "__module__", "")]
    seen["processes"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    signalled = []
    for pid in range(2, 4096):
        try:
            os.kill(pid, 0)
            signalled.append(pid)
        except OSError:
            pass
    seen["signalled"] = signalled
    attempt("socket", lambda: socket.socket(socket.AF_UNIX).connect("\0dnncourse-student-1"))
    attempt("queue", lambda: msgget(0x5EC, 0))
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    for folder in ("/tmp", os.path.expanduser("~"), "/run/kernel", "/proc"):
        if libc.umount2(folder.encode(), 2) != 0:  # MNT_DETACH
            seen["umount " + folder] = os.strerror(ctypes.get_errno())
        else:
            seen["umount " + folder] = "unmounted: " + str(os.listdir(folder))
    def read(path):
        try:
            return open(path, "rb").read().decode("latin-1")
        except OSError as error:  # as root the kernel is not dumpable: its /proc is root's
            return type(error).__name__
    seen["environ"] = [read("/proc/self/environ"), read("/proc/1/environ")]
    print("SEEN " + json.dumps(seen), flush=True)
"""

# the grading process: student 1 kept running while student 2 looks; student 3 after it ended
SCENARIO = r"""
import importlib.util, json, os, secrets, sys, tempfile, threading, time, types
for name in ("dnncourse", "dnncourse.grading"):  # the folders, without torch's import
    spec = importlib.util.find_spec(name)
    module = sys.modules[name] = types.ModuleType(name)
    module.__path__, module.__file__ = spec.submodule_search_locations, spec.origin
from pathlib import Path
from dnncourse.grading import sandbox, template
seccomp, student = json.loads(sys.argv[1]), sys.argv[2]
data = Path(tempfile.mkdtemp())
(data / "points.csv").write_text("x\n1\n")

def start(role, box):
    code = f"ROLE = {role!r}\n" + student
    request = {**template.request_for(box, box.options), "code": code}
    tpl = template.template_for(box.options.data, template.base_env(box.options))
    out_r, out_w = os.pipe()
    spawned = tpl.spawn(request, out_w, 2)
    os.close(out_w)
    template.enter(box, spawned)
    spawned.go()
    return spawned, os.fdopen(out_r)

def box():
    folder = Path(tempfile.mkdtemp())
    return sandbox.KernelBox(sandbox.Options(folder=folder, data=data, seccomp=seccomp))

first_box = box()
first, first_out = start("first", first_box)
ready = json.loads(first_out.readline()[6:])
second_box = box()
second, second_out = start("second", second_box)
during = json.loads(second_out.read().split("SEEN ", 1)[1])
second.wait(60)
first.kill()
first.wait(10)
first_box.close()
third_box = box()
third, third_out = start("third", third_box)
after = json.loads(third_out.read().split("SEEN ", 1)[1])
third.wait(60)
tpl = template.template_for(data, {})
print("RESULT " + json.dumps({"secret": ready["secret"], "first": ready, "second": during,
    "third": after, "hosts": [first.kernel, second.kernel], "template": tpl.host_pid()}))
"""


def _scenario(mode: str, seccomp: bool) -> dict:
    from test_sandbox import _as_user_argv, ordinary_user

    argv = [sys.executable, "-c", SCENARIO, json.dumps(seccomp), STUDENT]
    env = {"DNNCOURSE_TEMPLATE": "1", "DNNCOURSE_CANARY": "grader-secret-canary"}
    if mode == "root":
        if os.geteuid() != 0:
            pytest.skip("grading as root needs root")
        run = subprocess.run(
            argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=300
        )
    else:
        user = ordinary_user()
        if isinstance(user, str):
            pytest.skip(user)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("DNNCOURSE_TEMPLATE", "1")
            argv, full_env = _as_user_argv(*user, argv, env)
        run = subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(lines[-1][7:])


@pytest.mark.parametrize("mode", ["root", "user"])
def test_nothing_passes_between_students_forked_from_one_template(mode):
    seen = _scenario(mode, seccomp=True)
    secret, first = seen["secret"], seen["first"]
    # the controls: student 1's attacks ran and worked on itself
    assert first["own memory"] and first["own tampering"], first
    assert first["own socket"][0] == "ok", first
    assert all(first[k][0] == "ok" for k in first if k.startswith("write ")), first
    assert first["own queue"][0] == "PermissionError", "the seccomp filter denies msgget"
    for name, other in (("second", seen["second"]), ("third", seen["third"])):
        # its own user namespace maps only its own uid (as a user), none as root
        uid = str(other["uid"])
        mapped = [uid, uid, "1"] if mode == "user" else ["0", "0", "4294967295"]
        assert other["uid_map"].split() == mapped, (name, other["uid_map"])
        # pid namespace: alone, pid 1, signals reach only itself
        assert other["pid"] == 1 and other["processes"] == [1], (name, other)
        assert other["signalled"] == [], (name, other)
        # nothing of student 1: memory, files, tampered libraries, socket
        assert secret not in other["memory"], (name, other["memory"])
        # /tmp holds only what the sandbox binds in read-only: the venv, if it lies in /tmp
        bound = {
            Path(p).relative_to("/tmp").parts[0]
            for p in (sys.prefix, sys.base_prefix)
            if Path(p).is_relative_to("/tmp")
        }
        assert other["files"] == {
            "/tmp": sorted(bound),
            "/dev/shm": [],
            "/home/student": ["work"],
            "/home/student/work": ["points.csv"],
            "/run/kernel": ["etc"] if mode == "root" else [],  # as root: its own passwd
        }, (name, other["files"])
        assert other["tampering"] == [False, False, "torch.nn.functional"], (name, other)
        assert other["socket"][0] == "ConnectionRefusedError", (name, other)
        # no unmounting to uncover what lies below its folders
        for folder in ("/tmp", "/home/student", "/run/kernel", "/proc"):
            assert other["umount " + folder] == "Operation not permitted", (name, other)
        # no grader variable in its environment or pid 1's
        assert "grader-secret-canary" not in json.dumps(other["environ"]), (name, other)
        assert "DNNCOURSE" not in json.dumps(other["environ"]), (name, other)
        if mode == "user":  # readable (same uid), and the kernel's own variables only
            assert all("PATH=" in text for text in other["environ"]), (name, other)
    assert seen["hosts"][0] != seen["hosts"][1] and seen["template"] not in seen["hosts"]


@pytest.mark.parametrize("mode", ["root", "user"])
def test_system_v_ipc_is_apart_even_without_the_filter(mode):
    """With seccomp off (the control of the filter), student 1 makes a message queue and
    reaches it; student 2, forked from the same template meanwhile, does not see it, and
    unmounting is still refused (no capability left)."""
    seen = _scenario(mode, seccomp=False)
    assert seen["first"]["own queue"][0] == "ok", seen["first"]
    for other in (seen["second"], seen["third"]):
        assert other["queue"][0] == "FileNotFoundError", other
        assert other["umount /tmp"] == "Operation not permitted", other
        assert seen["secret"] not in other["memory"]


# -- the sandbox's own tests, on forked kernels ----------------------------------------------
def _sandbox_tests():
    import test_sandbox

    names = (
        "test_unprivileged_without_capabilities",
        "test_system_calls_no_notebook_needs_are_denied",
        "test_every_writable_folder_is_capped_storage",
        "test_work_folder_has_the_data_read_only_and_a_size_cap",
        "test_pid_1_and_the_graders_environment_are_out_of_reach",
        "test_many_small_processes_stay_under_the_total_memory",
        "test_cpu_time_counts_all_processes_together",
    )
    return [(name, getattr(test_sandbox, name)) for name in names]


@pytest.mark.parametrize("mode", ["root", "user"])
@pytest.mark.parametrize(
    "name,check", _sandbox_tests(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_the_sandboxs_guarantees_hold_for_a_cold_kernel(name, check, mode, monkeypatch, tmp_path):
    """test_sandbox.py runs its attacks on kernels forked from the template (the default);
    these, each with its control, run again on kernels started cold in bwrap
    (``DNNCOURSE_TEMPLATE=0``, and a template that cannot start): identity, system calls,
    capped folders, pid 1 and environment, totals."""
    monkeypatch.setenv("DNNCOURSE_TEMPLATE", "0")
    names = check.__code__.co_varnames[: check.__code__.co_argcount]
    if "mode" not in names and mode == "user":
        pytest.skip("this check runs as the grader that runs the tests only")
    kwargs = {"mode": mode} if "mode" in names else {}
    if "tmp_path" in names:
        kwargs["tmp_path"] = tmp_path
    check(**kwargs)


def test_a_graded_kernel_is_forked_from_the_template_and_costs_less(monkeypatch, tmp_path):
    """With the switch on, the kernel that runs a notebook is the grandchild of the template
    (the fork and the child that made its namespaces), pid 1 of its own namespace; off, it is
    bwrap's child. As root, its cgroup counts its CPU time: a forked kernel's start costs less
    than a third of a cold one's."""
    import nbformat
    import psutil

    from dnncourse.grading import execute as executing
    from dnncourse.grading import template
    from dnncourse.grading.protocol import Limits

    seen, chains = [], []
    close, watch = sandbox.KernelBox.close, sandbox.KernelBox.watch

    def spy_watch(box, pid):  # what the kernel's sandbox hangs from (forked: the child)
        top = psutil.Process(pid)
        chains.append([top.name(), *(p.name() for p in top.parents())][:3])
        watch(box, pid)

    def spy_close(box):  # the kernel's CPU time, before the sandbox goes
        seen.append((chains[-1], box.group.cpu_seconds() if box.group else None))
        close(box)

    monkeypatch.setattr(sandbox.KernelBox, "close", spy_close)
    monkeypatch.setattr(sandbox.KernelBox, "watch", spy_watch)
    monkeypatch.delenv("DNNCOURSE_TEMPLATE", raising=False)
    assert template.enabled(), "on by default"
    runs = {}
    for switch in ("0", "1", "1"):
        monkeypatch.setenv("DNNCOURSE_TEMPLATE", switch)
        assert template.enabled() == (switch == "1")
        code = "import os, torch\nprint(os.getpid(), torch.ones(2).sum().item())"
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
        run = executing.execute(nb, tmp_path, Limits())
        assert run.status == "ok" and nb.cells[0].outputs[0]["text"] == "1 2.0\n", run
        runs.setdefault(switch, []).append(seen[-1])
    cold, forked = runs["0"][0], runs["1"][-1]  # the second forked one: the template is up
    assert forked[0] == ["python", "python", "bwrap"], forked  # the child, the template, bwrap
    assert cold[0][0] in ("sh", "env", "bwrap") and cold[0][1] == "python", cold  # the grader's
    if os.geteuid() == 0 and cold[1] is not None:
        assert forked[1] < cold[1] / 3, (forked, cold)


def test_a_template_that_stops_during_a_notebook_is_the_graders_failure(monkeypatch, tmp_path):
    """The template is killed while a forked kernel runs a student's cell (the kernel dies
    with it): that is the grader's failure, not ``kernel died``; the notebook runs again from
    its first cell in a kernel forked from a fresh template, and the student gets ``ok``. The
    control: the kill really happened during the cell (the kernel had written its file in its
    own working folder), and the template it came from is dead."""
    import threading
    import time

    import nbformat

    from dnncourse.grading import execute as executing
    from dnncourse.grading import template
    from dnncourse.grading.processes import kill_tree
    from dnncourse.grading.protocol import Limits, Status

    monkeypatch.setenv("DNNCOURSE_TEMPLATE", "1")
    template.close_all()
    killed = []

    def kill_during_the_cell():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for tpl in list(template._TEMPLATES.values()):
                for spawned in list(tpl.spawned):
                    if os.path.exists(f"/proc/{spawned.kernel}/root{template.WORK}/started"):
                        kill_tree(tpl.proc.pid)
                        killed.append(tpl)
            time.sleep(0.05)

    code = "import time\nopen('started', 'w').close()\ntime.sleep(3)\nprint('done')"
    killer = threading.Thread(target=kill_during_the_cell, daemon=True)
    killer.start()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    run = executing.execute(nb, tmp_path, Limits())
    killer.join(10)
    assert killed and not killed[0].alive(), "the template was not killed during the cell"
    assert run.status == Status.OK, run
    assert nb.cells[0].outputs == [nbformat.v4.new_output("stream", text="done\n")]
    assert run.details == [
        "a second kernel was started (the kernel template stopped, and the kernel with it)"
    ], run.details
    assert [t for t in template._TEMPLATES.values() if t.alive()], "no fresh template"


def test_a_template_that_cannot_start_leaves_kernels_cold(monkeypatch, tmp_path, capfd):
    """Where the template cannot start (here: its command exits at once), each kernel starts
    cold in bwrap as it does with ``DNNCOURSE_TEMPLATE=0``: the notebooks are graded, the
    grader's log says it once, and the template is not tried again for every student."""
    import nbformat

    from dnncourse.grading import execute as executing
    from dnncourse.grading import template
    from dnncourse.grading.protocol import Limits, Status

    monkeypatch.setenv("DNNCOURSE_TEMPLATE", "1")
    template.close_all()
    monkeypatch.setattr(template, "_FAILED", {})
    monkeypatch.setattr(template, "_SAID", set())
    tries, command = [], sandbox.command

    def broken(argv, *args, **kwargs):
        if kwargs.get("template") and "dnncourse.grading.template" in argv:
            tries.append(argv)
            return [sys.executable, "-c", "import sys; sys.exit('no template here')"]
        return command(argv, *args, **kwargs)

    monkeypatch.setattr(sandbox, "command", broken)
    for _ in range(2):
        code = "print(open('/proc/self/cmdline').read().split(chr(0))[2])"
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
        run = executing.execute(nb, tmp_path, Limits())
        assert run.status == Status.OK and run.details == [], run
        assert nb.cells[0].outputs[0]["text"] == "dnncourse.grading.kernel\n", nb.cells[0]
    assert len(tries) == 1, "the template was tried again"
    said = capfd.readouterr().err
    assert said.count("grading kernels start cold: the kernel template did not start") == 1
    assert "no template here" in said


def test_forked_kernels_draw_numbers_of_their_own(monkeypatch, tmp_path):
    """The template imported ``random`` and ``numpy`` once, seeding their global generators;
    each forked kernel reseeds them, so two students never draw the same "random" numbers
    (torch's default generator has a fixed seed in every Python, forked or cold). Python's
    hash seed is fixed at start: forked kernels share the template's (the guide says so)."""
    import nbformat

    from dnncourse.grading import execute as executing
    from dnncourse.grading import template
    from dnncourse.grading.protocol import Limits, Status

    monkeypatch.setenv("DNNCOURSE_TEMPLATE", "1")
    code = "import random, numpy\nprint(random.random(), numpy.random.rand(), hash('seed'))"
    drawn = []
    for _ in range(3):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
        run = executing.execute(nb, tmp_path, Limits())
        assert run.status == Status.OK, run
        drawn.append(nb.cells[0].outputs[0]["text"].split())
    assert template._TEMPLATES, "the kernels were not forked"
    for i, generator in enumerate(("random", "numpy.random")):
        values = [d[i] for d in drawn]
        assert len(set(values)) == 3, f"forked kernels drew the same {generator}: {values}"
    # what the guide says they share: Python's hash seed (fixed at the template's start)
    assert len({d[2] for d in drawn}) == 1, drawn


def test_a_grading_process_keeps_at_most_two_templates(monkeypatch, tmp_path):
    """What the guide says of a template's cost: one per assignment's data folder, at most
    two per grading process (the oldest idle one is closed when a third is needed: its
    process gone), each under 512 MiB resident."""
    import psutil

    from dnncourse.grading import template

    monkeypatch.setenv("DNNCOURSE_TEMPLATE", "1")
    template.close_all()
    made = []
    for name in ("hw1", "hw2", "hw3"):
        data = tmp_path / name
        data.mkdir()
        (data / "data.txt").write_text(name)
        made.append(template.template_for(data, {}))
        resident = psutil.Process(made[-1].host_pid()).memory_info().rss
        assert resident < 512 * 2**20, f"{resident / 2**20:.0f} MiB"
    try:
        assert template.template_for(tmp_path / "hw3", {}) is made[2], "not kept"
        assert len(template._TEMPLATES) == template.KEEP == 2
        assert not made[0].alive() and made[1].alive() and made[2].alive()
    finally:
        template.close_all()
