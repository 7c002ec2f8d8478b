"""The grading engine on dask.distributed: local and multi-machine runs agree, faults, resume,
the gradebook on a real PostgreSQL server.

A tiny assignment (two test cells, 2 + 1 points, no PyTorch in the notebook) keeps each
student to one kernel start. The "cluster" is a real ``dask scheduler`` and two ``dask
worker`` processes on 127.0.0.1, each started in a folder of its own with its own TMPDIR
(a multi-machine simulation: the workers share no folder with the client).
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from dnncourse.grading import grade
from dnncourse.grading.course import COURSE_ID
from dnncourse.grading.protocol import Status
from dnncourse.homework import tool_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ANSWER = "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n"
PROBE = "from dnncourse.grading.probe import probe\n"
HIDDEN = "probe('a negative number', lambda: double(-3))"
TESTS = {  # grade_id -> (source, points): visible asserts, hidden probes
    "test_ints": (
        "assert double(2) == 4, 'double(2) should be 4'\n"
        f"### BEGIN HIDDEN TESTS\n{PROBE}{HIDDEN}\n### END HIDDEN TESTS",
        2,
    ),
    "test_floats": (
        "assert double(0.25) == 0.5, 'double(0.25) should be 0.5'\n"
        f"### BEGIN HIDDEN TESTS\n{PROBE}probe('a quarter', lambda: double(0.25))\n"
        "### END HIDDEN TESTS",
        1,
    ),
}
ANSWERS = {  # student -> (answer, expected score)
    "solution": ("def double(x):\n    return 2 * x\n", 3.0),
    "ints_only": ("def double(x):\n    return x + x if isinstance(x, int) else 0\n", 2.0),
    "visible_only": ("def double(x):\n    return 4 if x == 2 else x\n", 0.0),  # hidden fails
}


def tiny_course(root: Path, assignment: str = "tiny") -> Path:
    """A course folder with one tiny assignment (nbgrader's cell pattern)."""
    shutil.copy2(ROOT / "nbgrader_config.py", root / "nbgrader_config.py")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}

    def meta(gid, **kw):
        return {"nbgrader": {"grade_id": gid, "schema_version": 3, "task": False, **kw}}

    nb.cells.append(nbformat.v4.new_markdown_cell("Write `double`.", metadata=meta("q")))
    nb.cells[-1].metadata["nbgrader"].update(grade=False, solution=False, locked=True)
    nb.cells.append(
        nbformat.v4.new_code_cell(
            ANSWER, metadata=meta("double", grade=False, solution=True, locked=False)
        )
    )
    for gid, (source, points) in TESTS.items():
        nb.cells.append(
            nbformat.v4.new_code_cell(
                source, metadata=meta(gid, grade=True, solution=False, locked=True, points=points)
            )
        )
    folder = root / "solutions" / assignment
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{assignment}.ipynb")
    return root


