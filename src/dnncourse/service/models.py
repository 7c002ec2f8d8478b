"""The service's own tables (SQLAlchemy 2): people, sign-in links, assignments, submissions.

nbgrader's gradebook is a separate database that the grader writes; this one is the
service's record of who handed in what, when, and what came back. Times are naive UTC.
A submission's ``state`` goes ``queued`` -> ``grading`` -> ``graded``; ``finished`` counts
the gradings that completed (the fault test checks it is 1 for each submission).
"""

import json
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

QUEUED, GRADING, GRADED = "queued", "grading", "graded"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    # role: "student", "instructor", or "dropped" (kept with their work, signed out, not listed)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    login: Mapped[str] = mapped_column(String(64), unique=True)  # the student id of the roster
    name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(16), default="student")  # or "instructor"
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    @property
    def is_instructor(self) -> bool:
        return self.role == "instructor"


class SigninToken(Base):
    """A one-time sign-in link; only the SHA-256 of its random token is stored."""

    __tablename__ = "signin_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    user: Mapped[User] = relationship()


class LoginSession(Base):
    """A signed-in browser: the cookie holds a random token, the table only its SHA-256.

    Deleting the row signs the browser out (sign-out, a new password, the instructor).
    """

    __tablename__ = "login_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class SigninFailure(Base):
    """A wrong password: counted per account and per address to throttle guessing."""

    __tablename__ = "signin_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    login: Mapped[str] = mapped_column(String(200), index=True)
    address: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class Assignment(Base):
    __tablename__ = "assignments"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    deadline: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    per_hour: Mapped[int] = mapped_column(Integer, default=10)
    policy: Mapped[str] = mapped_column(String(8), default="last")  # or "best"
    late_penalty: Mapped[float | None] = mapped_column(Float, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)  # bumped by a regrade
    opens_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # released
    closes_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # hard close


class Extension(Base):
    """A student's own deadline (and hard close) for one assignment."""

    __tablename__ = "extensions"
    __table_args__ = (UniqueConstraint("user_id", "assignment"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    assignment: Mapped[str] = mapped_column(ForeignKey("assignments.name"))
    deadline: Mapped[datetime] = mapped_column(DateTime)
    user: Mapped[User] = relationship()


class AuditEntry(Base):
    """What an instructor did: settings, links issued, regrades, extensions, sign-outs."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    who: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")


class Submission(Base):
    __tablename__ = "submissions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    assignment: Mapped[str] = mapped_column(ForeignKey("assignments.name"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    folder: Mapped[str] = mapped_column(String(64))  # under DATA/submissions/
    files_json: Mapped[str] = mapped_column(Text)  # [[name, size, sha256], ...]
    checksum: Mapped[str] = mapped_column(String(64))  # protocol.checksum of the files
    state: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    requeue: Mapped[bool] = mapped_column(Boolean, default=False)  # regrade asked while grading
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # gradings started
    finished: Mapped[int] = mapped_column(Integer, default=0)  # gradings completed
    queued_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    graded_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(32), default="")
    score: Mapped[float] = mapped_column(Float, default=0.0)
    max_score: Mapped[float] = mapped_column(Float, default=0.0)
    detail: Mapped[str] = mapped_column(Text, default="")
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    checks_json: Mapped[str] = mapped_column(Text, default="[]")
    user: Mapped[User] = relationship()

    @property
    def files(self) -> list[list]:
        return json.loads(self.files_json)

    @property
    def checks(self) -> list[dict]:
        return json.loads(self.checks_json)


def open_db(url: str) -> sessionmaker:
    """Create the tables if needed; returns the session factory."""
    engine = create_engine(url, pool_pre_ping=True)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite(dbapi_connection, _record):  # many readers, one writer, no lost commits
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    Base.metadata.create_all(engine)
    add_columns(engine)
    return sessionmaker(engine, expire_on_commit=False)


def add_columns(engine) -> list[str]:
    """Add the nullable columns a newer version brought to an existing database."""
    added = []
    found = inspect(engine)
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in found.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have and column.nullable:
                kind = column.type.compile(dialect=engine.dialect)
                with engine.begin() as conn:
                    conn.execute(
                        text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
                    )
                added.append(f"{table.name}.{column.name}")
    return added
