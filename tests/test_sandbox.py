"""The grading sandbox (bubblewrap), tested from inside: each test runs a snippet in a fresh
sandbox, exactly as a kernel is started (the launcher's drop of rights included), and checks
what the snippet could see and do. A snippet prints one JSON line; anything it could not do
is recorded as the exception's type, so a test proves the attempt ran and failed.

Whole graded notebooks attacking the grader are in test_grading_corpus.py.
"""

import fcntl
import functools
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from dnncourse.grading import sandbox, template

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    sandbox.problem() is not None, reason=f"no sandbox on this host: {sandbox.problem()}"
)

TRY = """
import json, os, sys
seen = {}
def attempt(name, action):
    try:
        seen[name] = ["ok", action()]
    except BaseException as error:
        seen[name] = [type(error).__name__, str(error)[:200]]
"""


USER = "dnncourse-grader"  # the ordinary user the tests grade as (made when run as root)

# as root: a private mount namespace in which each folder that the user may not enter and that
# holds what the grader needs (pyenv's interpreter in /root) is covered by an open tmpfs that
# holds only that; then the grader runs as the user, with a minimal environment
AS_USER = r"""
set -e
uid=$1; gid=$2; shift 2
for pair in $DNNCOURSE_REACH; do
    closed=${pair%%:*}; need=${pair#*:}
    stage=$(mktemp -d); mount --bind "$need" "$stage"
    if ! mountpoint -q "$closed"; then mount -t tmpfs -o mode=0755,size=1m none "$closed"; fi
    mkdir -p "$need"; mount --move "$stage" "$need"; rmdir "$stage"
done
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups --reset-env "$@"
"""

DRIVER = r"""
import importlib.util, json, os, sys, types
# the package's folders without running its __init__ (which imports torch: seconds)
for name in ("dnncourse", "dnncourse.grading"):
    spec = importlib.util.find_spec(name)
    module = sys.modules[name] = types.ModuleType(name)
    module.__path__, module.__file__ = spec.submodule_search_locations, spec.origin
from dnncourse.grading import sandbox
options = json.loads(sys.argv[1])
if options.get("data"):  # a Path, sent as text
    from pathlib import Path
    options["data"] = Path(options["data"])
proc = sandbox._run_inside(**options)
out = "GRADER-ENV " + json.dumps(sorted(os.environ)) + "\n" + proc.stdout
print("RESULT " + json.dumps([proc.returncode, out, proc.stderr, proc.exceeded]))
"""


def _closed_folders() -> list[str]:
    """``closed:needed`` pairs: the first folder the user cannot enter above each folder the
    grader reads (interpreter, virtualenv, checkout)."""
    pairs = []
    for need in sorted({Path(sys.base_prefix).resolve(), Path(sys.prefix), ROOT}):
        for folder in reversed(need.parents):
            if folder != Path("/") and not folder.stat().st_mode & 0o001:
                below = need.relative_to(folder).parts[0]
                pairs.append(f"{folder}:{folder / below}")
                break
    return sorted(set(pairs))


@functools.cache
def ordinary_user() -> tuple[int, int] | str:
    """(uid, gid) of an ordinary user to grade as, or why there is none."""
    import pwd

    if os.geteuid() != 0:
        return os.getuid(), os.getgid()  # already one: the tests run as it
    if not all(shutil.which(t) for t in ("useradd", "unshare", "setpriv", "mountpoint")):
        return "useradd, unshare, setpriv or mountpoint not found"
    with open("/tmp/dnncourse-useradd.lock", "w") as lock:  # pytest-xdist workers at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pwd.getpwnam(USER)
        except KeyError:
            made = subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                capture_output=True,
                text=True,
            )
            if made.returncode not in (0, 9):  # 9: made meanwhile
                return f"useradd failed: {made.stderr.strip()}"
    entry = pwd.getpwnam(USER)
    probe = _as_user_argv(entry.pw_uid, entry.pw_gid, ["/bin/true"])
    tried = subprocess.run(probe[0], env=probe[1], capture_output=True, text=True)
    if tried.returncode != 0:
        return f"cannot run as {USER} in a private mount namespace: {tried.stderr.strip()}"
    return entry.pw_uid, entry.pw_gid


def _as_user_argv(uid: int, gid: int, argv: list[str], env: dict | None = None):
    if os.geteuid() != 0:
        return argv, {**os.environ, **(env or {})}
    inner = ["env", f"HOME={tempfile.gettempdir()}", "PATH=/usr/bin:/bin", "MPLBACKEND=Agg"]
    inner += [f"{k}={v}" for k, v in (env or {}).items()]
    inner += [f"{k}={v}" for k, v in os.environ.items() if k == "DNNCOURSE_TEMPLATE"]
    outer = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", AS_USER, "sh"]
    reach = " ".join(_closed_folders())
    return [*outer, str(uid), str(gid), *inner, *argv], {**os.environ, "DNNCOURSE_REACH": reach}


