"""Limits of a sandbox as a whole, and an identity of its own (:mod:`.sandbox` uses them).

A student's limits hold for all their processes together (DESIGN.md: the trust boundary),
not per process: the memory and CPU time of every process the kernel starts, and the tmpfs
folders it writes, count against one total.

* As root: cgroups (:class:`Cgroup`; v1, one hierarchy per controller as on Debian 12 with
  the legacy layout, or v2) with the ``pids``, ``memory`` and ``cpuacct`` controllers, and a
  uid of its own per kernel (:class:`Uid`), so that no two kernels share a user keyring or own
  each other's processes.
* As an ordinary user there is no cgroup one may write: :class:`Watchdog` (a thread of the
  grading process) sums the sandbox's processes (:func:`usage`, read from the sandbox's own
  ``/proc``) and kills the sandbox over a total; the kernel's per-process rlimits are the
  backstop. It also kills on CPU time as root (a cgroup counts it, nothing stops it).

Anchors: systemd's resource control (``MemoryMax=``, one cgroup per service), and its
``DynamicUser=`` (a uid per service from a reserved range, held while the service runs).
"""

import functools
import os
import tempfile
from pathlib import Path

# -- limits of the sandbox as a whole: cgroups (root) -------------------------------------------
CONTROLLERS = ("pids", "memory", "cpuacct")  # v1 names; on v2: pids, memory and cpu.stat


def _v2_root() -> Path | None:
    root = Path("/sys/fs/cgroup")
    return root if (root / "cgroup.controllers").exists() else None


@functools.cache
def cgroup_roots() -> dict[str, Path]:
    """Writable cgroup folders for each controller there is (``dnncourse`` in each).

    cgroup v1 (one hierarchy per controller, ``/sys/fs/cgroup/<name>``) or v2 (one hierarchy,
    the controllers enabled in ``cgroup.subtree_control``); only as root (an ordinary user has
    no writable cgroup: then :class:`Watchdog` and rlimits stand in).
    """
    if os.geteuid() != 0:
        return {}
    roots = {}
    v2 = _v2_root()
    if v2 is not None:
        ours = v2 / "dnncourse"
        try:
            ours.mkdir(exist_ok=True)
        except OSError:
            return {}
        for name in ("pids", "memory"):
            try:
                (ours / "cgroup.subtree_control").write_text(f"+{name}")
            except OSError:
                pass
        enabled = (ours / "cgroup.subtree_control").read_text().split()
        roots = {name: ours for name in ("pids", "memory") if name in enabled}
        roots["cpuacct"] = ours  # cpu.stat is there in every v2 group
        return roots
    for name in CONTROLLERS:
        folder = Path("/sys/fs/cgroup") / name
        if not (folder / "cgroup.procs").exists():
            continue
        try:
            (folder / "dnncourse").mkdir(exist_ok=True)
        except OSError:
            continue
        roots[name] = folder / "dnncourse"
    return roots


def _sweep(root: Path) -> None:
    """Remove empty cgroups left by workers that were killed (their pid is gone)."""
    for group in root.glob("*-*"):
        owner = group.name.split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            try:
                group.rmdir()
            except OSError:
                pass


