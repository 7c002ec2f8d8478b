"""Autograding a whole class on top of nbgrader, robust to broken and hostile notebooks.

nbgrader does the bookkeeping (gradebook, checksums, restoring hidden tests, feedback
template); this package adds what grading a class needs around it:

* :mod:`~dnncourse.grading.protocol`: the types that cross the boundary (Task, Result, ...);
* :mod:`~dnncourse.grading.course`: one ``generate_assignment`` into the class gradebook
  (SQLite or PostgreSQL), the bundle the workers grade against, results stored;
* :mod:`~dnncourse.grading.sanitize`: broken notebooks rejected with a reason, the rest
  rebuilt on the released notebook before nbgrader's own sanitizers;
* :mod:`~dnncourse.grading.kernel`: the kernel's launcher, with memory/file limits;
* :mod:`~dnncourse.grading.sandbox`: the bubblewrap sandbox every kernel runs in (own
  namespaces, no network, read-only system, nothing of the course; ``dnncourse doctor``);
* :mod:`~dnncourse.grading.probe`: hidden tests record data in the kernel (no verdict there);
* :mod:`~dnncourse.grading.execute`: per-cell timeouts, output caps;
  :mod:`~dnncourse.grading.warm`: the next notebook's kernel launched while one runs;
* :mod:`~dnncourse.grading.reference` and :mod:`~dnncourse.grading.verdict`: the
  instructor's solution run once, and the student's records compared with it outside the
  kernel: one :class:`~dnncourse.grading.protocol.Check` per graded cell;
* :mod:`~dnncourse.grading.engine`: the one door to grading (``dnncourse grade`` and the
  service): a session on dask.distributed, a task per student, results completed and stored
  as they arrive; :mod:`~dnncourse.grading.worker`: one student graded on a worker, with
  a hard timeout (only the engine calls it);
* :mod:`~dnncourse.grading.feedback`: nbgrader's feedback pages without the hidden tests.

The package imports nothing heavy itself (the kernel launcher lives here too).

Example:
    >>> from dnncourse.grading import grade  # doctest: +SKIP
    >>> results = grade("hw1", Path("submissions"), Path("graded"), jobs=2)  # doctest: +SKIP
"""

__all__ = ["grade", "release_and_validate"]


def __getattr__(name):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