def run_as(mode: str, code: str, env: dict | None = None, **options):
    """Run ``python -c code`` in a sandbox made by a grader running as root or as an ordinary
    user (``mode``); return (returncode, stdout, stderr, which total limit stopped it)."""
    if mode == "root" and os.geteuid() != 0:
        pytest.skip("grading as root needs root")
    if mode == "root" or os.geteuid() != 0:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in (env or {}).items():
                patch.setenv(key, value)
            proc = sandbox._run_inside(code, **options)
            out = "GRADER-ENV " + json.dumps(sorted(os.environ)) + "\n" + proc.stdout
        return proc.returncode, out, proc.stderr, proc.exceeded
    user = ordinary_user()
    if isinstance(user, str):
        pytest.skip(user)
    kwargs = json.dumps({"code": code, **{k: v for k, v in options.items()}}, default=str)
    argv, full_env = _as_user_argv(*user, [sys.executable, "-c", DRIVER, kwargs], env)
    done = subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=180)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, done.stdout + done.stderr
    return tuple(json.loads(lines[-1][7:]))


def run_inside(code: str, mode: str = "here", **options) -> dict:
    """Run ``code`` (which fills the dict ``seen``) in a sandbox; return ``seen``."""
    snippet = TRY + textwrap.dedent(code) + "\nprint('SEEN', json.dumps(seen))"
    if mode == "here":
        proc = sandbox._run_inside(snippet, **options)
        out, err = proc.stdout, proc.stderr
    else:
        _, out, err, _ = run_as(mode, snippet, **options)
    lines = [ln for ln in out.splitlines() if ln.startswith("SEEN ")]
    assert lines, out + err
    return json.loads(lines[-1][5:])


MODES = pytest.mark.parametrize("mode", ["root", "user"])


@MODES
def test_unprivileged_without_capabilities(mode):
    seen = run_inside(
        """
        status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
        seen["ids"] = [os.getresuid(), os.getresgid(), os.getgroups()]
        seen["caps"] = {k: int(status[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")}
        seen["bounding"] = int(status["CapBnd"], 16)
        seen["no_new_privs"] = status["NoNewPrivs"].strip()
        seen["seccomp"] = status["Seccomp"].strip()
        import pwd
        seen["name"] = pwd.getpwuid(os.getuid()).pw_name
        attempt("setuid 0", lambda: os.setuid(0))
        attempt("chroot", lambda: os.chroot("/tmp"))
        """,
        mode,
    )
    (uid, *_), (gid, *_), groups = seen["ids"]
    assert seen["ids"][0] == [uid] * 3 and seen["ids"][1] == [gid] * 3 and gid == uid
    if mode == "root":  # a uid of its own from the reserved range
        assert sandbox.UID_BASE <= uid < sandbox.UID_BASE + sandbox.UID_SLOTS
    else:  # the user is 65534 in a user namespace of its own
        assert uid == sandbox.NOBODY
    assert groups in ([], [gid]) and seen["name"] == "student"
    assert seen["caps"] == dict.fromkeys(seen["caps"], 0)
    if mode == "root":  # as root the launcher also empties the bounding set
        assert seen["bounding"] == 0
    assert seen["no_new_privs"] == "1" and seen["seccomp"] == "2"  # 2: a filter
    # in a user namespace uid 0 is not even mapped (EINVAL)
    assert seen["setuid 0"][0] == "PermissionError" or "Invalid argument" in seen["setuid 0"][1]
    assert seen["chroot"][0] == "PermissionError"


def test_each_kernel_has_a_uid_of_its_own(tmp_path):
    """Graded as root, two kernels at once never share a uid (one user keyring, one owner of
    files and processes): each holds a lock on its uid while it lives."""
    if not sandbox.privileged():
        pytest.skip("as an ordinary user each kernel is 65534 in a user namespace of its own")
    boxes = []
    try:
        for i in range(8):
            (tmp_path / str(i)).mkdir()
            boxes.append(sandbox.KernelBox(sandbox.Options(folder=tmp_path / str(i))))
        uids = [box.uid for box in boxes]
        assert len(set(uids)) == len(uids) and sandbox.NOBODY not in uids
        assert {(tmp_path / str(i)).stat().st_uid for i in range(8)} == set(uids)
    finally:
        for box in boxes:
            box.close()


def test_no_network_at_all():
    seen = run_inside(
        """
        import socket, urllib.request
        seen["interfaces"] = sorted(n for _, n in socket.if_nameindex())
        attempt("ip", lambda: socket.create_connection(("1.1.1.1", 53), timeout=3).close())
        attempt("dns", lambda: socket.getaddrinfo("pypi.org", 443))
        attempt("http", lambda: urllib.request.urlopen("http://example.com", timeout=3).read())
        unix = socket.socket(socket.AF_UNIX)
        attempt("abstract unix", lambda: unix.connect("\\0/tmp/.X11-unix/X0"))
        """
    )
    assert seen["interfaces"] == ["lo"]
    for name in ("ip", "dns", "http", "abstract unix"):
        assert seen[name][0] not in ("ok",), (name, seen[name])
    assert "unreachable" in seen["ip"][1].lower()


