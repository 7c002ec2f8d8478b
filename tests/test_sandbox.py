"""The grading sandbox (bubblewrap), tested from inside: each test runs a snippet in a fresh
sandbox, exactly as a kernel is started (the launcher's drop of rights included), and checks
what the snippet could see and do. A snippet prints one JSON line; anything it could not do
is recorded as the exception's type, so a test proves the attempt ran and failed.

Whole graded notebooks attacking the grader are in test_grading_corpus.py.
"""

import json
import os
import secrets
import socket
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from dnncourse.grading import sandbox

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


def run_inside(code: str, **options) -> dict:
    """Run ``code`` (which fills the dict ``seen``) in a sandbox; return ``seen``."""
    proc = sandbox._run_inside(
        TRY + textwrap.dedent(code) + "\nprint('SEEN', json.dumps(seen))", **options
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SEEN ")]
    assert lines, proc.stdout + proc.stderr
    return json.loads(lines[-1][5:])


def test_unprivileged_without_capabilities():
    seen = run_inside(
        """
        status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
        seen["ids"] = [os.getresuid(), os.getresgid(), os.getgroups()]
        seen["caps"] = {k: int(status[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")}
        seen["bounding"] = int(status["CapBnd"], 16)
        seen["no_new_privs"] = status["NoNewPrivs"].strip()
        attempt("setuid 0", lambda: os.setuid(0))
        attempt("chroot", lambda: os.chroot("/tmp"))
        """
    )
    uid, gid, groups = seen["ids"]
    assert uid == [65534] * 3 and gid == [65534] * 3 and groups in ([], [65534])
    assert seen["caps"] == dict.fromkeys(seen["caps"], 0)
    if sandbox.privileged():  # as root the launcher also empties the bounding set
        assert seen["bounding"] == 0
    assert seen["no_new_privs"] == "1"
    assert seen["setuid 0"][0] == "PermissionError"
    assert seen["chroot"][0] == "PermissionError"


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
    assert capsys.readouterr().err.count(f"{gone}") == 2, "one message for each attempt"

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
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not left, [(p.pid, p.name(), p.status()) for p in left]


def test_doctor_reports_every_check():
    results = sandbox.requirements()
    names = [r.name for r in results]
    for name in (
        "bwrap runs",
        "sandbox starts",
        "unprivileged",
        "network off",
        "fork bomb stopped",
    ):
        assert name in names
    assert all(r.ok for r in results), [r for r in results if not r.ok]


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
