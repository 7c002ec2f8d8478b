"""The ``dnncourse`` command line: arguments, clear errors, exit statuses.

Grading a class end to end is in test_grading_corpus.py; ``release`` (which regenerates and
grades every assignment) is exercised on a copy of the repository, marked slow.
"""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dnncourse.cli import main, parser
from dnncourse.homework import tool_env

ROOT = Path(__file__).resolve().parents[1]


def test_grade_arguments_and_defaults():
    args = parser().parse_args(["grade", "hw1", "subs", "--out", "graded"])
    assert (args.assignment, args.submissions, args.out) == ("hw1", Path("subs"), Path("graded"))
    assert args.jobs >= 1 and args.cell_timeout == 60 and args.timeout == 600
    assert args.memory_limit == 4096 and args.db is None
    assert args.scheduler is None and not args.resume
    args = parser().parse_args(
        [
            "grade",
            "hw1",
            "s",
            "--out",
            "o",
            "--jobs",
            "3",
            "--cell-timeout",
            "5",
            "--timeout",
            "30",
            "--memory-limit",
            "0",
            "--db",
            "postgresql://grader@db/course",
            "--scheduler",
            "tcp://head:8786",
            "--resume",
        ]
    )
    assert (args.jobs, args.cell_timeout, args.timeout, args.memory_limit) == (3, 5, 30, 0)
    assert args.db == "postgresql://grader@db/course"
    assert args.scheduler == "tcp://head:8786" and args.resume


def test_out_is_required_and_numbers_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["grade", "hw1", "subs"])
    assert "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser().parse_args(["grade", "hw1", "s", "--out", "o", "--cell-timeout", "-1"])
    assert "expected a number >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["grade", "serve"])
def test_grade_and_serve_read_the_limits_alike(command, capsys):
    """One definition of the limits (protocol.Limits): the same flags, defaults and help in
    ``grade`` and ``serve``; 0 is no limit in both, a negative value an error in both."""
    from dnncourse.grading.protocol import Limits, limits_from_options

    start = {"grade": ["grade", "hw1", "s", "--out", "o"], "serve": ["serve", "--data", "d"]}
    args = start[command]
    assert limits_from_options(parser().parse_args(args)) == Limits()
    zero = ["--timeout", "0", "--cell-timeout", "0", "--memory-limit", "0"]
    limits = limits_from_options(parser().parse_args([*args, *zero]))
    assert (limits.timeout, limits.cell_timeout, limits.memory_limit_mb) == (None, None, None)
    for flag in ("--timeout", "--cell-timeout", "--memory-limit"):
        with pytest.raises(SystemExit):
            parser().parse_args([*args, flag, "-1"])
        assert "expected a number >= 0 (0: no limit), got -1" in capsys.readouterr().err


def test_the_help_of_a_limit_is_written_once(capsys):
    from dnncourse.grading.protocol import Limits

    helps = {}
    for command in ("grade", "serve"):
        with pytest.raises(SystemExit):
            parser().parse_args([command, "--help"])
        helps[command] = " ".join(capsys.readouterr().out.split())
    for field in Limits.__dataclass_fields__.values():
        if field.metadata["flag"]:
            text = " ".join(field.metadata["help"].split())
            assert text in helps["grade"] and text in helps["serve"], field.name
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        Limits(timeout=-1)