def test_host_network_is_not_reachable_from_inside():
    """A port listening on the host's loopback is another machine's, seen from inside."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        seen = run_inside(
            f"""
            import socket
            attempt("host port", lambda: socket.create_connection(("127.0.0.1", {port}), 3))
            """
        )
    finally:
        server.close()
    assert seen["host port"][0] == "ConnectionRefusedError"


def test_system_interpreter_and_venv_are_read_only():
    site = next(p for p in sys.path if p.endswith("site-packages"))
    seen = run_inside(
        f"""
        attempt("site-packages", lambda: open({site!r} + "/zz_planted.pth", "w"))
        attempt("stdlib", lambda: open(os.__file__, "a"))
        attempt("usr", lambda: open("/usr/planted", "w"))
        attempt("etc", lambda: open("/etc/planted", "w"))
        attempt("root of the sandbox", lambda: open("/planted", "w"))
        """
    )
    for name, (kind, _) in seen.items():
        assert kind in ("OSError", "PermissionError"), (name, seen[name])
    assert not (Path(site) / "zz_planted.pth").exists()


def test_course_repo_and_home_are_not_visible(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("solutions")
    seen = run_inside(
        f"""
        import glob, importlib.util
        for path in {[str(ROOT), str(ROOT / "solutions"), str(ROOT / "src"), str(secret)]!r}:
            seen[path] = os.path.exists(path)
        seen["repo"] = sorted(os.listdir({str(ROOT)!r})) if seen[{str(ROOT)!r}] else []
        seen["home"] = [os.path.expanduser("~"), sorted(os.listdir(os.path.expanduser("~")))]
        seen["grader home"] = sorted(os.listdir({str(Path.home())!r})) if os.path.isdir(
            {str(Path.home())!r}) else None
        seen["tmp"] = sorted(os.listdir("/tmp"))
        attempt("reference", lambda: __import__("dnncourse.optim"))
        import dnncourse.grading.kernel as k
        seen["launcher"] = k.__file__
        seen["find"] = importlib.util.find_spec("dnncourse.polynomial") is not None
        seen["cwd"] = [os.getcwd(), os.listdir(".")]
        """
    )
    assert not any(seen[p] for p in (str(ROOT / "solutions"), str(ROOT / "src"), str(secret)))
    # a virtualenv inside the repository is mounted alone: its folder shows nothing else
    assert set(seen["repo"]) <= {".venv"}, seen["repo"]
    assert seen["home"] == ["/home/student", ["work"]]
    # only what the interpreter needs of the grader's home (here: pyenv), nothing else
    assert seen["grader home"] is None or set(seen["grader home"]) <= {".pyenv", ".venv"}
    # /tmp holds this check's own folder, and the mount point of a venv that lives in /tmp
    venv = Path(sys.prefix).resolve()
    mount = {venv.relative_to("/tmp").parts[0]} if venv.is_relative_to("/tmp") else set()
    own = [t for t in seen["tmp"] if t not in mount]
    if template.enabled():  # a forked kernel's /tmp is a fresh tmpfs: not even that folder
        assert own == [], seen["tmp"]
    else:
        assert len(own) == 1 and own[0].startswith("dnncourse-check-"), seen["tmp"]
    assert seen["reference"][0] == "ModuleNotFoundError", seen["reference"]
    assert seen["launcher"] == "/opt/dnncourse/dnncourse/grading/kernel.py"
    assert seen["find"] is False
    assert seen["cwd"] == ["/home/student/work", []]


def test_environment_is_built_from_scratch(monkeypatch):
    monkeypatch.setenv("DNNCOURSE_CANARY", "instructor-secret")
    seen = run_inside("seen['env'] = dict(os.environ)")
    env = seen["env"]
    assert "DNNCOURSE_CANARY" not in env and "instructor-secret" not in json.dumps(env)
    assert env["HOME"] == "/home/student" and env["PYTHONPATH"] == "/opt/dnncourse"
    assert set(env) <= {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "TMPDIR",
        "PYTHONPATH",
        "MPLBACKEND",
        "PWD",
        "LC_CTYPE",
    }


def test_work_folder_has_the_data_read_only_and_a_size_cap(tmp_path):
    # as a reference run's data folder is: made by tempfile (0700), a private file (0600)
    data = Path(tempfile.mkdtemp(dir=tmp_path))
    (data / "sub").mkdir(parents=True)
    (data / "points.csv").write_text("x,y\n1,2\n")
    (data / "sub" / "more.txt").write_text("more")
    (data / "helper.py").write_text("ANSWER = 42\n")
    (data / "helper.py").chmod(0o600)
    (data / "big.bin").write_bytes(b"d" * 12 * 2**20)  # more than the folder's 8 MiB cap
    seen = run_inside(
        """
        seen["big"] = os.path.getsize("big.bin")
        seen["files"] = sorted(os.path.relpath(os.path.join(d, f)) for d, _, fs in os.walk(".")
                               for f in fs)
        seen["read"] = [open("points.csv").read(), open("sub/more.txt").read()]
        import helper
        seen["helper"] = helper.ANSWER
        attempt("change", lambda: open("points.csv", "a").write("3,4\\n"))
        attempt("remove", lambda: os.remove("sub/more.txt"))
        def fill(folder):
            with open(folder + "/big", "wb") as f:
                for _ in range(64):
                    f.write(b"x" * 2**20)
        attempt("work", lambda: fill("."))
        attempt("tmp", lambda: fill("/tmp"))
        """,
        data=data,
        workdir_mb=8,
    )
    assert seen["files"][:4] == ["big.bin", "helper.py", "points.csv", "sub/more.txt"]
    assert seen["big"] == 12 * 2**20  # a bind, not a copy: the cap does not apply
    assert seen["read"] == ["x,y\n1,2\n", "more"] and seen["helper"] == 42
    assert seen["change"][0] in ("PermissionError", "OSError"), seen["change"]
    assert seen["remove"][0] in ("PermissionError", "OSError"), seen["remove"]
    assert (data / "points.csv").read_text() == "x,y\n1,2\n"
    assert (data / "sub" / "more.txt").is_file()
    assert seen["work"][0] == "OSError" and "No space left" in seen["work"][1]
    assert seen["tmp"][0] == "OSError" and "No space left" in seen["tmp"][1]


def test_process_limit_and_everything_dies_with_the_sandbox():
    token = secrets.token_hex(8)
    seen = run_inside(
        f"""
        import subprocess, time
        seen["pids visible"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        # a daemon that leaves the session and would outlive a plain kernel
        daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                                   "{token}"], start_new_session=True)
        seen["daemon"] = daemon.pid
        children = []
        def bomb():
            while True:
                pid = os.fork()
                if pid == 0:
                    time.sleep(60)
                    os._exit(0)
                children.append(pid)
        attempt("fork bomb", bomb)
        seen["forked"] = len(children)
        """,
        processes=32,
    )
    assert max(seen["pids visible"]) <= 3, "its own pid namespace"
    assert seen["fork bomb"][0] == "BlockingIOError", seen["fork bomb"]
    assert 5 < seen["forked"] < 32
    time.sleep(0.5)
    left = [p for p in psutil.process_iter(["cmdline"]) if token in (p.info["cmdline"] or [])]
    assert not left, f"processes outlived the sandbox: {left}"


def test_other_kernels_folders_are_not_visible(tmp_path):
    other = Path(sandbox.tempfile.mkdtemp(prefix="dnncourse-kernel-"))
    try:
        (other / "kernel.json").write_text("{}")
        seen = run_inside(f"seen['other'] = os.path.exists({str(other)!r})")
    finally:
        (other / "kernel.json").unlink()
        other.rmdir()
    assert seen["other"] is False


def test_real_package_is_covered_when_inside_a_mounted_folder(monkeypatch, tmp_path):
    venv = tmp_path / "venv"
    package = venv / "lib" / "site-packages" / "dnncourse"
    package.mkdir(parents=True)
    (package / "optim.py").write_text("REFERENCE = 1\n")
    monkeypatch.setattr(sandbox, "_real_package", lambda: package)
    monkeypatch.setattr(sys, "prefix", str(venv))
    sandbox.layout.cache_clear()
    try:
        assert package in sandbox.layout().hidden
        seen = run_inside(f"seen['listing'] = os.listdir({str(package)!r})")
    finally:
        sandbox.layout.cache_clear()
    assert seen["listing"] == []


def test_a_kernel_that_cannot_start_says_why(tmp_path, capsys, monkeypatch):
    """A sandbox that cannot start (its data folder is gone) is tried twice, then is a
    grader error (no student code ran: never the student's fault), with bwrap's own words
    in the details and in the grader's log."""
    import nbformat

    from dnncourse.grading import execute as execute_module
    from dnncourse.grading.execute import Limits, execute

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    gone = tmp_path / "gone"
    run = execute(nb, tmp_path, Limits(), data=gone)
    assert run.status == "grader error" and run.stopped_at == 0
    assert run.details[0].startswith("the kernel did not start")
    assert "it said:" in run.details[0] and str(gone) in run.details[0], run.details
    said = capsys.readouterr().err.splitlines()
    attempts = [line for line in said if str(gone) in line and "template" not in line]
    assert len(attempts) == 2, f"one message for each attempt: {said}"

    # the folder is back before the second attempt: it runs, and the details tell
    monkeypatch.setattr(execute_module, "time", SimpleNamespace(sleep=lambda _: gone.mkdir()))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    run = execute(nb, tmp_path, Limits(), data=gone)
    assert run.status == "ok" and nb.cells[0].outputs[0]["text"] == "1\n"
    assert run.details[0].startswith("a second kernel was started (the kernel did not start")


def test_a_stale_kernel_spec_of_a_killed_process_is_not_used(tmp_path):
    """Killed graders left ``dnncourse-kernels-<uid>-<pid>`` folders in /tmp, and a grader
    that got the same pid later ran its kernels from the stale spec: the interpreter of
    another checkout, absent in the sandbox, so every kernel died at start."""
    import shutil

    import nbformat

    from dnncourse.grading.execute import KERNEL_NAME, Limits, execute

    stale = Path(sandbox.tempfile.gettempdir()) / f"dnncourse-kernels-{os.getuid()}-{os.getpid()}"
    spec = stale / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    argv = [
        "/gone/checkout/.venv/bin/python",
        "-m",
        "dnncourse.grading.kernel",
        "-f",
        "{connection_file}",
    ]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "old"}))
    try:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
        run = execute(nb, tmp_path, Limits())
    finally:
        shutil.rmtree(stale)
    assert run.status == "ok" and nb.cells[0].outputs[0]["text"] == "1\n", run.details


