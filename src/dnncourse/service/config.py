"""The service's settings (one dataclass, filled from ``dnncourse serve``'s options), and the
data folder kept private to the service's user: the folder mode 700, its files 600.
"""

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from ..grading.protocol import Limits


@dataclass
class ServiceConfig:
    """Where the data lives, what is graded, and the defaults of every assignment.

    Per-assignment settings (deadline, hourly limit, policy, late penalty) start from the
    defaults here and are changed by the instructor on the assignment's dashboard.
    """

    data: Path  # the data folder: service.db, submissions/, feedback/, grading/, secret_key
    root: Path  # the course: nbgrader_config.py, solutions/, exercises/
    db_url: str | None = None  # the service's database (default sqlite:///DATA/service.db)
    gradebook_url: str | None = None  # nbgrader's gradebook (default sqlite:///DATA/gradebook.db)
    scheduler: str | None = None  # a dask.distributed scheduler (default: embedded cluster)
    assignments: list[str] = field(default_factory=list)  # default: all of solutions/
    jobs: int = 2  # submissions graded at once (the embedded cluster's workers)
    limits: Limits = field(default_factory=Limits)  # per submission, both timeouts included
    max_upload_bytes: int = 5 * 2**20
    per_hour: int = 10  # graded submissions per student, assignment and hour
    policy: str = "last"  # "last" or "best"
    late_penalty: float | None = None  # fraction lost per started day late; None: late = 0
    base_url: str | None = None  # how students reach the service (for sign-in links)
    secure_cookies: bool = False  # cookies only over HTTPS (behind a TLS proxy)
    poll_seconds: float = 1.0  # how often the queue looks for work it was not told about

    @property
    def database(self) -> str:
        return self.db_url or f"sqlite:///{(self.data / 'service.db').resolve()}"

    @property
    def gradebook(self) -> str:
        return self.gradebook_url or f"sqlite:///{(self.data / 'gradebook.db').resolve()}"


def private_folder(path: Path) -> None:
    """Make the folder ``path``, open to the service's user only (mode 700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


def private_files(data: Path) -> None:
    """The data folder's own files (databases, the key) readable by the service's user only."""
    for path in data.iterdir():
        with contextlib.suppress(FileNotFoundError):  # a database's -shm may come and go
            if path.is_file() and not path.is_symlink():
                path.chmod(0o600)