class Cgroup:
    """One kernel's cgroups (a folder per v1 controller, or one v2 folder) and their limits;
    the kernel's wrapper enters them before it execs bwrap."""

    def __init__(self, roots: dict[str, Path], processes: int, memory_bytes: int | None):
        self.paths: dict[str, Path] = {}
        made: dict[Path, Path] = {}
        for name, root in roots.items():
            if root not in made:
                _sweep(root)
                made[root] = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))
            self.paths[name] = made[root]
        self.folders = list(made.values())
        self.v2 = _v2_root() is not None
        if "pids" in self.paths:
            (self.paths["pids"] / "pids.max").write_text(str(processes))
        if "memory" in self.paths and memory_bytes:
            try:
                self._limit_memory(memory_bytes + library_bytes())
            except OSError:  # a cgroup that does not take it: the watchdog counts instead
                del self.paths["memory"]

    def _limit_memory(self, memory_bytes: int) -> None:
        """The hard limit, without swap (v1: memory and memory+swap equal; v2: no swap)."""
        folder = self.paths["memory"]
        names = ("memory.max", "memory.swap.max", "memory.oom.group")
        values = (memory_bytes, 0, 1)  # oom.group: an OOM kill takes the whole group
        if not self.v2:
            names = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
            values = (memory_bytes, memory_bytes)
        for name, value in zip(names, values, strict=False):
            if (folder / name).exists():
                (folder / name).write_text(str(value))

    def procs(self) -> list[Path]:
        return [folder / "cgroup.procs" for folder in self.folders]

    def cpu_seconds(self) -> float | None:
        """CPU time of all the group's processes, those that ended included."""
        folder = self.paths.get("cpuacct")
        try:
            if folder is None:
                return None
            if self.v2:
                stat = dict(
                    line.split() for line in (folder / "cpu.stat").read_text().splitlines()
                )
                return int(stat["usage_usec"]) / 1e6
            return int((folder / "cpuacct.usage").read_text()) / 1e9
        except (OSError, KeyError, ValueError):
            return None

    def charged(self) -> int | None:
        """The memory the group's processes allocated (anonymous) and wrote to tmpfs (shmem):
        the page cache of files they read is not counted (it is reclaimable)."""
        folder = self.paths.get("memory")
        try:
            if folder is None:
                return None
            stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
            names = ("anon", "shmem") if self.v2 else ("total_rss", "total_shmem")
            return sum(int(stat[name]) for name in names)
        except (OSError, KeyError, ValueError):
            return None

    def memory_exceeded(self) -> bool:
        """Did the group's memory limit kill a process (the OOM killer ran in it)?"""
        folder = self.paths.get("memory")
        try:
            if folder is None:
                return False
            if self.v2:
                events = dict(
                    line.split() for line in (folder / "memory.events").read_text().splitlines()
                )
                return int(events.get("oom_kill", 0)) > 0
            text = (folder / "memory.oom_control").read_text().split()
            return "oom_kill" in text and int(text[text.index("oom_kill") + 1]) > 0
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        """SIGKILL every process still in the groups, then remove them."""
        import signal
        import time

        for folder in self.folders:
            for _ in range(50):
                try:
                    pids = (folder / "cgroup.procs").read_text().split()
                except OSError:
                    break
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                try:
                    folder.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)


@functools.cache
def library_bytes() -> int:
    """The size of the files this process maps (interpreter, torch's and numpy's libraries,
    ~0.5 GiB): what a kernel maps too. A cgroup's hard limit counts their page cache when the
    kernel is the first to read them; it gets this much room above the student's total, so
    that reclaim does not take the kernel's own code away from under it (a thrashing kernel
    hangs instead of being stopped). The total itself is checked by :class:`Watchdog`."""
    files = set()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                files.add(parts[5].strip())
    return sum(os.path.getsize(path) for path in files if os.path.isfile(path))


# -- a uid of its own per kernel (root) ---------------------------------------------------------
UID_BASE = 0x70000000  # past systemd's container range (524288-1879048191): no user of the host
UID_SLOTS = 65536


class Uid:
    """A uid (and gid of the same number) that no other kernel of this host holds meanwhile.

    Taken at random from ``UID_BASE + [0, UID_SLOTS)`` and held by a lock on a file named after
    it (``/run/dnncourse-uids``): a lock goes with the process that holds it, so a killed
    grader frees its uids. Only as root (an ordinary user cannot switch uids).
    """

    def __init__(self):
        import fcntl
        import secrets

        folder = Path("/run/dnncourse-uids")
        if not os.access("/run", os.W_OK):
            folder = Path(tempfile.gettempdir()) / "dnncourse-uids"
        folder.mkdir(mode=0o700, exist_ok=True)
        start = secrets.randbelow(UID_SLOTS)
        for step in range(UID_SLOTS):
            uid = UID_BASE + (start + step) % UID_SLOTS
            path = folder / str(uid)
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.stat(path).st_ino == os.fstat(fd).st_ino:  # not unlinked meanwhile
                    self.uid, self.path, self.fd = uid, path, fd
                    return
            except OSError:
                pass
            os.close(fd)
        raise RuntimeError("no free uid for a sandbox")

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


