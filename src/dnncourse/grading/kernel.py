"""The grading kernel: an IPython kernel started with limits, before any student code.

Run as ``python -m dnncourse.grading.kernel -f CONNECTION_FILE`` with the environment
variable ``DNNCOURSE_GUARD`` naming a JSON file (read, then deleted, before any student code
runs) that holds ``memory_limit_mb`` and ``file_limit_mb``. Before student code exists, the
launcher caps the kernel's address space (``RLIMIT_AS``) and the size of the files it writes,
asks Linux to kill it when the grading worker dies, and preloads the libraries the homework
uses. In a sandbox (``DNNCOURSE_SANDBOX``, see :mod:`dnncourse.grading.sandbox`) it first
sets the process limit and drops to the sandbox's unprivileged user with no capabilities
(the assignment's data files are already in its working folder, read-only).

Nothing in this process is trusted and nothing here decides a grade: hidden tests only
*record* data (:mod:`dnncourse.grading.probe`), and the verdict is made by the worker
(:mod:`dnncourse.grading.verdict`). Hence no guard around the cells: whatever a notebook does
to this process, it can only change the data that comes out, and wrong data fails.
"""

import ctypes
import gc
import json
import os
import resource
import signal
import sys
import traceback

# torch._dynamo: the first operation on the ``meta`` device imports it (~2 s of CPU), and every
# homework probes the meta device: imported here, it does not count against a cell's timeout
PRELOAD = ("torch", "torch.testing", "numpy", "numpy.testing", "inspect", "torch._dynamo")


def set_limits(memory_limit_mb: float | None, file_limit_mb: float | None) -> None:
    """Cap the address space and file sizes of this process; die with the parent."""
    if memory_limit_mb:
        size = int(memory_limit_mb * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    if file_limit_mb:
        size = int(file_limit_mb * 2**20)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    try:  # PR_SET_PDEATHSIG = 1: SIGKILL when the worker that started us goes away
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the worker kills the process tree
        pass


CAP_LAST = 63  # capability numbers to drop from the bounding set (unknown ones are ignored)


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for good, with no capability left (the sandbox, run as root).

    bwrap, started by root, leaves this process only the capabilities to change user: empty
    the bounding set, drop the groups, set every uid and gid, clear what is left, and refuse
    to go on unless the result really is unprivileged.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(CAP_LAST + 1):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    libc.capset(header, (ctypes.c_uint32 * 6)())
    status = dict(
        line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line
    )
    caps = [int(status[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")]
    if os.getuid() != uid or os.geteuid() != uid or 0 in os.getresuid() or any(caps):
        os._exit(70)


def prepare_sandbox(config: dict) -> None:
    """Inside the sandbox, before anything else: process limit, identity.

    ``config`` (from :func:`dnncourse.grading.sandbox.launcher_config`): ``processes``
    (``RLIMIT_NPROC``, where no cgroup limits them), ``uid``/``gid`` to drop to (when bwrap
    ran as root).
    """
    if config.get("processes"):
        n = int(config["processes"])
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if config.get("uid") is not None:
        drop_privileges(int(config["uid"]), int(config["gid"]))


def _free_memory_before_tracebacks(shell) -> None:
    """After a MemoryError, drop the failing frames' locals before IPython formats it.

    The frames of a memory bomb still hold the memory, and formatting the traceback then
    fails too: the kernel hangs instead of going on with the next cell.
    """
    original = shell.showtraceback

    def showtraceback(exc_tuple=None, *args, **kwargs):
        value = (exc_tuple or sys.exc_info())[1]
        text = f"{type(value).__name__} {value}" if value is not None else ""
        if isinstance(value, MemoryError) or "can't allocate memory" in text:
            if value.__traceback__ is not None:
                traceback.clear_frames(value.__traceback__)
            gc.collect()
        return original(exc_tuple, *args, **kwargs)

    shell.showtraceback = showtraceback


def main() -> None:
    sandbox = os.environ.pop("DNNCOURSE_SANDBOX", None)
    if sandbox:
        prepare_sandbox(json.loads(sandbox))
    config_path = os.environ.pop("DNNCOURSE_GUARD", None)
    config = {}
    if config_path:
        with open(config_path) as f:
            config = json.load(f)
        os.unlink(config_path)
    set_limits(config.get("memory_limit_mb"), config.get("file_limit_mb"))
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize(sys.argv[1:])
    _free_memory_before_tracebacks(app.kernel.shell)
    app.start()


if __name__ == "__main__":
    main()
