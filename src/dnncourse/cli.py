"""The ``dnncourse`` command: release homework and grade a class.

``dnncourse release [ASSIGNMENT ...]`` regenerates ``exercises/`` from ``solutions/`` (the
folders the course's ``nbgrader_config.py`` names) with nbgrader and validates each
assignment (the solution earns every automatic point, the stub zero, no solution or
hidden-test line leaks); exit status 1 if any validation fails; warnings (cells decided by
asserts, points graded by hand) do not fail it.

``dnncourse grade ASSIGNMENT SUBMISSIONS --out OUT [--jobs N] [--cell-timeout S]
[--timeout S] [--memory-limit MB] [--db URL] [--scheduler ADDRESS] [--resume]
[--no-sandbox]`` grades ``SUBMISSIONS/<student_id>/`` (or an LMS zip of such folders) into
``OUT/grades.csv`` and ``OUT/feedback/`` on Dask (a local cluster of ``--jobs`` workers, or
the cluster of ``--scheduler``/``DNNCOURSE_SCHEDULER``), every kernel in a sandbox; exit
status 0 iff every student folder got a row, 1 on an error (a cluster that cannot be reached
or was lost: rerun with ``--resume``).

``dnncourse doctor`` checks that this machine can sandbox the kernels (bwrap runs, user
namespaces or root, network off inside, the process limit) and prints each check.

``dnncourse serve --data DATA [--port 8000] ...`` runs the submission service
(:mod:`dnncourse.service`): students hand in and see the hidden tests' feedback at once.
"""

import argparse
import os
import sys
from pathlib import Path

from .grading import grade, release_and_validate
from .grading.engine import summary
from .grading.protocol import add_limit_options, limits_from_options


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dnncourse", description="dnncourse homework tools")
    sub = p.add_subparsers(dest="command", required=True)
    rel = sub.add_parser("release", help="regenerate exercises/ and validate it")
    rel.add_argument("assignments", nargs="*", metavar="ASSIGNMENT", help="default: all")
    g = sub.add_parser("grade", help="autograde a class of submissions")
    g.add_argument("assignment", metavar="ASSIGNMENT")
    g.add_argument(
        "submissions",
        type=Path,
        metavar="SUBMISSIONS",
        help="folder of <student_id>/ folders, or an LMS zip of them",
    )
    g.add_argument("--out", type=Path, required=True, help="output folder")
    g.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="students graded at once (default: the number of cores)",
    )
    add_limit_options(g)  # --cell-timeout, --timeout, --memory-limit: as in serve
    g.add_argument(
        "--db", default=None, help="gradebook SQLAlchemy URL (default sqlite:///OUT/gradebook.db)"
    )
    g.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="grade on the Dask cluster of this scheduler, e.g. tcp://HOST:8786 (default: "
        "$DNNCOURSE_SCHEDULER, else a local cluster of --jobs workers)",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="keep the results in OUT of students whose notebooks did not change",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument(
        "--no-sandbox",
        action="store_true",
        help="run the kernels without a sandbox, as you (only on a host where none can be "
        "made; the summary and every row say so)",
    )
    sub.add_parser("doctor", help="check that this machine can sandbox the grading kernels")
    from .service.server import add_arguments as serve_arguments

    serve_arguments(sub.add_parser("serve", help="the submission service (web)"))
    return p


def doctor() -> int:
    """Print each sandbox check; exit status 0 iff all pass."""
    from .grading.sandbox import requirements

    results = requirements()
    for need in results:
        print(f"[{'ok' if need.ok else 'FAIL':>4}] {need.name}: {need.detail}")
    ok = all(need.ok for need in results)
    print("sandboxed grading works here" if ok else "sandboxed grading does NOT work here")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "serve":
        from .service.server import run as serve

        return serve(args)
    if args.command == "release":
        try:
            results = release_and_validate(args.assignments or None)
        except (ValueError, RuntimeError) as error:
            print(f"dnncourse release: {error}", file=sys.stderr)
            return 1
        failed = False
        for name, found in results.items():
            if found.problems:
                failed = True
                print(f"{name}: FAILED validation", file=sys.stderr)
                for problem in found.problems:
                    print(f"  - {problem}", file=sys.stderr)
            else:
                print(f"{name}: released (solution full marks, stub zero, no leaks)")
            for warning in found.warnings:
                print(f"  warning: {warning}")
        return 1 if failed else 0
    if args.command == "doctor":
        return doctor()
    if args.jobs < 1:
        print("dnncourse grade: --jobs must be at least 1", file=sys.stderr)
        return 2
    limits = limits_from_options(args)
    if not args.submissions.exists():
        print(f"dnncourse grade: {args.submissions} does not exist", file=sys.stderr)
        return 2
    try:
        rows = grade(
            args.assignment,
            args.submissions,
            args.out,
            jobs=args.jobs,
            limits=limits,
            db_url=args.db,
            progress=not args.no_progress,
            sandbox=not args.no_sandbox,
            scheduler=args.scheduler,
            resume=args.resume,
        )
    except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as error:
        print(f"dnncourse grade: {error}", file=sys.stderr)
        return 1
    print(summary(rows, sandbox=not args.no_sandbox))
    print(f"grades: {args.out / 'grades.csv'}  feedback: {args.out / 'feedback'}")
    from .grading.api import students_in

    folders = set(students_in(args.submissions)) if args.submissions.is_dir() else None
    got = {r.student for r in rows}
    if folders is not None and folders != got:
        print(f"dnncourse grade: no row for {sorted(folders - got)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
