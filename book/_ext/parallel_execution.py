"""Execute the book's chapters side by side, one kernel per CPU core, before Sphinx reads them.

myst-nb (``execute_notebooks: cache``) executes each chapter when Sphinx reads it, one
after the other, so a cold build on a 2-core laptop keeps one core idle for minutes.
This extension runs at ``env-before-read-docs``, after myst-nb has opened its
jupyter-cache (and after ``dnncourse_book`` has emptied it if the package changed):

1. every page to be read is turned into a notebook with myst-nb's own reader, so the
   cache key (the code cells and the kernel) is the one myst-nb will look up;
2. pages excluded from execution, plain Markdown pages, notebooks already in the cache,
   and notebooks with execution settings of their own (notebook-level ``mystnb``
   metadata, kernel aliases) are left to myst-nb;
3. the rest are executed by ``jupyter_cache``'s ``single_nb_execution``, the function
   myst-nb itself calls, in a pool of ``min(cores, notebooks)`` processes; each kernel
   gets ``cores // workers`` threads (``OMP_NUM_THREADS``) so the pool does not
   oversubscribe the machine; the chapters named in ``dnncourse_start_first`` (the book's
   ``_config.yml``: the longest, as the build's log measures them) are submitted first, in
   that order, so that no long chapter starts last and leaves a core idle at the end
   (longest-processing-time first, Graham 1969);
4. each success is stored in the cache exactly as myst-nb stores it.

When Sphinx then reads the pages, myst-nb finds every chapter in the cache. A chapter that
failed here is not stored: myst-nb executes it again in the usual way and reports the
error with its traceback, so a failing build reads the same as without this extension.

``DNNCOURSE_BOOK_SERIAL=1`` in the environment turns the extension off (myst-nb alone,
one chapter at a time): ``benchmarks/bench_book.py`` builds both ways and prints the ratio.
"""

from __future__ import annotations

import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path, PurePosixPath

from sphinx.application import Sphinx
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)


def _threads_per_kernel(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def _init_worker(threads: int) -> None:
    """Runs once in each pool process: kernels inherit this environment."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that ended (the kernels it ran)."""
    own, kernels = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kernels.ru_utime + kernels.ru_stime


def _execute(notebook, cwd: str, timeout: int | None, allow_errors: bool):
    """In a pool process: execute one notebook; return (notebook, seconds, CPU seconds,
    error text)."""
    from jupyter_cache.executors.utils import single_nb_execution

    cpu = _cpu_seconds()
    result = single_nb_execution(
        notebook, cwd=cwd, timeout=timeout, allow_errors=allow_errors, meta_override=True
    )
    error = None if result.err is None else (result.exc_string or repr(result.err))
    return notebook, result.time, _cpu_seconds() - cpu, error


def _to_execute(env, cache, docnames: list[str]) -> list[tuple[Path, object, dict]]:
    """(path, notebook, read format) of each page that still needs a kernel."""
    from myst_nb.core.read import create_nb_reader

    nb_config = env.mystnb_config
    pending = []
    for docname in sorted(docnames):
        path = Path(env.doc2path(docname))
        posix = PurePosixPath(path.as_posix())
        if any(posix.match(pattern) for pattern in nb_config.execution_excludepatterns):
            continue
        text = path.read_text(encoding="utf8")
        reader = create_nb_reader(str(path), env.myst_config, nb_config, text)
        if reader is None:
            continue  # a plain Markdown page
        notebook = reader.read(text)
        if not any(cell["cell_type"] == "code" for cell in notebook.cells):
            continue
        if nb_config.metadata_key in notebook.metadata or nb_config.kernel_rgx_aliases:
            continue  # settings of its own (timeout, kernel): myst-nb runs it as told
        try:
            cache.match_cache_notebook(notebook)
            continue  # already executed with this code
        except KeyError:
            pending.append((path, notebook, reader.read_fmt))
    return pending


def longest_first(pending: list, first: list[str]) -> list:
    """``pending`` ((path, ...) tuples) with the pages named in ``first`` (by file stem) in
    front, in that order; the rest after them in their own order."""
    rank = {name: i for i, name in enumerate(first)}
    return sorted(pending, key=lambda item: rank.get(Path(item[0]).stem, len(rank)))


def execute_in_parallel(app: Sphinx, env, docnames: list[str]) -> None:
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    nb_config = env.mystnb_config
    if os.environ.get("DNNCOURSE_BOOK_SERIAL") == "1" or nb_config.execution_mode != "cache":
        return
    cache = get_cache(nb_config.execution_cache_path)
    pending = longest_first(_to_execute(env, cache, docnames), app.config.dnncourse_start_first)
    if not pending:
        return
    workers = min(os.cpu_count() or 1, len(pending))
    threads = _threads_per_kernel(workers)
    LOGGER.info(
        f"Executing {len(pending)} notebooks on {workers} processes "
        f"({threads} thread(s) per kernel)"
    )
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {
            pool.submit(
                _execute,
                notebook,
                str(path.parent),
                nb_config.execution_timeout,
                nb_config.execution_allow_errors,
            ): (path, read_fmt)
            for path, notebook, read_fmt in pending
        }
        for done, future in enumerate(as_completed(futures), 1):
            path, read_fmt = futures[future]
            try:
                notebook, seconds, cpu, error = future.result()
            except Exception as exc:  # the pool process itself died
                notebook, seconds, cpu, error = None, 0.0, 0.0, repr(exc)
            if error is not None:
                LOGGER.info(f"[{done}/{len(pending)}] {path}: failed, myst-nb will retry it")
                continue
            record = cache.add_nb_to_project(str(path), read_data=read_fmt)
            cache.cache_notebook_bundle(
                CacheBundleIn(notebook, record.uri, data={"execution_seconds": seconds}),
                check_validity=False,
                overwrite=True,
            )
            seconds_text = f"{seconds:.2f} seconds ({cpu:.1f} s CPU)"
            LOGGER.info(f"[{done}/{len(pending)}] {path}: Executed notebook in {seconds_text}")
    LOGGER.info(f"Executed {len(pending)} notebooks in {time.perf_counter() - start:.1f} s")


def setup(app: Sphinx) -> dict:
    app.add_config_value("dnncourse_start_first", [], "env", types=[list])
    # after myst-nb's own handlers (default priority 500), before any page is read
    app.connect("env-before-read-docs", execute_in_parallel, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