@pytest.mark.parametrize("boxed", [True, False], ids=["sandbox", "no-sandbox"])
def test_nothing_of_a_kernel_is_left_after_its_run(tmp_path, boxed):
    """The kernel is shut down and collected: nbclient leaves alone a kernel whose manager
    it did not make, so ours lived on (without a sandbox) or was left a zombie (with one)."""
    import nbformat

    from dnncourse.grading.execute import Limits, execute

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os; os.getpid()")])
    run = execute(nb, tmp_path, Limits(), sandbox=boxed)
    assert run.status == "ok" and nb.cells[0].outputs, run.details
    templates = set()  # a template started by this run lives on for the next kernels
    for tpl in template._TEMPLATES.values():
        top = psutil.Process(tpl.proc.pid)
        templates |= {top.pid} | {p.pid for p in top.children(recursive=True)}
    assert not boxed or not template.enabled() or templates, "the kernel was not forked"
    left = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and p.pid not in templates
    ]
    assert not left, [(p.pid, p.name(), p.status()) for p in left]
    for tpl in template._TEMPLATES.values():  # and no forked kernel is left below one
        top = psutil.Process(tpl.proc.pid)
        below = [p.pid for p in top.children(recursive=True) if p.name() != "bwrap"]
        assert below == [tpl.host_pid()], "a forked kernel outlived its run"


