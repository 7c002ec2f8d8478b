"""The submission service against ``dnncourse grade``: idle feedback time and a burst's drain.

Issue 24's goals for ``dnncourse serve``, measured in one run on the same notebooks and the
same number of workers (``--jobs``):

1. **grade**: ``--students`` hw1 notebooks (half the instructor's answers, 10 points; half a
   wrong ``cubic_gradients``, 5 points) graded by :func:`dnncourse.grading.engine.grade_class`
   (``dnncourse grade --jobs J`` in this process; the reference run made before, as it is
   cached between runs). Timed in full (the local cluster's start included) and from the
   cluster being up to the last result stored (its drain).
2. **The service** (``dnncourse serve --jobs J``, loopback, no hourly limit) with the same
   students signed in; one hand-in first, not counted (the assignment prepared, the
   workers started: a service in the middle of a term).
3. **Idle**: ``--idle`` hand-ins one at a time, each after ``--pause`` seconds with nothing
   queued (time for the workers' next kernels to start, as in a quiet hour). Each
   is timed from the upload to the moment the submission's JSON says *graded* (the page's
   own long poll), against **the notebook's own run time**: the wall seconds of its cells
   (the student's cells and the test cells with the hidden tests) executed in the kernel,
   measured in the same grading (``Result.timings``: the phases ``import cells``,
   ``student cells``, ``test cells``). Goal: upload-to-feedback <= own run time + 1 s.
4. **Burst**: all students upload at once (a barrier) and long-poll their submission until
   it is graded. The drain is from the barrier to the last feedback seen. Goal: at most
   1.1 times grade's drain (the same notebooks, the same number of workers). Nothing may be
   lost: each stored once, graded exactly once, with the score it deserves.

Every timing line carries the 1-minute load average: on a shared machine wall times are
inflated, so ratios measured side by side in this run are what to compare.

Usage::

    python benchmarks/bench_service.py [--students 50] [--jobs 2] [--idle 3] [--pause 10]
        [--timeout 1200]
"""

import argparse
import json
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from service_harness import HW, NAME, Client, free_port, instructor_link, start  # noqa: E402
from test_grading_corpus import ALL, notebook  # noqa: E402

from dnncourse.grading import engine  # noqa: E402
from dnncourse.grading.course import make_bundle, prepare  # noqa: E402
from dnncourse.grading.protocol import Limits  # noqa: E402

OWN_PHASES = ("import cells", "student cells", "test cells")  # the notebook's own run time
LOGGED = re.compile(r"\(([\d.]+) s queued, ([\d.]+) s from its claim .*?([\d.]+) s grading")
IDLE_SLACK = 1.0  # seconds the service may add to the notebook's own run time
BURST_FACTOR = 1.1  # the burst's drain against grade's, at most


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def percentile(values: list[float], q: float) -> float:
    """The q-quantile by linear interpolation between order statistics."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def the_class(students: int) -> dict[str, tuple[dict, float]]:
    """Login -> (notebook, the score it deserves): even ones right, odd ones 5 points off."""
    good, wrong = notebook(correct=ALL), notebook(correct=ALL[1:], wrong=ALL[:1])
    return {
        f"student{i:03d}": (good, 10.0) if i % 2 == 0 else (wrong, 5.0) for i in range(students)
    }


def bench_grade(students: dict, jobs: int, tmp: Path) -> dict:
    """``dnncourse grade --jobs J`` on the class: wall time in full and its drain."""
    folders = {}
    for login, (nb, _) in students.items():
        folder = tmp / "class" / login
        folder.mkdir(parents=True)
        (folder / f"{NAME}.ipynb").write_text(json.dumps(nb))
        folders[login] = folder
    course = prepare(ROOT, HW, tmp / "grade-out")
    make_bundle(course, Limits())  # the reference run, cached as between two real runs
    times = {"up": None, "stored": []}
    client, store = engine.Session.client, engine.store

    def timed_client(self):
        found = client(self)
        times["up"] = times["up"] or time.perf_counter()
        return found

    def timed_store(*args, **kwargs):
        stored = store(*args, **kwargs)
        times["stored"].append(time.perf_counter())
        return stored

    engine.Session.client, engine.store = timed_client, timed_store
    try:
        start = time.perf_counter()
        results = engine.grade_class(course, folders, jobs=jobs, progress=False)
        wall = time.perf_counter() - start
    finally:
        engine.Session.client, engine.store = client, store
    wrong = [r.student for r in results if r.score != students[r.student][1]]
    return {
        "wall": wall,
        "drain": max(times["stored"]) - times["up"],
        "wrong": wrong,
        "graded": len(results),
    }


def phases(data: Path, login: str) -> dict[str, float]:
    """The wall seconds of each phase of the student's last grading (``Result.timings``)."""
    results = engine.stored_results(data / "grading" / HW)
    timings = getattr(results.get(login), "timings", None) or {}
    return {phase: spent[0] for phase, spent in timings.items()}