def test_missing_submissions_folder_is_a_clear_error(tmp_path, capsys):
    code = main(["grade", "hw1", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_jobs_is_a_clear_error(tmp_path, capsys):
    code = main(["grade", "hw1", str(tmp_path), "--out", str(tmp_path / "o"), "--jobs", "0"])
    assert code == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err


def test_unknown_assignment_names_the_known_ones(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    (tmp_path / "alice").mkdir()
    code = main(["grade", "hw99", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 1
    err = capsys.readouterr().err
    assert "unknown assignment 'hw99'" in err and "hw1" in err


def test_release_of_an_unknown_assignment_fails(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["release", "hw99"]) == 1
    assert "unknown assignment" in capsys.readouterr().err


def test_the_console_script_is_installed():
    script = Path(sys.executable).parent / "dnncourse"
    assert script.is_file(), "run `pip install --no-deps -e .` (make venv does)"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "release" in proc.stdout and "grade" in proc.stdout


@pytest.fixture
def course_copy(tmp_path):
    """A copy of the course's homework files: release may rewrite exercises/ there."""
    for name in ("nbgrader_config.py",):
        shutil.copy2(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "solutions" / "hw1", tmp_path / "solutions" / "hw1")
    shutil.copytree(ROOT / "exercises" / "hw1", tmp_path / "exercises" / "hw1")
    return tmp_path


def run_cli(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "dnncourse.cli", *args],
        cwd=cwd,
        env={**tool_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_release_validates_and_fails_on_a_leaky_or_wrong_homework(course_copy):
    proc = run_cli("release", "hw1", cwd=course_copy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "hw1: released" in proc.stdout
    # break the instructor's solution: validation must fail with a clear message
    path = next((course_copy / "solutions" / "hw1").glob("*.ipynb"))
    path.write_text(path.read_text().replace("residual2.sum(),", "residual2.sum() + 1,"))
    proc = run_cli("release", "hw1", cwd=course_copy)
    assert proc.returncode == 1
    assert "hw1: FAILED validation" in proc.stderr and "the solution" in proc.stderr


@pytest.mark.slow
def test_grade_gives_every_student_a_row_and_regrading_is_stable(course_copy, tmp_path):
    subs = tmp_path / "subs"
    shutil.copytree(course_copy / "exercises" / "hw1", subs / "stub")
    (subs / "nothing").mkdir()
    out = tmp_path / "out"
    for _ in range(2):  # the second run regrades into the same gradebook
        proc = run_cli(
            "grade",
            "hw1",
            str(subs),
            "--out",
            str(out),
            "--jobs",
            "2",
            "--no-progress",
            cwd=course_copy,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        with open(out / "grades.csv") as f:
            rows = {r["student_id"]: r for r in csv.DictReader(f)}
        assert set(rows) == {"stub", "nothing"}
        assert rows["stub"]["status"] == "ok" and float(rows["stub"]["score"]) == 0
        assert rows["nothing"]["status"] == "missing notebook"
        assert "missing notebook" in proc.stdout  # the summary table


@pytest.mark.slow
def test_the_hard_timeout_kills_the_student_kernel(course_copy, tmp_path):
    import json

    import psutil

    nb = json.loads(next((course_copy / "exercises" / "hw1").glob("*.ipynb")).read_text())
    token = f"left-behind-{os.getpid()}-{id(nb)}"
    loop = (  # a daemon (double fork, own session), then a loop that ignores SIGINT
        "import os, signal, sys\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)',"
        f" {token!r}])\n    os._exit(0)\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
    )
    nb["cells"].insert(
        0,
        {
            "cell_type": "code",
            "id": "loop",
            "metadata": {},
            "outputs": [],
            "execution_count": None,
            "source": loop,
        },
    )
    subs = tmp_path / "subs"
    (subs / "looper").mkdir(parents=True)
    (subs / "looper" / "hw1_polynomial_gradients.ipynb").write_text(json.dumps(nb))
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    proc = run_cli(
        "grade",
        "hw1",
        str(subs),
        "--out",
        str(out),
        "--jobs",
        "1",
        "--cell-timeout",
        "300",
        "--timeout",
        "10",
        "--no-progress",
        cwd=course_copy,
        env={"TMPDIR": str(tmp)},  # the workers' folders, and the kernels' working folders
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out / "grades.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "timeout" and float(row["score"]) == 0
    assert "longer than 10 s" in row["detail"]
    left = []
    for p in psutil.process_iter(["cwd", "cmdline"]):
        cwd = p.info["cwd"] or ""
        if cwd.startswith((str(out), str(tmp))) or token in (p.info["cmdline"] or []):
            left.append(p)
    assert not left, f"processes left running in {out} or {tmp}: {left}"