DOCTOR = r"""
import importlib.util, json, sys, types
for name in ("dnncourse", "dnncourse.grading"):
    spec = importlib.util.find_spec(name)
    module = sys.modules[name] = types.ModuleType(name)
    module.__path__, module.__file__ = spec.submodule_search_locations, spec.origin
from dnncourse.grading import sandbox
print("DOCTOR " + json.dumps([[c.name, c.ok, c.detail] for c in sandbox.requirements()]))
"""


def test_doctor_says_when_kernels_start_cold(monkeypatch):
    """With the template switched off, the doctor's probe runs in a cold kernel and says so
    (the default, forked, is checked by the test below)."""
    monkeypatch.setenv(template.SWITCH, "0")
    results = {c.name: (c.ok, c.detail) for c in sandbox.requirements()}
    assert results["kernels"] == (True, "started cold in bwrap (DNNCOURSE_TEMPLATE=0)"), results
    assert all(ok for ok, _ in results.values()), results


@MODES
def test_doctor_shows_each_limit_and_how_it_is_enforced(mode):
    """``dnncourse doctor`` as root and as an ordinary user: every check passes, and each
    limit says how it is enforced there (cgroups as root, a watchdog and rlimits as a user)."""
    if mode == "root":
        if os.geteuid() != 0:
            pytest.skip("grading as root needs root")
        results = {c.name: (c.ok, c.detail) for c in sandbox.requirements()}
    else:
        user = ordinary_user()
        if isinstance(user, str):
            pytest.skip(user)
        argv, env = _as_user_argv(*user, [sys.executable, "-c", DOCTOR])
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        line = [ln for ln in done.stdout.splitlines() if ln.startswith("DOCTOR ")]
        assert line, done.stdout + done.stderr
        results = {name: (ok, detail) for name, ok, detail in json.loads(line[0][7:])}
    print("\n".join(f"[{'ok' if ok else 'FAIL':>4}] {k}: {d}" for k, (ok, d) in results.items()))
    for name in (
        "memory total",
        "CPU time total",
        "processes",
        "uid",
        "keyring",
        "ptrace",
        "network off",
        "writable folders",
        "seccomp filter",
        "fork bomb stopped",
    ):
        assert name in results, name
    assert all(ok for ok, _ in results.values()), results
    how = {name: results[name][1] for name in ("memory total", "CPU time total", "processes")}
    if mode == "root" and sandbox.cgroup_roots():
        assert "cgroup" in how["memory total"] and "cgroup" in how["processes"], how
    if mode == "user":
        assert "watchdog" in how["memory total"] and "watchdog" in how["CPU time total"], how
        assert "RLIMIT_NPROC" in how["processes"], how
        assert "user namespace" in results["uid"][1]
    forked = template.enabled()  # the switch as the doctor saw it (passed to the user's run)
    assert results["kernels"][1].startswith("forked" if forked else "started cold"), results
    writable = results["writable folders"][1]
    for folder in ("/tmp", "/dev/shm", sandbox.HOME, sandbox.SOCKETS):
        assert f"{folder} (tmpfs " in writable, writable


