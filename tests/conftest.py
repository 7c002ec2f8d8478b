"""Shared fixtures, the rules for GPU tests, and how pytest-xdist shares out the tests.

``make test`` runs ``pytest -n 2 --dist loadscope --no-loadscope-reorder`` with the
scheduler made here (:func:`pytest_xdist_make_scheduler`). Its units of work are named by
:func:`unit`: a whole file by default, so that a module-scoped fixture (a graded class, a
server, a cluster) is made once, on one worker; the book's two files together (one build);
and, in the files listed in :data:`SPLIT`, each test alone (independent, slow tests that
would otherwise run one after the other). The units are handed out in the order
:func:`pytest_collection_modifyitems` leaves them: the book first (its build is the longest
chain), then units holding slow tests, then the rest, so that no long test starts last.
(pytest-xdist's own ``loadgroup`` cannot do this here: its ``xdist_group`` mark renames
node ids in a way pytest 9 ignores.)
"""

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLBACKEND", "Agg")

BOOK = ("tests/test_book.py", "tests/test_browser.py")  # one unit: they share the build
SPLIT = (
    "tests/test_mutants.py",
    "tests/test_cli.py",
    "tests/test_grading_engine.py",
    "tests/test_courses.py",
    "tests/test_template.py",
)
TOGETHER = {  # tests of a split file that share its module fixtures
    "tests/test_grading_engine.py::test_local_run_grades_stores_and_hides": "engine-cluster",
    "tests/test_grading_engine.py::test_a_cluster_of_two_machines_gives_the_same_grades": (
        "engine-cluster"
    ),
    "tests/test_grading_engine.py::"
    "test_a_worker_killed_mid_class_and_a_notebook_that_kills_workers": "engine-cluster",
}


def unit(nodeid: str) -> str:
    """The unit of work a test belongs to (see the module docstring)."""
    path = nodeid.split("::")[0]
    if path in BOOK:
        return "book"
    if path in SPLIT:
        return TOGETHER.get(nodeid, nodeid)
    return path


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None  # pytest-xdist's own schedulers
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit(nodeid)

    return UnitScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """The order of the work (see the module docstring); tests marked ``gpu`` need CUDA:
    skipped, with the reason, on a machine without one."""

    def rank(item) -> int:
        if unit(item.nodeid) == "book":
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    first, best = {}, {}
    for index, item in enumerate(items):
        key = unit(item.nodeid)
        first.setdefault(key, index)
        best[key] = min(best.get(key, 3), rank(item))
    order = {id(item): index for index, item in enumerate(items)}
    items.sort(key=lambda i: (best[unit(i.nodeid)], first[unit(i.nodeid)], order[id(i)]))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run on a GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def shared_reference_cache(tmp_path_factory):
    """One cache of reference runs for the whole run, all xdist workers and the CLI
    processes the tests start included (:func:`dnncourse.grading.reference.cache_of`)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the folder every worker's basetemp lives in
    folder = base / "reference-cache"
    folder.mkdir(exist_ok=True)
    os.environ["DNNCOURSE_REFERENCE_CACHE"] = str(folder)
    yield folder
    os.environ.pop("DNNCOURSE_REFERENCE_CACHE", None)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny tensors (threads only add contention).

    Use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
