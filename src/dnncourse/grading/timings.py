"""Where the time of grading one student goes: wall and CPU seconds per phase (issue 24).

A lap timer: the grading path says which phase starts now (:func:`lap`), and every moment
until the next lap is charged to that phase, so the phases add up to the whole. CPU is this
process's (all its threads) plus, while a kernel runs, its sandbox's (the cgroup, or the
kernel's process without a sandbox: :func:`watch_kernel`), the kernel's share also apart.
The seconds travel in :attr:`~.protocol.Result.timings` (phase -> (wall, CPU, the kernel's
CPU)) and are printed by ``benchmarks/bench_grading.py``.

Measurement only: never shown to a student and never trusted for anything (the kernel's
CPU time is the student's to spend). Outside :func:`record` every call is a no-op.
"""

import ast
import time
from contextlib import contextmanager
from contextvars import ContextVar

# the phases, in the order of the grading path (the benchmark prints them in this order)
PHASES = (
    "read and rebuild",  # the bundle's cells, the released notebook, the student's (sanitize)
    "nbgrader preprocessors",  # ClearOutput, DeduplicateIds, BundleCells, CheckCellMetadata
    "sandbox",  # the kernel's sandbox made (cgroups, uid, folders), before the launch
    "kernel start",  # launch (bwrap, Python, the preload) up to the kernel_info reply
    "import cells",  # the student's cells that import and define nothing (the set-up cell)
    "student cells",  # every other code cell that is not a test cell
    "test cells",  # the graded test cells: visible asserts and hidden probes
    "kernel stop",  # shutdown, the sandbox closed, the folders removed
    "verdict: comparisons",  # probe records against the reference (verdict.decide, mark)
    "verdict: rules",  # the statement's rules, from the student's code (rules.analyze)
    "limit output",  # nbgrader's LimitOutput and safe_cells on the graded notebook
    "feedback page",  # the HTML page (nbconvert's exporter)
    "graded notebook",  # the graded notebook's bytes
    "dispatch: worker",  # the Dask worker: the bundle, the pipe to the grading process, codec
    "store",  # the client: gradebook, feedback pages, results/<student>.json
)


class Laps:
    """The seconds of one student so far: phase -> [wall, CPU, the kernel's CPU]."""

    def __init__(self):
        self.seconds: dict[str, list[float]] = {}
        self._phase: str | None = None
        self._wall = self._cpu = self._kernel_cpu = 0.0
        self._kernel = None  # a function: the running kernel's CPU seconds so far
        self._kernels = 0.0  # CPU seconds of the kernels already gone
        self._last = 0.0  # the last reading of the running kernel

    def kernel_cpu(self) -> float:
        """CPU seconds of the kernels so far (the running one's, as last read)."""
        if self._kernel is not None:
            try:
                self._last = self._kernel() or self._last
            except Exception:  # the kernel is gone: its last reading stands
                pass
        return self._kernels + self._last

    def lap(self, phase: str | None) -> None:
        wall, kernel = time.perf_counter(), self.kernel_cpu()
        cpu = time.process_time() + kernel
        if self._phase is not None:
            spent = self.seconds.setdefault(self._phase, [0.0, 0.0, 0.0])
            spent[0] += wall - self._wall
            spent[1] += cpu - self._cpu
            spent[2] += kernel - self._kernel_cpu
        self._phase, self._wall, self._cpu, self._kernel_cpu = phase, wall, cpu, kernel

    def watch_kernel(self, read) -> None:
        """From now on, count the kernel's CPU (``read()``: its seconds since it started; all
        of them so far go to the phase under way)."""
        self._kernel, self._last = read, 0.0

    def kernel_gone(self) -> None:
        """The kernel has stopped (read it once more while its counters are still there)."""
        self.kernel_cpu()
        self._kernels += self._last
        self._kernel, self._last = None, 0.0

    def rounded(self) -> dict[str, tuple[float, float, float]]:
        return {k: tuple(round(x, 4) for x in v) for k, v in self.seconds.items()}


_CURRENT: ContextVar[Laps | None] = ContextVar("dnncourse_timings", default=None)


@contextmanager
def record(first: str):
    """Record the laps of one student, starting with phase ``first``; yields the
    :class:`Laps` (complete once the block ends)."""
    laps = Laps()
    token = _CURRENT.set(laps)
    laps.lap(first)
    try:
        yield laps
    finally:
        laps.lap(None)
        _CURRENT.reset(token)


def lap(phase: str) -> None:
    """Phase ``phase`` starts now (the one before it ends)."""
    laps = _CURRENT.get()
    if laps is not None:
        laps.lap(phase)


def watch_kernel(read) -> None:
    laps = _CURRENT.get()
    if laps is not None and read is not None:
        laps.watch_kernel(read)


def kernel_gone() -> None:
    laps = _CURRENT.get()
    if laps is not None:
        laps.kernel_gone()


def kernel_cpu(box, km):
    """A function reading the CPU seconds of a kernel: its sandbox's cgroup where there is
    one, else the kernel's process (and the children it waited for); None if neither."""
    group = getattr(box, "group", None)
    if group is not None and group.cpu_seconds() is not None:
        return group.cpu_seconds
    import psutil

    try:
        process = psutil.Process(km.provisioner.process.pid)
    except Exception:  # no process to read: its CPU is not counted
        return None

    def read() -> float:
        t = process.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    return read


def cell_phase(cell) -> str:
    """The phase of a code cell: a test cell, a cell that imports and defines nothing (the
    set-up cell), or another."""
    nbgrader = cell.get("metadata", {}).get("nbgrader", {})
    if nbgrader.get("grade") and not nbgrader.get("solution"):
        return "test cells"
    try:
        body = ast.parse(cell.source).body
    except (SyntaxError, ValueError):
        return "student cells"
    imports = any(isinstance(s, (ast.Import, ast.ImportFrom)) for s in body)
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    defines = any(isinstance(s, definitions) for s in body)
    return "import cells" if imports and not defines else "student cells"


def cell_lap(cell) -> None:
    """The cell ``cell`` starts running (:func:`cell_phase`); parsed only while recording."""
    if _CURRENT.get() is not None:
        lap(cell_phase(cell))