def test_grade_stops_before_grading_without_a_sandbox(monkeypatch, tmp_path):
    from dnncourse.grading import api

    monkeypatch.setattr(sandbox, "bwrap", lambda: None)
    sandbox.problem.cache_clear()
    try:
        with pytest.raises(api.SandboxUnavailable, match=r"bwrap.*not found(.|\n)*--no-sandbox"):
            api.grade("hw1", tmp_path, tmp_path / "out", progress=False)
    finally:
        sandbox.problem.cache_clear()
    assert not (tmp_path / "out").exists(), "nothing was prepared or graded"


def test_cli_says_what_is_missing(monkeypatch, tmp_path, capsys):
    from dnncourse import cli

    monkeypatch.setattr(sandbox, "problem", lambda: "no user namespaces (sysctl ...)")
    code = cli.main(["grade", "hw1", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "no user namespaces" in err and "--no-sandbox" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_no_sandbox_grades_anyway_and_says_so(tmp_path):
    from dnncourse.grading import api

    subs = tmp_path / "subs"
    (subs / "forgot").mkdir(parents=True)  # no notebook: no kernel needed to get a row
    rows = api.grade("hw1", subs, tmp_path / "out", progress=False, sandbox=False)
    assert [r.status for r in rows] == ["missing notebook"]
    assert "graded without a sandbox (--no-sandbox)" in rows[0].detail
    assert "sandbox: OFF (--no-sandbox)" in (tmp_path / "out" / "summary.txt").read_text()


PTRACE = """
import ctypes, subprocess
libc = ctypes.CDLL(None, use_errno=True)
seen["pid"] = os.getpid()
seen["pid 1"] = open("/proc/1/cmdline", "rb").read().split(b"\\0")[0].decode()
def environ_of_every_process():
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            found[pid] = open(f"/proc/{pid}/environ", "rb").read().decode("latin-1")
        except OSError as error:
            found[pid] = type(error).__name__
    return found
def attach(pid):  # PTRACE_ATTACH, then read a word of its memory (PTRACE_PEEKDATA)
    if libc.ptrace(16, pid, None, None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    os.waitpid(pid, 0)
    return libc.ptrace(2, pid, ctypes.c_void_p(0x400000), None)
sibling = subprocess.Popen(["sleep", "30"])
attempt("environ", environ_of_every_process)
attempt("ptrace pid 1", lambda: attach(1))
attempt("ptrace sibling", lambda: attach(sibling.pid))
def vm_read(pid):  # process_vm_readv of one byte at an address of its stack
    buf = ctypes.create_string_buffer(1)
    iov = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 1)
    start = int(open(f"/proc/{pid}/stat").read().split()[27])  # startstack
    remote = (ctypes.c_void_p * 2)(start, 1)
    if libc.process_vm_readv(pid, iov, 1, remote, 1, 0) < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return "read"
attempt("vm_read sibling", lambda: vm_read(sibling.pid))
sibling.kill()
"""


@MODES
def test_pid_1_and_the_graders_environment_are_out_of_reach(mode):
    """Graded as an ordinary user, the kernel could attach to bwrap (the sandbox's pid 1, same
    uid) and read the grader's environment from its ``/proc/1/environ``. Now the kernel is
    pid 1 itself, bwrap starts with an empty environment, and ptrace is denied. The secret is
    in the grader's environment (checked), and nowhere inside."""
    secret = "instructor-" + secrets.token_hex(8)
    snippet = TRY + PTRACE + "\nprint('SEEN', json.dumps(seen))"
    _, out, err, _ = run_as(mode, snippet, env={"DNNCOURSE_CANARY": secret})
    grader_env = json.loads(out.split("\n", 1)[0].split(" ", 1)[1])
    assert "DNNCOURSE_CANARY" in grader_env, "the secret is in the grader's environment"
    assert secret not in out + err, "the grader's secret reached the sandbox"
    seen = json.loads(next(ln for ln in out.splitlines() if ln.startswith("SEEN "))[5:])
    assert seen["pid"] == 1 and seen["pid 1"].endswith("python"), seen
    assert secret not in json.dumps(seen), "the grader's secret reached the sandbox"
    environ = seen["environ"]
    assert environ[0] == "ok" and len(environ[1]) >= 2, environ  # the attack looked at all
    if mode == "user":  # same uid: the environments were read, and hold nothing of the grader's
        assert all("PATH=" in text for text in environ[1].values()), environ
    for name in ("ptrace pid 1", "ptrace sibling", "vm_read sibling"):
        assert "Operation not permitted" in seen[name][1], seen  # EPERM: the filter
    # the control: without the filter, the same code attaches to the sibling (same uid)
    control = run_inside(PTRACE, mode, env={"DNNCOURSE_CANARY": secret}, seccomp=False)
    assert control["ptrace sibling"][0] == "ok" and control["vm_read sibling"] == ["ok", "read"]
    assert secret not in json.dumps(control), "a minimal environment even without the filter"


KEYS = """
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def check(value):
    if value < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return value
def add(keyring):  # add_key("user", "channel", secret, keyring)
    data = b"%(secret)s"
    return check(libc.syscall(248, b"user", b"channel", data, len(data), keyring))
def search(keyring):  # keyctl(KEYCTL_SEARCH, keyring, "user", "channel", 0), then KEYCTL_READ
    key = check(libc.syscall(250, 10, keyring, b"user", b"channel", 0))
    buf = ctypes.create_string_buffer(100)
    size = check(libc.syscall(250, 11, key, buf, 100))
    return buf.raw[:size].decode()
USER, SESSION = -4, -3
if "%(role)s" == "writer":
    attempt("add to user keyring", lambda: add(USER))
    attempt("add to session keyring", lambda: add(SESSION))
    time.sleep(%(wait)s)
else:
    attempt("user keyring", lambda: search(USER))
    attempt("session keyring", lambda: search(SESSION))
seen["keys"] = open("/proc/keys").read()
"""


@MODES
def test_the_kernel_keyring_is_no_channel_between_students(mode):
    """One student's kernel leaves a key in its user and session keyrings; another, graded at
    the same time and one after it, looks for it (by search, and in ``/proc/keys``). The
    keyring calls are denied: the writer could not add the key, and the reader finds nothing.
    The control: without the filter the writer adds both keys and lists them (the attack
    works; graded as a user its key belongs to your uid on the host, and is readable by its
    serial number to any process of that uid that may call keyctl)."""
    import threading

    secret = secrets.token_hex(8)

    def writer(found: dict, seccomp: bool):
        code = KEYS % {"secret": secret, "role": "writer", "wait": 4}
        found.update(run_inside(code, mode, seccomp=seccomp))

    def reader() -> dict:
        return run_inside(KEYS % {"secret": secret, "role": "reader", "wait": 0}, mode)

    for seccomp in (False, True):  # False: the control, the writer unfiltered
        written: dict = {}
        thread = threading.Thread(target=writer, args=(written, seccomp))
        thread.start()
        time.sleep(2)
        at_once = reader()
        thread.join()
        after = reader()
        if seccomp:
            for name in ("add to user keyring", "add to session keyring"):
                assert "not permitted" in written[name][1], written
        else:
            assert written["add to user keyring"][0] == "ok", written
            assert written["add to session keyring"][0] == "ok", written
        assert written["keys"] == "", "/proc/keys is masked"
        for seen in (at_once, after):
            assert secret not in json.dumps(seen) and seen["keys"] == "", seen
            for name in ("user keyring", "session keyring"):
                assert "not permitted" in seen[name][1], seen


MEMORY_BOMB = """
import sys, time
alive = 0
for i in range(8):
    if os.fork() == 0:
        block = b"x" * (32 * 2**20)  # 32 MiB, written: resident
        print("alive", i, flush=True)
        time.sleep(20)
        os._exit(0)
    time.sleep(0.4)
print("all forked", flush=True)
time.sleep(1)
"""


@MODES
def test_many_small_processes_stay_under_the_total_memory(mode):
    """Eight processes of 32 MiB each, far under any per-process limit, are 256 MiB together:
    over a total of 128 MiB, the sandbox is stopped (a cgroup's OOM kill as root, the
    watchdog as a user). The control without a total runs them all."""
    code, out, _, exceeded = run_as(mode, MEMORY_BOMB, memory_mb=128)
    alive = out.count("alive")
    assert exceeded == "memory" and code != 0, (code, out, exceeded)
    assert 0 < alive <= 4 and "all forked" not in out, out  # 4 x 32 MiB: the total, at most
    code, out, _, exceeded = run_as(mode, MEMORY_BOMB, memory_mb=None)
    assert (code, exceeded, out.count("alive")) == (0, None, 8) and "all forked" in out


CPU_BURN = """
import time
def spin(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
kids = []
for i in range(3):
    pid = os.fork()
    if pid == 0:
        spin(0.8)
        print("done", i, flush=True)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
print("all done", flush=True)
"""


@MODES
def test_cpu_time_counts_all_processes_together(mode):
    """Three processes of 0.8 s of CPU time each stay under a per-process limit of 1 s, but
    are 2.4 s together: over a total of 1 s, the sandbox is stopped. The control without a
    total runs them to the end."""
    code, out, _, exceeded = run_as(mode, CPU_BURN, cpu_seconds=1)
    assert exceeded == "cpu" and code != 0 and "all done" not in out, (code, out, exceeded)
    code, out, _, exceeded = run_as(mode, CPU_BURN, cpu_seconds=None)
    assert (code, exceeded, out.count("done")) == (0, None, 4), out


FILL = """
import errno
mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
def fill(folder):  # write 1 MiB blocks until the folder is full (or 16 MiB are written)
    written = 0
    with open(os.path.join(folder, "fill"), "wb") as f:
        for _ in range(16):
            f.write(b"x" * 2**20)
            f.flush()
            written += 1
    return written
for folder in sorted(set(mounts)):
    if folder.startswith(("/proc", "/sys")):
        continue
    if os.path.isdir(folder):
        stat = os.statvfs(folder)
        seen.setdefault("size", {})[folder] = stat.f_blocks * stat.f_frsize
        attempt("fill " + folder, lambda: fill(folder))
kernel_folder = ([m for m in mounts if "dnncourse-check-" in m] or [None])[0]
if kernel_folder:
    attempt("per-kernel folder", lambda: fill(kernel_folder))
seen["kernel folder"] = kernel_folder
"""


@MODES
def test_every_writable_folder_is_capped_storage(mode, tmp_path):
    """The kernel fills every folder it may write (each mount point inside): each is a tmpfs
    with a cap, none the host's disk. The per-kernel folder (connection file) is the host's,
    bound read-only: its ipc sockets are bound in a 64 KiB tmpfs of the sandbox's own."""
    seen = run_inside(FILL, mode, workdir_mb=4)
    cap = 4 * 2**20
    expected = {"/tmp": cap, "/dev/shm": cap, sandbox.HOME: cap, sandbox.SOCKETS: 64 * 1024}
    fills = {k[5:]: v for k, v in seen.items() if k.startswith("fill ")}
    assert len(fills) > len(expected) and "/" in fills, fills  # every mount point was tried
    for folder, (kind, message) in fills.items():
        if folder in expected:  # full at its cap
            assert kind == "OSError" and "No space left" in message, (folder, seen)
            assert seen["size"][folder] == expected[folder], (folder, seen)
        else:  # nothing could be written at all
            assert kind != "ok" and "No space left" not in message, (folder, seen)
    if template.enabled():  # forked: no folder of the host at all (the connection file is
        assert seen["kernel folder"] is None, seen  # written into the sockets' tmpfs)
        return
    kind, message = seen["per-kernel folder"]
    assert kind == "OSError" and "Read-only file system" in message, seen


SYSCALLS = """
import ctypes, mmap
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(*args):
    if libc.syscall(*args) < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return "done"
attempt("memfd_create", lambda: os.memfd_create("hidden"))
attempt("shmget", lambda: call(29, 0, 2**20, 0o1600))  # IPC_PRIVATE, IPC_CREAT | 0600
attempt("unshare user", lambda: call(272, 0x10000000))  # unshare(CLONE_NEWUSER)
attempt("mount", lambda: call(165, b"none", b"/tmp", b"tmpfs", 0, None))
attempt("bpf", lambda: call(321, 0, None, 0))
attempt("perf_event_open", lambda: call(298, None, 0, -1, -1, 0))
attempt("userfaultfd", lambda: call(323, 0))
attempt("io_uring_setup", lambda: call(425, 1, ctypes.create_string_buffer(120)))
pid = os.fork()
if pid == 0:
    os._exit(0)
seen["fork"] = ["ok", os.waitpid(pid, 0)[1]]
"""


@MODES
def test_system_calls_no_notebook_needs_are_denied(mode):
    """Memory no process maps (memfd, System V), namespaces and mounts of its own, and the
    kernel's rarely used interfaces fail with EPERM (x86-64 numbers). The control without the
    filter: memfd, System V memory and a user namespace of its own are there to be had."""
    if os.uname().machine != "x86_64":
        pytest.skip("system call numbers of x86-64")
    snippet = SYSCALLS
    seen = run_inside(snippet, mode)
    for name in (
        "memfd_create",
        "shmget",
        "unshare user",
        "mount",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
    ):
        assert "Operation not permitted" in seen[name][1], (name, seen[name])
    assert seen["fork"] == ["ok", 0], "an ordinary fork (clone without namespaces) still works"
    control = run_inside(snippet, mode, seccomp=False)
    for name in ("memfd_create", "shmget", "unshare user"):
        assert control[name][0] == "ok", (name, control[name])


@pytest.mark.slow
def test_a_notebook_over_the_total_memory_gets_memory_limit(tmp_path):
    """A cell forks up to twenty processes of 200 MiB, each far under the address-space limit
    of one process (a forked kernel maps ~1.4 GiB); together over the student's 2000 MiB
    (4000 MiB with twenty), the sandbox is stopped and the student's status is ``memory
    limit``, with what happened in the details."""
    import nbformat

    from dnncourse.grading.execute import Limits, execute

    bomb = (
        "import os, time\nfor i in range(20):\n    if os.fork() == 0:\n"
        "        block = b'x' * (200 * 2**20)\n        print('alive', i, flush=True)\n"
        "        time.sleep(60)\n        os._exit(0)\n    time.sleep(0.5)\nprint('all alive')"
    )
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("print('before')"), nbformat.v4.new_code_cell(bomb)]
    )
    run = execute(nb, tmp_path, Limits(memory_limit_mb=2000, cell_timeout=90))
    assert run.status == "memory limit", (run.details, nb.cells[1].outputs)
    assert any("all processes together used more than 2000 MiB" in d for d in run.details)
    assert nb.cells[0].outputs[0]["text"] == "before\n"
    text = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert "alive 0" in text and "all alive" not in text, nb.cells[1].outputs
