"""Kernels launched before their student arrives (issue 24): the cold start off the clock.

A kernel's start (the sandbox, Python, IPython, PyTorch and the ``meta`` machinery, see
:mod:`.kernel`) costs about as much as a small notebook's own run. The grading process
(:func:`.worker.serve`) therefore launches the *next* kernel while the current one runs the
current student: when the next student's notebook arrives, their first cell runs at once.

What is launched ahead is exactly the kernel that student would have got (:class:`.execute.
Kernel`): its own fresh sandbox (namespaces, tmpfs folders, cgroup, a uid of its own), made
for one student only; its preload runs before any student code exists, as always. Nothing
passes between students: a kernel is used once and closed with everything it holds.

* **Keyed by what shapes it** (:class:`Key`): the bundle (its folder is named by its hash),
  the notebook, the data folder, the :class:`~.protocol.Limits`, sandbox on or off. A kernel
  whose key does not match the next notebook is closed (killed with its sandbox's processes,
  cgroup, uid and folders) and the notebook runs in a fresh one.
* **A kernel that died waiting** (killed, a sandbox that did not start) is closed and
  replaced, never charged to a student: :func:`.execute.execute` starts over with a fresh
  kernel as if none had been made ahead.
* **Limits**: the sandbox's totals (CPU time, memory) count from the kernel's launch, as
  they did when the kernel was started on the student's clock: a cold kernel's preload
  included (the defaults leave it a small share: ~2 s of 600 s of CPU, ~0.3 GiB of 4 GiB), a
  forked one's from the fork (:mod:`.template`). A kernel waiting idle uses no CPU time.
  The per-cell and per-student timeouts are wall-clock times from the student's arrival,
  so waiting costs nothing there.
* **Nothing is left behind**: at most one kernel waits per grading process; it is closed
  when the process ends its loop, and when the process is killed (the worker gone, a
  student over the hard timeout) it dies with it like the running kernel (it is a child of
  the grading process, ``--die-with-parent``).
* **Independent of how a kernel is launched**: :class:`.execute.Kernel` launches through
  the kernel manager, whatever the manager runs.

Anchors: a pre-forked worker pool (Apache's prefork MPM, gunicorn's workers): the cost of
starting a worker is paid before the request that needs it, one worker per request.
"""

import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from .execute import Kernel
from .protocol import Limits


@dataclass(frozen=True)
class Key:
    """Everything that shapes a kernel: a kernel made for one key serves no other."""

    bundle: str  # the bundle's folder on this worker (named by the bundle's hash)
    notebook: str
    data: str | None  # the data folder bound into the sandbox (copied without one)
    limits: Limits
    sandbox: bool

    @classmethod
    def of(cls, bundle: Path, notebook: str, limits: Limits, sandbox: bool) -> "Key":
        data = bundle / "data"
        return cls(str(bundle), notebook, str(data) if data.is_dir() else None, limits, sandbox)


class Kernels:
    """The kernel launched ahead of a grading process's next notebook: at most one waits."""

    def __init__(self):
        self.waiting: tuple[Key, Kernel] | None = None

    def prepare(self, key: Key) -> None:
        """Have a kernel for ``key`` launched: keep a live one of that key, else close the
        one waiting and launch a fresh one. A launch that fails leaves none waiting (the
        notebook then starts its own kernel, which says why it cannot)."""
        if self.waiting is not None and self.waiting[0] == key and self.waiting[1].alive():
            return
        self.close()
        kernel = None
        try:
            kernel = Kernel(key.limits, key.sandbox, Path(key.data) if key.data else None)
            kernel.launch()
        except Exception:
            traceback.print_exc(file=sys.stderr)
            if kernel is not None:
                kernel.close()
            return
        self.waiting = (key, kernel)

    def take(self, key: Key) -> Kernel | None:
        """The kernel waiting for ``key``, now the caller's to run and close; None if none
        waits, or the one waiting was made for another key or died (it is closed)."""
        waiting, self.waiting = self.waiting, None
        if waiting is None:
            return None
        made_for, kernel = waiting
        if made_for == key and kernel.alive():
            return kernel
        kernel.close()
        return None

    def close(self) -> None:
        """Close the kernel waiting, if any (its processes, cgroup, uid and folders)."""
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting[1].close()
