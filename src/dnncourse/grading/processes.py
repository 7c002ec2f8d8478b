"""Ending a process together with everything it started: the one way the grader does it.

Used by the worker (a grading process past its hard timeout), the engine (the workers a
killed client left behind), the kernel-message watcher (a grading process over its memory
cap) and the sandbox's watchdog (a student over a total limit). Children are collected
first, so a child that the kill reparents to init is still in the list.
"""

import psutil


def kill_tree(pid: int, wait: float = 5.0) -> None:
    """SIGKILL process ``pid`` and all its descendants, then wait up to ``wait`` seconds for
    them to end (``0``: do not wait, for a watcher thread that must not block)."""
    try:
        top = psutil.Process(pid)
        family = [*top.children(recursive=True), top]
    except psutil.Error:
        return
    for proc in family:
        try:
            proc.kill()
        except psutil.Error:
            pass
    if wait:
        psutil.wait_procs(family, timeout=wait)
