"""``dnncourse serve``: its options, the first instructor's sign-in link, Uvicorn.

One command starts the service: ``dnncourse serve --data DATA`` (port 8000 on 127.0.0.1;
put a TLS reverse proxy in front, see the instructor's guide). ``--add-instructor LOGIN``
creates (or re-links) an instructor, prints a one-time sign-in link and exits.
"""

import argparse
import logging
import sys
from pathlib import Path

from sqlalchemy import select

from ..grading.engine import EngineError
from ..grading.protocol import add_limit_options, limits_from_options
from ..homework import repo_root
from . import auth
from .config import ServiceConfig
from .models import User, open_db


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
    config.data.mkdir(parents=True, exist_ok=True)
    sessions = open_db(config.database)
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        app = create_app(config)
    except (EngineError, FileNotFoundError, ValueError) as error:
        print(f"dnncourse serve: {error}", file=sys.stderr)
        return 2
    with app.state.service.sessions() as db:
        if db.scalar(select(User).where(User.role == "instructor")) is None:
            print("no instructor yet: sign in with", instructor_link(config, "instructor", base))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", proxy_headers=True)
    return 0
