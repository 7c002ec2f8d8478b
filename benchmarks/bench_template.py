"""Kernels forked from a template (grading/template.py) against kernels started cold.

The same class of hw1 notebooks (copies of the instructor's, full marks each) is graded by
``dnncourse``'s engine with ``DNNCOURSE_TEMPLATE`` off and on, alternately, in one run, with
1 and 2 workers: wall time and CPU seconds per notebook (every process the grading started,
the templates' one-time imports included). The machine may be shared: the load average is
printed, and CPU per notebook is the figure that load does not inflate much.

Usage::

    python benchmarks/bench_template.py [--copies 8] [--jobs 1 2] [--rounds 1]
"""

import argparse
import os
import tempfile
from pathlib import Path

from bench_grading import bench_engine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=8)
    p.add_argument("--jobs", type=int, nargs="*", default=[1, 2])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--assignment", default="hw1")
    args = p.parse_args()
    print(f"{os.cpu_count()} CPUs; load average at start {os.getloadavg()}", flush=True)
    print(f"{'jobs':>4} {'template':>9}{'grade s':>9}{'s/nb':>7}{'CPU s/nb':>10}{'full':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for jobs in args.jobs:
                for switch in ("0", "1"):
                    os.environ["DNNCOURSE_TEMPLATE"] = switch
                    folder = Path(tmp) / f"{round_}-{jobs}-{switch}"
                    folder.mkdir()
                    r = bench_engine(args.assignment, args.copies, jobs, folder)
                    print(
                        f"{jobs:>4} {'on' if switch == '1' else 'off':>9}{r['grade_s']:>9.1f}"
                        f"{r['grade_s'] / args.copies:>7.2f}{r['cpu_per_notebook_s']:>10.2f}"
                        f"{r['full_marks']:>4}/{args.copies}   load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