def usage(kernel: int, folders=()) -> tuple[int, float]:
    """Memory (bytes) and CPU time (s) of the sandbox whose pid 1 is host process ``kernel``.

    Read from the sandbox's own ``/proc`` (``/proc/<kernel>/root/proc``: its processes only,
    not the host's thousands). Memory: the proportional set size (PSS: a page shared by n
    processes counts 1/n in each, so forked children sharing the kernel's pages are not
    counted twice) of every process (the resident size of a kernel alone: cheaper to read,
    never smaller), plus what the sandbox's tmpfs ``folders`` hold. CPU: user and system time of
    every process and of the children it waited for. Raises ``ProcessLookupError`` once the
    sandbox is gone.
    """
    root = f"/proc/{kernel}/root"
    try:
        pids = [p for p in os.listdir(root + "/proc") if p.isdigit()]
    except OSError:
        raise ProcessLookupError(kernel) from None
    memory, ticks = 0, 0
    page, hertz = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
    for pid in pids:
        folder = f"{root}/proc/{pid}"
        try:
            with open(f"{folder}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
            if len(pids) == 1:
                with open(f"{folder}/statm") as f:
                    memory += int(f.read().split()[1]) * page
            else:
                with open(f"{folder}/smaps_rollup") as f:
                    pss = [ln for ln in f if ln.startswith("Pss:")]
                memory += int(pss[0].split()[1]) * 1024 if pss else 0
        except (OSError, ValueError, IndexError):
            pass  # it ended meanwhile
    for folder in folders:
        try:
            stat = os.statvfs(root + folder)
            memory += (stat.f_blocks - stat.f_bfree) * stat.f_frsize
        except OSError:
            pass
    return memory, ticks / hertz


class Watchdog:
    """Looks at a sandbox's totals every ``interval`` seconds and kills it over a limit.

    Memory and CPU time, counted by the cgroup where there is one (as root: exact, the page
    cache left out; its hard limit stops a burst between two looks) or from the sandbox's
    processes (:func:`usage`, as a user: a burst between two looks passes the total by what
    it allocates meanwhile, each process under its own rlimits).
    """

    def __init__(self, box, pid: int, interval: float = 0.2):  # box: a sandbox.KernelBox
        import threading

        self.box, self.pid, self.interval = box, pid, interval
        self.reason: str | None = None
        self.failures: list[str] = []  # looks that raised (none expected)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="sandbox-watchdog")
        self.thread.start()

    def _run(self) -> None:
        kernel = None
        while not self.stopped.wait(self.interval):
            try:
                kernel = self._look(kernel)
            except ProcessLookupError:
                return  # the sandbox is gone
            except Exception as error:  # a look that failed: the next one may not
                self.failures.append(repr(error))
                continue
            if self.reason:
                self.kill()
                return

    def _look(self, kernel: int | None) -> int | None:
        """One look at the totals (``self.reason`` set over a limit); returns the host pid of
        the sandbox's pid 1 once known, raises ProcessLookupError once the sandbox is gone."""
        import psutil

        options, group = self.box.options, self.box.group
        memory_cap = options.memory_mb and options.memory_mb * 2**20
        cpu = group.cpu_seconds() if group else None
        memory = group.charged() if group else None
        if (memory_cap and memory is None) or (cpu is None and options.cpu_seconds):
            try:
                if kernel is None:  # the sandbox's pid 1: bwrap's child, for good
                    children = psutil.Process(self.pid).children()
                    if not children:
                        return None
                    kernel = children[0].pid
            except psutil.Error:
                raise ProcessLookupError(self.pid) from None
            counted = usage(kernel, self.box.tmpfs)
            memory = counted[0] if memory is None else memory
            cpu = counted[1] if cpu is None else cpu
        if (memory_cap and memory and memory > memory_cap) or (group and group.memory_exceeded()):
            self.reason = "memory"
        elif options.cpu_seconds and cpu is not None and cpu > options.cpu_seconds:
            self.reason = "cpu"
        return kernel

    def kill(self) -> None:
        from .processes import kill_tree

        kill_tree(self.pid, wait=0)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
