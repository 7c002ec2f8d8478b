"""``dnncourse serve``: its options, the first instructor's sign-in link, Uvicorn.

One command starts the service: ``dnncourse serve --data DATA`` (port 8000 on 127.0.0.1;
put a TLS reverse proxy in front, see the instructor's guide). ``--add-instructor LOGIN``
creates (or re-links) an instructor, prints a one-time sign-in link and exits.

The port is taken first: a service that cannot listen (the port is in use) stops before it
creates or changes anything. The access log never holds a sign-in link's token (it is
replaced by ``[hidden]``), and the start never prints a link (the journal is a log too).
"""

import argparse
import copy
import logging
import re
import socket
import sys
from pathlib import Path

from sqlalchemy import select

from ..grading.engine import EngineError
from ..grading.protocol import add_limit_options, limits_from_options
from ..homework import repo_root
from . import auth
from .config import ServiceConfig, private_files, private_folder
from .models import User, open_db

SHUTDOWN_SECONDS = 3  # a stop waits this long for requests under way (a long poll: 25 s)
SECRET_PATH = re.compile(r"(/signin/)[^/?#\s\"]+")


class HideSecrets(logging.Filter):
    """Replace the token of a sign-in link in any log record (uvicorn's access log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                SECRET_PATH.sub(r"\1[hidden]", a) if isinstance(a, str) else a for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = SECRET_PATH.sub(r"\1[hidden]", record.msg)
        return True


def log_config() -> dict:
    """Uvicorn's logging, with :class:`HideSecrets` on every handler."""
    import uvicorn.config

    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["filters"] = {"secrets": {"()": HideSecrets}}
    for handler in config["handlers"].values():
        handler["filters"] = ["secrets"]
    return config


def listen(host: str, port: int) -> socket.socket:
    """The listening socket (OSError if the port is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="the data folder (created)")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (behind a proxy)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--db", default=None, help="service database URL (default: DATA/service.db)")
    p.add_argument(
        "--gradebook", default=None, help="nbgrader gradebook URL (default: DATA/gradebook.db)"
    )
    p.add_argument(
        "--scheduler", default=None, help="tcp://HOST:8786: a Dask cluster (default: embedded)"
    )
    p.add_argument("--assignments", nargs="*", default=[], help="default: all of solutions/")
    p.add_argument("--jobs", type=int, default=2, help="submissions graded at once (default 2)")
    add_limit_options(p)  # --cell-timeout, --timeout, --memory-limit: as in grade
    p.add_argument("--max-upload-mb", type=float, default=5.0, help="upload cap (MiB)")
    p.add_argument("--per-hour", type=int, default=10, help="hand-ins per hour (0: no limit)")
    p.add_argument("--policy", choices=("last", "best"), default="last")
    p.add_argument(
        "--late-penalty",
        type=float,
        default=None,
        help="fraction lost per day late (default: late does not count)",
    )
    p.add_argument("--base-url", default=None, help="public URL, for sign-in links")
    p.add_argument("--secure-cookies", action="store_true", help="cookies over HTTPS only")
    p.add_argument("--add-instructor", metavar="LOGIN", help="print a sign-in link and exit")


def config_from(args) -> ServiceConfig:
    return ServiceConfig(
        data=args.data.resolve(),
        root=repo_root(),
        db_url=args.db,
        gradebook_url=args.gradebook,
        scheduler=args.scheduler,
        assignments=list(args.assignments),
        jobs=max(1, args.jobs),
        limits=limits_from_options(args),
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        per_hour=args.per_hour,
        policy=args.policy,
        late_penalty=args.late_penalty,
        base_url=args.base_url.rstrip("/") if args.base_url else None,
        secure_cookies=args.secure_cookies,
    )


def instructor_link(config: ServiceConfig, login: str, base: str) -> str:
    """Create (or promote) instructor ``login``; a one-time sign-in link for them."""
    private_folder(config.data)
    sessions = open_db(config.database)
    private_files(config.data)
    with sessions() as db:
        user = db.scalar(select(User).where(User.login == login))
        if user is None:
            user = User(login=login, name=login, role="instructor")
            db.add(user)
        user.role = "instructor"
        db.flush()
        token = auth.new_link(db, user)
        db.commit()
    return f"{base}/signin/{token}"


def run(args) -> int:
    import uvicorn

    from .app import create_app

    try:
        config = config_from(args)
    except FileNotFoundError as error:
        print(f"dnncourse serve: {error}", file=sys.stderr)
        return 2
    base = config.base_url or f"http://{args.host}:{args.port}"
    if args.add_instructor:
        print(instructor_link(config, args.add_instructor, base))
        return 0
    try:
        sock = listen(args.host, args.port)  # before anything is created or changed
    except OSError as error:
        print(f"dnncourse serve: cannot listen on {args.host}:{args.port}: {error.strerror}",
              file=sys.stderr)  # fmt: skip
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(HideSecrets())
    try:
        app = create_app(config)
    except (EngineError, FileNotFoundError, ValueError) as error:
        sock.close()
        print(f"dnncourse serve: {error}", file=sys.stderr)
        return 2
    with app.state.service.sessions() as db:
        if db.scalar(select(User).where(User.role == "instructor")) is None:
            print(f"no instructor yet: run dnncourse serve --data {config.data} "
                  "--add-instructor LOGIN for a sign-in link")  # fmt: skip
    settings = uvicorn.Config(
        app,
        log_level="info",
        proxy_headers=True,
        log_config=log_config(),
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,  # pages' long polls do not hold a stop
    )
    uvicorn.Server(settings).run(sockets=[sock])
    return 0
