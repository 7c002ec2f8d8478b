"""The submission service under a burst: N students hand in at the same moment (loopback).

Starts ``dnncourse serve`` (hw1 only, ``--jobs J``, no hourly limit) with its data folder in
a temporary folder, imports N students and signs each in, then N threads upload at once
(a barrier) and poll their submission's JSON until it is graded. Half the class hands in
the instructor's answers (10 points), half a wrong ``cubic_gradients`` (5 points).

Reports the time to accept an upload and the time from upload to feedback (median, 95th
percentile, max), the wall time of the burst and the throughput, and checks that nothing
was lost: N stored, each graded exactly once (``finished == 1``), each with its deserved
score. Bounded by ``--timeout`` (default 1800 s) for the whole burst.

With ``--warm-up``, one more student hands in first and waits for the feedback (not
counted): the burst then meets a service whose assignment is prepared and whose graders are
started, as in the middle of a term; ``--students 1 --warm-up`` is the idle figure.

Usage::

    python benchmarks/bench_service.py [--students 50] [--jobs 2] [--timeout 1800] [--warm-up]
"""

import argparse
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from service_harness import Client, free_port, instructor_link, start  # noqa: E402
from test_grading_corpus import ALL, notebook  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    """The q-quantile by linear interpolation between order statistics."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--students", type=int, default=50)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--warm-up", action="store_true", help="one hand-in first, not counted")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        data, port = Path(tmp) / "data", free_port()
        link = instructor_link(data, port)
        t0 = time.perf_counter()
        server = start(data, "--jobs", str(args.jobs), "--per-hour", "0", port=port)
        print(f"service up in {time.perf_counter() - t0:.1f} s (jobs {args.jobs})")
        try:
            return burst(server, link, args)
        finally:
            server.stop()


def burst(server, link, args) -> int:
    prof = Client(server.url)
    prof.signin(link)
    logins = [f"student{i:03d}" for i in range(args.students)]
    links = prof.roster([(login, login.title()) for login in [*logins, "warmup"]])
    clients = {}
    for login in logins:
        clients[login] = Client(server.url)
        clients[login].signin(links[login], password=f"{login} hands in notebooks")
    good = notebook(correct=ALL)
    wrong = notebook(correct=ALL[1:], wrong=ALL[:1])
    if args.warm_up:
        warm = Client(server.url)
        warm.signin(links["warmup"], password="warmup hands in notebooks")
        t0 = time.perf_counter()
        warm.wait(warm.submission_id(warm.upload(good)), timeout=args.timeout)
        print(f"warm-up hand-in graded in {time.perf_counter() - t0:.1f} s (not counted)")
    deserved = {login: (10.0 if i % 2 == 0 else 5.0) for i, login in enumerate(logins)}
    accept, latency, results, errors = {}, {}, {}, {}
    barrier = threading.Barrier(len(logins))
    deadline = time.monotonic() + args.timeout

    def student(login: str) -> None:
        client = clients[login]
        nb = good if deserved[login] == 10.0 else wrong
        try:
            barrier.wait()
            start = time.perf_counter()
            sub = client.submission_id(client.upload(nb))
            accept[login] = time.perf_counter() - start
            while time.monotonic() < deadline:
                view = client.http.get(f"/submissions/{sub}.json").json()
                if view["state"] == "graded":
                    latency[login] = time.perf_counter() - start
                    results[login] = (sub, view["score"])
                    return
                time.sleep(0.5)
            errors[login] = "not graded before the timeout"
        except Exception as error:
            errors[login] = repr(error)

    threads = [threading.Thread(target=student, args=(login,)) for login in logins]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0

    with sqlite3.connect(server.data / "service.db") as db:
        stored = db.execute(
            "SELECT u.login, s.id, s.finished, s.score, s.seconds FROM submissions s "
            "JOIN users u ON s.user_id = u.id"
        ).fetchall()
    stored = [row for row in stored if row[0] != "warmup"]
    by_login = {}
    for login, sub, finished, score, seconds in stored:
        by_login.setdefault(login, []).append((sub, finished, score, seconds))
    lost = [login for login in logins if len(by_login.get(login, [])) != 1]
    twice = [login for login, subs in by_login.items() if any(f != 1 for _, f, _, _ in subs)]
    wrong_score = [login for login, (sub, score) in results.items() if score != deserved[login]]
    n = len(latency)
    print(f"{args.students} students, burst graded in {wall:.1f} s "
          f"({args.students / wall * 60:.1f} notebooks/min)")  # fmt: skip
    if accept:
        print(f"upload accepted: median {statistics.median(accept.values()):.2f} s, "
              f"p95 {percentile(list(accept.values()), 0.95):.2f} s")  # fmt: skip
    if n:
        values = list(latency.values())
        print(f"upload -> feedback ({n}): median {statistics.median(values):.1f} s, "
              f"p95 {percentile(values, 0.95):.1f} s, max {max(values):.1f} s")  # fmt: skip
        grading = [s for subs in by_login.values() for *_, s in subs]
        print(f"grading one notebook (worker, incl. kernel start): median "
              f"{statistics.median(grading):.1f} s")  # fmt: skip
    print(f"stored {len(stored)}, lost {len(lost)}, graded twice {len(twice)}, "
          f"wrong score {len(wrong_score)}, errors {len(errors)}")  # fmt: skip
    for login, error in sorted(errors.items())[:5]:
        print(f"  {login}: {error}")
    ok = not (lost or twice or wrong_score or errors) and n == args.students
    print("OK: nothing lost, each graded once" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