def logged(server, sub: int) -> tuple[float, ...] | None:
    """The service's log line of the submission: seconds queued, from its claim to its row
    graded, grading and storing (written just after the page is told)."""
    for _ in range(20):
        text = server.log.read_text()
        marker = f"graded submission {sub}:"
        if marker in text:
            found = LOGGED.search(text.split(marker, 1)[1].split("\n", 1)[0])
            return tuple(float(x) for x in found.groups()) if found else None
        time.sleep(0.1)
    return None


def bench_idle(server, client: Client, login: str, count: int, pause: float, timeout: float):
    """``count`` hand-ins one at a time, each after a pause: (upload-to-feedback, the
    grading's seconds as the service timed it, its phases, the load)."""
    good = notebook(correct=ALL)
    rows = []
    for _ in range(count):
        time.sleep(pause)  # idle: nothing queued, the workers' next kernels started
        start = time.perf_counter()
        sub = client.submission_id(client.upload(good))
        view = client.wait(sub, timeout)
        latency = time.perf_counter() - start
        assert view["score"] == 10.0, view
        with sqlite3.connect(server.data / "service.db") as db:
            query = "SELECT seconds FROM submissions WHERE id = ?"
            (seconds,) = db.execute(query, (sub,)).fetchone()
        rows.append((latency, seconds, logged(server, sub), phases(server.data, login), load()))
    return rows


def bench_burst(server, clients: dict, students: dict, timeout: float) -> dict:
    accept, latency, results, errors = {}, {}, {}, {}
    barrier = threading.Barrier(len(clients) + 1)
    deadline = time.monotonic() + timeout

    def student(login: str) -> None:
        client = clients[login]
        try:
            barrier.wait()
            start = time.perf_counter()
            sub = client.submission_id(client.upload(students[login][0]))
            accept[login] = time.perf_counter() - start
            view = client.wait(sub, deadline - time.monotonic())
            latency[login] = time.perf_counter() - start
            results[login] = view["score"]
        except Exception as error:
            errors[login] = repr(error)

    threads = [threading.Thread(target=student, args=(login,)) for login in clients]
    for thread in threads:
        thread.start()
    barrier.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    drain = time.perf_counter() - t0
    with sqlite3.connect(server.data / "service.db") as db:
        stored = db.execute(
            "SELECT u.login, s.finished FROM submissions s JOIN users u ON s.user_id = u.id"
        ).fetchall()
    by_login = {}
    for login, finished in stored:
        by_login.setdefault(login, []).append(finished)
    return {
        "drain": drain,
        "accept": accept,
        "latency": latency,
        "errors": errors,
        "lost": [s for s in clients if len(by_login.get(s, [])) != 1],
        "twice": [s for s in clients if any(f != 1 for f in by_login.get(s, []))],
        "wrong": [s for s, score in results.items() if score != students[s][1]],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--students", type=int, default=50)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--idle", type=int, default=3, help="idle hand-ins, one at a time")
    p.add_argument("--pause", type=float, default=10.0, help="seconds idle before each")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds for each stage")
    args = p.parse_args()
    students = the_class(args.students)
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        tmp = Path(tmp)
        print(f"{args.students} hw1 notebooks, {args.jobs} workers; {load()} at start")
        grade = bench_grade(students, args.jobs, tmp)
        print(f"grade --jobs {args.jobs}: {grade['wall']:.1f} s in full, drain (cluster up "
              f"to last stored) {grade['drain']:.1f} s; {load()}")  # fmt: skip
        data, port = tmp / "data", free_port()
        link = instructor_link(data, port)
        t0 = time.perf_counter()
        server = start(data, "--jobs", str(args.jobs), "--per-hour", "0", port=port)
        print(f"service up in {time.perf_counter() - t0:.1f} s")
        try:
            return against(server, link, students, grade, args)
        finally:
            server.stop()