def student_notebook(root: Path, answer: str | None, extra: str | None = None, name="tiny"):
    """The instructor's notebook with the hidden tests out and ``answer`` in the answer cell."""
    nb = nbformat.read(root / "solutions" / name / f"{name}.ipynb", as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid == "double":
            cell.source = answer or "# YOUR CODE HERE\nraise NotImplementedError()"
        if gid in TESTS:
            cell.source = cell.source.split("### BEGIN HIDDEN TESTS")[0]
    if extra:
        nb.cells.insert(2, nbformat.v4.new_code_cell(extra))
    return nb


def make_class(root: Path, folder: Path, students: dict, name="tiny") -> Path:
    """``students``: id -> (answer, extra cell or None); a student without a notebook: None."""
    for student, spec in students.items():
        (folder / student).mkdir(parents=True)
        if spec is not None:
            nb = student_notebook(root, *spec, name=name)
            nbformat.write(nb, folder / student / f"{name}.ipynb")
    return folder


def read_csv(path: Path) -> dict[str, dict]:
    with open(path) as f:
        return {r["student_id"]: r for r in csv.DictReader(f)}


def without_seconds(rows: dict[str, dict]) -> dict[str, dict]:
    return {s: {k: v for k, v in r.items() if k != "seconds"} for s, r in rows.items()}


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tiny_course(tmp_path_factory.mktemp("course"))
    students = {s: (answer, None) for s, (answer, _) in ANSWERS.items()}
    students["missing"] = None
    subs = make_class(root, root / "submissions", students)
    return root, subs


@pytest.fixture(scope="module")
def local(course):
    root, subs = course
    out = root / "out-local"
    results = grade("tiny", subs, out, jobs=2, root=root, progress=False)
    return out, results


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and two workers (with nannies), each in a folder of its own."""
    base = tmp_path_factory.mktemp("cluster")
    env = {**tool_env(), "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}
    bindir = Path(sys.executable).parent
    procs = []

    def start(name, *args):
        home = base / name
        (home / "tmp").mkdir(parents=True)
        log = open(home / "log", "w")
        procs.append(
            subprocess.Popen(
                [str(bindir / "dask"), *args],
                cwd=home,
                env={**env, "TMPDIR": str(home / "tmp")},
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        )
        return home

    sched = start(
        "scheduler",
        "scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-dashboard",
        "--scheduler-file",
        str(base / "scheduler.json"),
    )
    deadline = time.monotonic() + 60
    while not (base / "scheduler.json").is_file():
        assert time.monotonic() < deadline, (sched / "log").read_text()
        time.sleep(0.2)
    address = json.loads((base / "scheduler.json").read_text())["address"]
    homes = [
        start(
            f"machine{i}",
            "worker",
            address,
            "--nthreads",
            "1",
            "--nworkers",
            "1",
            "--no-dashboard",
            "--local-directory",
            str(base / f"machine{i}" / "dask"),
            "--host",
            "127.0.0.1",
            "--name",
            f"machine{i}",
        )
        for i in (1, 2)
    ]
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=120)
    yield address, homes
    for proc in reversed(procs):
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_local_run_grades_stores_and_hides(local):
    from nbgrader.api import Gradebook

    out, _ = local
    rows = read_csv(out / "grades.csv")
    expected = {s: score for s, (_, score) in ANSWERS.items()}
    assert {s: float(r["score"]) for s, r in rows.items()} == {**expected, "missing": 0.0}
    assert rows["missing"]["status"] == Status.MISSING
    assert all(rows[s]["status"] == Status.OK for s in ANSWERS)
    assert all(float(r["max_score"]) == 3 for r in rows.values())
    # nbgrader's gradebook has the scores per test, as SaveAutoGrades stores them
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}", COURSE_ID) as gb:
        ints = gb.find_grade("test_ints", "tiny", "tiny", "ints_only")
        floats = gb.find_grade("test_floats", "tiny", "tiny", "ints_only")
        assert (ints.auto_score, floats.auto_score) == (2, 0)
        assert gb.find_submission("tiny", "solution").score == 3
    graded = out / "course" / "autograded" / "solution" / "tiny" / "tiny.ipynb"
    assert HIDDEN in graded.read_text(), "the graded notebook ran the hidden test"
    for student in rows:
        page = (out / "feedback" / student / "tiny.html").read_text()
        assert HIDDEN not in page and "double(-3)" not in page


def test_each_result_carries_the_phases_of_its_grading(local):
    """The breakdown of benchmarks/bench_grading.py: every phase of a graded student is
    recorded, and the grading process's phases add up to the time it measured."""
    from dnncourse.grading.timings import PHASES

    _, results = local
    for result in results:
        if result.status != Status.OK:  # the missing notebook: nothing ran
            continue
        laps = result.timings
        # the tiny notebook has no set-up cell that imports (its answer cell defines)
        assert set(laps) == set(PHASES) - {"import cells"}, result.student
        assert all(min(lap) >= 0 and lap[1] >= lap[2] for lap in laps.values()), laps
        grading = sum(lap[0] for k, lap in laps.items() if k not in ("dispatch: worker", "store"))
        assert grading == pytest.approx(result.seconds, abs=0.02), laps
        assert laps["kernel start"][2] > 0.05, "the kernel's own CPU time is counted"


def test_a_cluster_of_two_machines_gives_the_same_grades(local, course, cluster):
    root, subs = course
    address, homes = cluster
    out = root / "out-cluster"
    grade("tiny", subs, out, root=root, scheduler=address, progress=False)
    assert without_seconds(read_csv(out / "grades.csv")) == without_seconds(
        read_csv(local[0] / "grades.csv")
    )
    for student in read_csv(out / "grades.csv"):
        assert (out / "feedback" / student / "tiny.html").is_file()
    # the workers unpacked the bundle in their own temporary folders, nowhere else
    unpacked = [list((home / "tmp").glob("dnncourse-worker-*/bundle-*")) for home in homes]
    assert any(unpacked), "no worker unpacked the bundle in its own TMPDIR"
    # each kernel and its sandbox were shut down and collected: under a worker, between two
    # classes, its grading process is left with the one kernel it launched for the next
    # student (tests/test_warm.py), never one per student, and no zombie
    from distributed import Client

    def _left() -> dict[str, list[str]]:  # nested: sent to the workers by value
        import psutil

        found = {"zombie": [], "bwrap": [], "kernel": []}
        for proc in psutil.Process().children(recursive=True):
            try:
                kids = proc.children() if proc.name() == "bwrap" else []
                if kids and "dnncourse.grading.template" in kids[0].cmdline():
                    # the template stays for the next class, idle; a kernel forked from it
                    # counts as a kernel (the one waiting for the next student, if any)
                    found["kernel"] += [f"{k.pid} forked" for k in kids[0].children()]
                    continue
                if proc.status() == psutil.STATUS_ZOMBIE:
                    found["zombie"].append(f"{proc.pid} {proc.name()}")
                elif proc.name() == "bwrap":
                    found["bwrap"].append(f"{proc.pid} {proc.status()}")
                elif "dnncourse.grading.kernel" in proc.cmdline():
                    found["kernel"].append(f"{proc.pid} {proc.status()}")
            except psutil.NoSuchProcess:
                pass
        return found

    with Client(address, timeout=30) as client:
        left = client.run(_left)
    assert all(not f["zombie"] for f in left.values()), left
    assert all(len(f["bwrap"]) <= 1 and len(f["kernel"]) <= 1 for f in left.values()), left


def running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_worker_killed_mid_class_and_a_notebook_that_kills_workers(course, cluster, tmp_path):
    """A machine lost mid-class: its student is graded again elsewhere; a notebook that kills
    its worker twice is a grader error. No sandbox here: the notebooks reach their worker.

    The "slow" student's first attempt writes the pids of the Dask worker grading it, of its
    grading process and of its kernel into a gate folder, then waits for two minutes; the
    test kills that worker (after opening the gate) and the retry, seeing the gate open,
    finishes at once. No timing window: the kill always lands while the student is being
    graded. The killed worker's grading process and kernel end with it, not two minutes
    later (they would go on grading a student who is graded again elsewhere).
    """
    root, _ = course
    address, _ = cluster
    gate = tmp_path / "gate"
    gate.mkdir()
    slow = (  # kernel -> grading process -> Dask worker
        "import os, pathlib, psutil, time\n"
        f"gate = pathlib.Path({str(gate)!r})\n"
        "if not (gate / 'open').exists():\n"
        "    me = psutil.Process()\n"
        "    family = [me.parent().parent().pid, me.parent().pid, me.pid]\n"
        "    (gate / 'worker.tmp').write_text(' '.join(map(str, family)))\n"
        "    (gate / 'worker.tmp').rename(gate / 'worker')\n"
        "    deadline = time.monotonic() + 120\n"
        "    while time.monotonic() < deadline:\n"
        "        time.sleep(0.1)\n"
    )
    killer = (
        "import os, signal, psutil\n"
        "os.kill(psutil.Process().parent().parent().pid, signal.SIGKILL)"
    )
    good = ANSWERS["solution"][0]
    killed, orphans, left = [], [], []

    def kill_the_slow_ones_worker():
        deadline = time.monotonic() + 300
        while not (gate / "worker").exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        pid, *below = map(int, (gate / "worker").read_text().split())
        orphans.extend(psutil.Process(p) for p in below)  # alive: the kernel is waiting
        (gate / "open").touch()  # the retry must not wait
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        _, alive = psutil.wait_procs(orphans, timeout=20)
        left.extend(p.pid for p in alive if running(p))

    def run(name, students):
        subs = make_class(root, tmp_path / name, students)
        out = tmp_path / f"out-{name}"
        kw = dict(root=root, scheduler=address, progress=False, sandbox=False)
        return {r.student: r for r in grade("tiny", subs, out, **kw)}

    # two classes, so that the killer never takes down a worker the slow student's retry is
    # queued on (that would be its second lost worker: a grader error by the rules)
    thread = threading.Thread(target=kill_the_slow_ones_worker, daemon=True)
    thread.start()
    rows = run("lost", {"slow": (good, slow), "other": (good, None)})
    thread.join(timeout=30)
    assert killed, "the slow student never announced its worker"
    assert len(orphans) == 2 and not left, (
        f"grading process and kernel outlived the worker: {left}"
    )
    assert rows["slow"].status == Status.OK and rows["slow"].score == 3, rows["slow"]
    assert rows["other"].status == Status.OK and rows["other"].score == 3, rows["other"]
    rows = run("killer", {"killer": (good, killer)})
    assert rows["killer"].status == Status.GRADER_ERROR and rows["killer"].score == 0
    assert "two grading workers" in rows["killer"].detail
    from distributed import Client

    with Client(address, timeout=30) as client:  # the nannies replaced the dead workers
        client.wait_for_workers(2, timeout=120)
        assert not set(client.run(os.getpid).values()) & set(killed)


GRADING_PROCESS_OF_A_WORKER = """
import subprocess, sys
from concurrent.futures import ThreadPoolExecutor

def start():  # as in a Dask worker: from a thread of its task pool
    return subprocess.Popen(
        [sys.executable, "-m", "dnncourse.grading.worker"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )

proc = ThreadPoolExecutor(1).submit(start).result()
proc.stdin.write(sys.stdin.readline())  # one task, then the worker is killed
proc.stdin.flush()
print(proc.pid, flush=True)
sys.stdin.readline()
"""


def test_a_grading_process_whose_worker_was_killed_grades_nothing(course, tmp_path):
    """The worker hands a student to its grading process and is killed at once, while that
    process is still starting: it must not go on to grade the student (the queue grades
    them again). A parent-death signal set after the worker is gone is never delivered,
    so without a hang-up check the student's notebook ran in full as an orphan."""
    from dnncourse.grading.course import make_bundle, prepare
    from dnncourse.grading.protocol import Task, encode
    from dnncourse.grading.worker import Job

    root, _ = course
    grading = prepare(root, "tiny", tmp_path / "out")
    bundle = make_bundle(grading, sandbox=False)
    folder = tmp_path / "bundle"
    for name, data in bundle.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    marker = tmp_path / "ran"
    nb = student_notebook(root, ANSWERS["solution"][0], f"open({str(marker)!r}, 'w').close()")
    files = {"tiny.ipynb": nbformat.writes(nb).encode()}
    task = Task("s", "tiny", files, bundle.hash, sandbox=False)
    worker = subprocess.Popen(
        [sys.executable, "-c", GRADING_PROCESS_OF_A_WORKER],
        cwd=tmp_path,
        env=tool_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    worker.stdin.write(encode(Job(task, str(folder), "n")) + "\n")
    worker.stdin.flush()
    grading = psutil.Process(int(worker.stdout.readline()))
    worker.kill()
    worker.wait()
    psutil.wait_procs([grading], timeout=120)
    assert not running(grading), "the orphaned grading process is still running"
    assert not marker.exists(), "the orphaned grading process ran the student's notebook"


def run_cli(*args, cwd, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "dnncourse.cli", "grade", *args, "--no-progress"],
        cwd=cwd,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kw,
    )


def test_resume_after_an_interrupted_run_regrades_only_what_is_missing_or_changed(
    course, tmp_path
):
    from nbgrader.api import Gradebook

    root, _ = course
    students = {s: (answer, None) for s, (answer, _) in ANSWERS.items()}
    subs = make_class(root, tmp_path / "subs", students)
    out = tmp_path / "out"
    args = ["tiny", str(subs), "--out", str(out), "--jobs", "1"]
    proc = run_cli(*args, cwd=root)
    deadline = time.monotonic() + 300
    while len(list((out / "results").glob("*.json"))) < 2:  # stop it after two students
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the client, its local cluster and kernels
    proc.wait()
    kept = {p.stem: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    assert 2 <= len(kept) < len(students), "the run was not interrupted mid-class"
    changed, unchanged = sorted(kept)
    wrong = "def double(x):\n    return 0\n"
    nbformat.write(student_notebook(root, wrong), subs / changed / "tiny.ipynb")
    # the instructor grades a test of the unchanged student by hand between the two runs
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}", COURSE_ID) as gb:
        grade = gb.find_grade("test_ints", "tiny", "tiny", unchanged)
        grade.manual_score = 0.5
        gb.db.commit()
        by_hand = float(gb.find_submission("tiny", unchanged).score)
    expected = {s: score for s, (_, score) in ANSWERS.items()}
    assert by_hand != expected[unchanged], "the manual grade changed nothing"

    proc = run_cli(*args, "--resume", cwd=root)
    assert proc.wait(timeout=600) == 0, proc.stdout.read()
    rows = read_csv(out / "grades.csv")
    assert {s: float(r["score"]) for s, r in rows.items()} == {
        **expected,
        changed: 0.0,
        unchanged: by_hand,  # kept, with the manual grade in grades.csv
    }
    after = {p.stem: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    assert after[unchanged] == kept[unchanged], "an unchanged student was graded again"
    assert after[changed] != kept[changed], "a changed notebook was not graded again"
    assert set(after) == set(students)


def test_an_unreachable_scheduler_is_a_clear_error(course, tmp_path, monkeypatch, capsys):
    from dnncourse.cli import main
    from dnncourse.grading import engine

    root, subs = course
    monkeypatch.setattr(engine, "CONNECT_TIMEOUT", 3.0)
    monkeypatch.chdir(root)
    code = main(["grade", "tiny", str(subs), "--out", str(tmp_path / "out"),
                 "--scheduler", "tcp://127.0.0.1:9", "--no-progress"])  # fmt: skip
    assert code == 1
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A real PostgreSQL server (pgserver bundles one), for the module."""
    pgserver = pytest.importorskip(
        "pgserver",
        reason="pgserver has no wheel for this Python (the lock installs it below 3.13)",
    )

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


def test_two_classes_graded_into_one_postgresql_database_at_once(postgres, tmp_path):
    from nbgrader.api import Gradebook

    from dnncourse.grading.course import database_url

    (tmp_path / "course").mkdir()
    root = tiny_course(tiny_course(tmp_path / "course", "tiny"), "other")
    two = {s: ANSWERS[s] for s in ("solution", "ints_only")}
    procs = []
    for name in ("tiny", "other"):
        subs = make_class(
            root, tmp_path / f"subs-{name}", {s: (a, None) for s, (a, _) in two.items()}, name=name
        )
        procs.append(run_cli(name, str(subs), "--out", str(tmp_path / f"out-{name}"),
                             "--jobs", "1", "--db", postgres, cwd=root))  # fmt: skip
    for proc in procs:
        assert proc.wait(timeout=600) == 0, proc.stdout.read()
    with Gradebook(database_url(postgres), COURSE_ID) as gb:
        for name in ("tiny", "other"):
            for student, (_, score) in two.items():
                assert gb.find_submission(name, student).score == score, (name, student)
        assert sorted(s.id for s in gb.students) == sorted(two)
