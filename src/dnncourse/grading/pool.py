"""Grade a class: N warm worker processes, a hard timeout per student, one row each.

Each worker (:mod:`dnncourse.grading.worker`) is started once and grades students one after
another (its imports stay warm; each student still gets a fresh kernel). A thread per
worker hands it a student and waits at most ``timeout`` seconds for the answer; past that it
kills the worker with all its children (the kernel included) and starts a new one, and the
student's row says ``timeout``. A worker that crashes costs only the student it was grading.
"""

import csv
import json
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import psutil
from tqdm.auto import tqdm

from ..homework import tool_env
from .course import Course, register
from .execute import Limits
from .worker import NO_SANDBOX, RESULT_PREFIX

COLUMNS = ["student_id", "assignment", "score", "max_score", "status", "detail", "seconds"]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (children first collected, then killed)."""
    try:
        parent = psutil.Process(pid)
        family = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=5)


class Worker:
    """One worker process and the thread-safe queue of the lines it prints."""

    def __init__(self, course: Course, log: Path, threads: int = 1):
        self.log = open(log, "a")
        # N kernels at once share the cores: each gets its share of threads, so that
        # torch's intra-op threads do not oversubscribe the machine (unless the user set it).
        env = tool_env()
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, str(threads))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dnncourse.grading.worker", course.to_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(RESULT_PREFIX):
                try:
                    row = json.loads(line[len(RESULT_PREFIX) :])
                except ValueError:
                    continue
                if isinstance(row, dict):
                    self.lines.put(row)
        self.lines.put(None)  # the worker is gone

    def grade(self, task: dict, timeout: float | None) -> dict | None:
        """The row for ``task``, or None if the worker did not answer in time or died.

        A row counts only if it carries the task's nonce and student: nothing that a kernel
        might manage to write to the worker's pipes can pass for a result.
        """
        task = {**task, "nonce": secrets.token_hex(16)}
        deadline = None if timeout is None else time.monotonic() + timeout
        self.proc.stdin.write(json.dumps(task) + "\n")
        self.proc.stdin.flush()
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                row = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if row is None:
                return None
            ours = row.pop("nonce", None) == task["nonce"]
            if ours and row.get("student_id") == task["student"]:
                return row

    def stop(self, kill: bool = False):
        if kill:
            kill_tree(self.proc.pid)
        else:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                kill_tree(self.proc.pid)
        self.log.close()


def grade_class(
    course: Course,
    submissions: dict[str, Path],
    jobs: int | None = None,
    limits: Limits | None = None,
    timeout: float | None = 600.0,
    progress: bool = True,
    sandbox: bool = True,
) -> list[dict]:
    """Grade every student of ``submissions`` (student id -> folder); one row each.

    With ``sandbox=False`` the kernels run as the grader (``--no-sandbox``): every row's
    ``detail`` says so.
    """
    limits = limits or Limits()
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(submissions) or 1))
    logs = Path(course.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    register(course, sorted(submissions))
    todo = queue.Queue()
    for student in sorted(submissions):
        todo.put(student)

    def slot(index: int) -> list[dict]:
        rows, worker = [], None
        while True:
            try:
                student = todo.get_nowait()
            except queue.Empty:
                break
            if worker is None:
                threads = max(1, (os.cpu_count() or 1) // jobs)
                worker = Worker(course, logs / f"worker-{index}.log", threads)
            task = {
                "student": student,
                "folder": str(submissions[student]),
                "limits": asdict(limits),
                "sandbox": sandbox,
            }
            start = time.perf_counter()
            row = worker.grade(task, timeout)
            if row is None:
                alive = worker.proc.poll() is None
                worker.stop(kill=True)
                worker = None
                row = {
                    "student_id": student,
                    "status": "timeout" if alive else "grader error",
                    "detail": (
                        f"grading took longer than {timeout:g} s: stopped"
                        if alive
                        else f"the grading worker died (see {logs})"
                    ),
                }
            row.setdefault("seconds", round(time.perf_counter() - start, 2))
            rows.append(row)
            bar.update(1)
            bar.set_postfix_str(f"{student}: {row['status']}", refresh=False)
        if worker is not None:
            worker.stop()
        return rows

    rows = []
    with (
        tqdm(
            total=len(submissions),
            desc=f"grading {course.assignment}",
            disable=not progress,
            unit="student",
        ) as bar,
        ThreadPoolExecutor(jobs) as pool,
    ):
        for future in as_completed([pool.submit(slot, i) for i in range(jobs)]):
            rows += future.result()
    from .course import max_score as assignment_max

    max_score = assignment_max(course)
    for row in rows:
        row.setdefault("assignment", course.assignment)
        row.setdefault("score", 0.0)
        row.setdefault("max_score", max_score)
        row.setdefault("detail", "")
        if not sandbox and NO_SANDBOX not in row["detail"]:  # rows the pool made itself
            row["detail"] = "; ".join(filter(None, [row["detail"], NO_SANDBOX]))
    return sorted(rows, key=lambda r: r["student_id"])


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def sandbox_line(sandbox: bool) -> str:
    """The summary's line that says whether student code ran sandboxed."""
    if not sandbox:
        return (
            "sandbox: OFF (--no-sandbox): student code ran as the grader, with its files "
            "and network"
        )
    from .sandbox import pids_cgroup_root, privileged

    who = "uid 65534, no capabilities" if privileged() else "uid 65534 in a user namespace"
    procs = "cgroup pids" if pids_cgroup_root() else "RLIMIT_NPROC"
    return (
        f"sandbox: active (bubblewrap; {who}; no network; read-only system; "
        f"process limit: {procs})"
    )


def summary(rows: list[dict], sandbox: bool | None = None) -> str:
    """A table of the students by status, the mean score, and (if given) the sandbox line."""
    lines = [f"{'status':<18}{'students':>9}{'mean score':>12}"]
    for status in sorted({r["status"] for r in rows}):
        group = [r for r in rows if r["status"] == status]
        mean = sum(float(r["score"]) for r in group) / len(group)
        lines.append(f"{status:<18}{len(group):>9}{mean:>12.2f}")
    if rows:
        total = sum(float(r["score"]) for r in rows) / len(rows)
        lines.append(f"{'all':<18}{len(rows):>9}{total:>12.2f}  (of {rows[0]['max_score']:g})")
    if sandbox is not None:
        lines.append(sandbox_line(sandbox))
    return "\n".join(lines)