def against(server, link: str, students: dict, grade: dict, args) -> int:
    prof = Client(server.url)
    prof.signin(link)
    links = prof.roster([(login, login.title()) for login in [*students, "warmup", "idle"]])
    clients = {}
    for login in [*students, "warmup", "idle"]:
        clients[login] = Client(server.url)
        clients[login].signin(links[login], password=f"{login} hands in notebooks")
    warm, idle = clients.pop("warmup"), clients.pop("idle")
    t0 = time.perf_counter()
    warm.wait(warm.submission_id(warm.upload(notebook(correct=ALL))), 600)
    print(f"warm-up hand-in graded in {time.perf_counter() - t0:.1f} s (not counted); {load()}")

    ok = True
    rows = bench_idle(server, idle, "idle", args.idle, args.pause, args.timeout)
    for latency, seconds, spans, spent, at in rows:
        own = sum(spent.get(p, 0.0) for p in OWN_PHASES)
        print(f"idle: upload -> feedback {latency:.2f} s = the service's own "
              f"{latency - seconds:.2f} s + grading {seconds:.2f} s (engine, worker, store); "
              f"{at}")  # fmt: skip
        if spans:
            queued, claimed, _ = spans
            print(f"  the service's own: queued {queued:.2f} s, claim to row graded less the "
                  f"grading {claimed - seconds:.2f} s, upload and the page's answer "
                  f"{latency - queued - claimed:.2f} s")  # fmt: skip
        if spent:
            rest = sorted(((w, p) for p, w in spent.items() if p not in OWN_PHASES), reverse=True)
            print("  grading's phases: " + ", ".join(f"{p} {w:.2f}" for w, p in rest if w >= 0.01)
                  + f"; the notebook's own cells {own:.2f} s")  # fmt: skip
        if not spent:
            print("  the notebook's own run time unknown (no Result.timings)")
            ok = False
            continue
        verdict = "PASS" if latency <= own + IDLE_SLACK else "FAIL"
        print(f"  upload -> feedback {latency:.2f} s against the notebook's own run time "
              f"{own:.2f} s + {IDLE_SLACK:g} s = {own + IDLE_SLACK:.2f} s: {verdict}")  # fmt: skip
        ok = ok and verdict == "PASS"

    burst = bench_burst(server, clients, students, args.timeout)
    n = len(burst["latency"])
    print(f"burst of {len(clients)}: drained in {burst['drain']:.1f} s; {load()}")
    if burst["accept"]:
        values = list(burst["accept"].values())
        print(f"  upload accepted: median {statistics.median(values):.2f} s, "
              f"p95 {percentile(values, 0.95):.2f} s")  # fmt: skip
    if n:
        values = list(burst["latency"].values())
        print(f"  upload -> feedback ({n}): median {statistics.median(values):.1f} s, "
              f"p95 {percentile(values, 0.95):.1f} s, max {max(values):.1f} s")  # fmt: skip
    for login, error in sorted(burst["errors"].items())[:5]:
        print(f"  {login}: {error}")
    intact = not (burst["lost"] or burst["twice"] or burst["wrong"] or burst["errors"])
    intact = intact and n == len(clients) and not grade["wrong"]
    print(f"  stored {len(clients) - len(burst['lost'])}, lost {len(burst['lost'])}, graded "
          f"twice {len(burst['twice'])}, wrong score {len(burst['wrong'])} (grade: "
          f"{len(grade['wrong'])}), errors {len(burst['errors'])}")  # fmt: skip
    ratio = burst["drain"] / grade["drain"]
    verdict = "PASS" if ratio <= BURST_FACTOR else "FAIL"
    print(f"burst drain / grade's drain: {burst['drain']:.1f} / {grade['drain']:.1f} s = "
          f"{ratio:.2f} (goal <= {BURST_FACTOR:g}): {verdict}; against grade in full "
          f"({grade['wall']:.1f} s): {burst['drain'] / grade['wall']:.2f}")  # fmt: skip
    print("nothing lost, each graded once, each score right" if intact else "LOST OR WRONG")
    return 0 if ok and intact and verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
