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

# System calls no notebook needs, denied (EPERM) in the sandbox by a seccomp filter, by group:
DENIED = (
    # the kernel keyrings: one user keyring per uid is a channel between students
    "keyctl add_key request_key "
    # reading or writing another process (the sandbox's own, or one of the same uid)
    "ptrace process_vm_readv process_vm_writev pidfd_getfd "
    # memory that no process maps (System V IPC, memfd): invisible to a total counted per process
    "shmget msgget semget memfd_create memfd_secret "
    # namespaces and mounts of its own (the sandbox is made once, from outside)
    "unshare setns mount umount2 pivot_root fsopen fsmount open_tree move_mount "
    # the Linux kernel's attack surface that no notebook uses
    "bpf perf_event_open userfaultfd io_uring_setup open_by_handle_at kexec_load"
).split()
CLONE_NAMESPACES = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET


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
    try:
        os.setgroups([])
    except PermissionError:  # a user namespace that denies setgroups (a forked kernel's)
        if not set(os.getgroups()) <= {gid}:
            os._exit(70)
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


def restrict_syscalls() -> None:
    """Load the seccomp filter of the sandbox (libseccomp, through ``pyseccomp``): every call of
    :data:`DENIED` and ``clone`` with a namespace flag fail with EPERM; ``clone3`` (whose flags
    a filter cannot read) fails with ENOSYS, so that the C library falls back to ``clone``.
    No way back: the filter holds for this process and all it starts (``no_new_privs`` set).
    """
    import errno

    import pyseccomp as seccomp

    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in DENIED:
        if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) != -1:  # -1: unknown here
            rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
    for bit in range(32):  # clone's flags: its first argument on x86-64 and arm64 alike
        if CLONE_NAMESPACES >> bit & 1:
            flag = seccomp.Arg(0, seccomp.MASKED_EQ, 1 << bit, 1 << bit)
            rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone", flag)
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    rules.load()


def new_session_keyring() -> None:
    """Join a fresh, anonymous session keyring (``KEYCTL_JOIN_SESSION_KEYRING``): the keyring
    inherited from the grader (an instructor's keys, a channel to the kernel graded at the same
    time) is no longer reachable."""
    import pyseccomp as seccomp

    number = seccomp.resolve_syscall(seccomp.Arch.NATIVE, "keyctl")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, 1, None) < 0:  # KEYCTL_JOIN_SESSION_KEYRING, anonymous
        os._exit(71)


def prepare_sandbox(config: dict) -> None:
    """Inside the sandbox, before anything else: limits, identity, keyring, system calls.

    ``config`` (from :func:`dnncourse.grading.sandbox.launcher_config`): ``processes``
    (``RLIMIT_NPROC``, where no cgroup limits them), ``cpu_seconds`` (``RLIMIT_CPU``, each
    process: the backstop of the sandbox's total), ``uid``/``gid`` to drop to (when bwrap ran as
    root), ``seccomp`` (join a fresh session keyring, then load :func:`restrict_syscalls`).
    """
    if config.get("processes"):
        n = int(config["processes"])
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
    if config.get("cpu_seconds"):
        n = int(config["cpu_seconds"])
        resource.setrlimit(resource.RLIMIT_CPU, (n, n))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if config.get("uid") is not None:
        drop_privileges(int(config["uid"]), int(config["gid"]))
    if config.get("seccomp"):
        new_session_keyring()
        restrict_syscalls()


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
        try:
            os.unlink(config_path)
        except OSError:  # in the sandbox the folder is read-only (it holds no secret)
            pass
    set_limits(config.get("memory_limit_mb"), config.get("file_limit_mb"))
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    start(sys.argv[1:])


def start(argv: list[str]) -> None:
    """Start the IPython kernel (``argv``: IPKernelApp's, ``-f CONNECTION_FILE`` ...)."""
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize(argv)
    _free_memory_before_tracebacks(app.kernel.shell)
    app.start()


if __name__ == "__main__":
    main()
