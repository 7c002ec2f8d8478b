"""Who is signed in: passwords, throttled sign-in, server-side sessions, one-time links, CSRF.

A student's first visit is a one-time link from the instructor (the roster import prints
one per student): it lets them choose a password, stored as an argon2id hash (argon2-cffi).
A password must not be guessable: zxcvbn (Dropbox's estimator, with its lists of common
passwords, words and names, and the person's own id and name) must rate it 3 of 4 or better
("safely unguessable": about 10^8 guesses or more), so ``12345678`` or ``password1`` is
refused (NIST SP 800-63B, 5.1.1.2: check new passwords against lists of common ones).

Sign-in is throttled before any hash is computed (OWASP's authentication cheat sheet): after
:data:`ACCOUNT_LIMIT` wrong passwords for one account, or :data:`ADDRESS_LIMIT` from one
address, within :data:`THROTTLE_WINDOW`, the next attempt is refused with the time to come
back, and costs no argon2 hash. A right password clears the account's count.

Sessions live on the server (table ``login_sessions``): the signed cookie (Starlette's
SessionMiddleware) holds a random token and a CSRF token, the table the token's SHA-256.
Sign-out, a new password and the instructor's "sign out everywhere" delete rows, so a copied
cookie stops working at once; a session unused for :data:`IDLE_LIFETIME` or older than
:data:`SESSION_LIFETIME` ends. Only the SHA-256 of a link's 256-bit random token is stored;
a link works once (consumed by one conditional UPDATE, so two uses at once sign in once), for
a week. Every POST must echo the CSRF token (a form field ``csrf`` or the header
``X-CSRF-Token``), compared in constant time.
"""

import hashlib
import secrets
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select, update
from zxcvbn import zxcvbn

from .models import LoginSession, SigninFailure, SigninToken, User, utcnow

LINK_LIFETIME = timedelta(days=7)
MIN_PASSWORD = 8
MIN_STRENGTH = 3  # zxcvbn's score: 3 "safely unguessable", about 10^8 guesses or more
THROTTLE_WINDOW = timedelta(minutes=15)
ACCOUNT_LIMIT = 5  # wrong passwords per account in the window
ADDRESS_LIMIT = 20  # wrong passwords from one address in the window
IDLE_LIFETIME = timedelta(hours=2)  # a session unused this long ends
SESSION_LIFETIME = timedelta(days=7)  # and any session after this long
SEEN_EVERY = timedelta(minutes=1)  # how often a session's last use is written
_hasher = PasswordHasher()


class Throttled(Exception):
    """Too many wrong passwords; the message says until when."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(user: User | None, password: str) -> bool:
    """Whether ``password`` is ``user``'s; the same work is done for an unknown user."""
    stored = user.password_hash if user is not None and user.password_hash else None
    try:
        return _hasher.verify(stored or _DUMMY, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


_DUMMY = _hasher.hash(secrets.token_hex(16))


def password_problem(password: str, again: str, user: User) -> str | None:
    """Why ``password`` cannot be ``user``'s new password, or None."""
    if password != again:
        return "The two passwords differ: type the same password twice."
    if len(password) < MIN_PASSWORD:
        return f"The password is too short: at least {MIN_PASSWORD} characters."
    if len(password) > 256:
        return "The password is too long: at most 256 characters."
    rated = zxcvbn(password[:100], user_inputs=[user.login, user.name, user.email])
    if rated["score"] < MIN_STRENGTH:
        why = rated["feedback"]["warning"] or "It is easy to guess."
        hint = " ".join(rated["feedback"]["suggestions"]) or "Add another word or two."
        return f"This password is too easy to guess. {why} {hint}"
    return None


# -- throttling ------------------------------------------------------------------------------
def _until(times: list[datetime], limit: int) -> datetime | None:
    """When fewer than ``limit`` of ``times`` (sorted) are within the window, or None."""
    if len(times) < limit:
        return None
    return times[-limit] + THROTTLE_WINDOW


def check_throttle(db, login: str, address: str) -> None:
    """Raise :class:`Throttled` if ``login`` or ``address`` had too many wrong passwords."""
    since = utcnow() - THROTTLE_WINDOW
    forgot = " Forgot it? Ask your instructor for a new sign-in link."
    rules = [  # (whose failures, how many, the message's words, a hint)
        (SigninFailure.login == login[:200], ACCOUNT_LIMIT, f"for {login[:64]}", forgot),
        (SigninFailure.address == address, ADDRESS_LIMIT, "from your address", ""),
    ]
    for which, limit, whose, hint in rules:
        times = db.scalars(
            select(SigninFailure.at).where(which, SigninFailure.at > since).order_by("at")
        ).all()
        until = _until(list(times), limit)
        if until:
            raise Throttled(
                f"Too many wrong passwords {whose}: sign-in is paused until "
                f"{until:%H:%M} UTC.{hint}"
            )


def failed(db, login: str, address: str) -> None:
    db.add(SigninFailure(login=login[:200], address=address[:64]))
    db.execute(delete(SigninFailure).where(SigninFailure.at < utcnow() - 2 * THROTTLE_WINDOW))
    db.commit()


def clear_failures(db, login: str) -> None:
    db.execute(delete(SigninFailure).where(SigninFailure.login == login))


# -- sessions --------------------------------------------------------------------------------
def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(db, session: dict, user: User) -> None:
    """Sign ``user`` in: a fresh session row and cookie (any older cookie content goes)."""
    token = secrets.token_urlsafe(32)
    db.add(LoginSession(token_hash=_digest(token), user_id=user.id))
    db.commit()
    session.clear()
    session["sid"] = token


def session_user(db, session: dict) -> User | None:
    """The user of the cookie's session, if it is still open on the server."""
    token = session.get("sid")
    if not isinstance(token, str):
        return None
    row = db.get(LoginSession, _digest(token))
    now = utcnow()
    if row is None:
        return None
    if now - row.seen_at > IDLE_LIFETIME or now - row.created_at > SESSION_LIFETIME:
        db.delete(row)
        db.commit()
        return None
    if now - row.seen_at > SEEN_EVERY:
        row.seen_at = now
        db.commit()
    user = db.get(User, row.user_id)
    return user if user is not None and user.role != "dropped" else None


def end_session(db, session: dict) -> None:
    token = session.get("sid")
    if isinstance(token, str):
        db.execute(delete(LoginSession).where(LoginSession.token_hash == _digest(token)))
        db.commit()
    session.clear()


def end_sessions(db, user_id: int) -> int:
    """Sign ``user_id`` out everywhere (not committed); returns how many sessions ended."""
    return db.execute(delete(LoginSession).where(LoginSession.user_id == user_id)).rowcount


# -- one-time links --------------------------------------------------------------------------
def new_link(db, user: User) -> str:
    """A fresh one-time sign-in token for ``user`` (older unused ones stop working)."""
    for old in db.scalars(select(SigninToken).where(SigninToken.user_id == user.id)):
        if old.used_at is None:
            old.used_at = utcnow()
    token = secrets.token_urlsafe(32)
    db.add(
        SigninToken(
            user_id=user.id, token_hash=_digest(token), expires_at=utcnow() + LINK_LIFETIME
        )
    )
    return token


def find_link(db, token: str) -> SigninToken | None:
    """The unused, unexpired link for ``token``, else None."""
    link = db.scalar(select(SigninToken).where(SigninToken.token_hash == _digest(token)))
    if link is None or link.used_at is not None or link.expires_at < utcnow():
        return None
    return link


def consume_link(db, link: SigninToken) -> bool:
    """Mark ``link`` used, atomically: of two uses at once, only one gets True."""
    now = utcnow()
    return (
        db.execute(
            update(SigninToken)
            .where(
                SigninToken.id == link.id,
                SigninToken.used_at.is_(None),
                SigninToken.expires_at >= now,
            )
            .values(used_at=now)
        ).rowcount
        == 1
    )


def csrf_token(session: dict) -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def csrf_ok(session: dict, sent: str | None) -> bool:
    expected = session.get("csrf")
    return bool(expected and sent) and secrets.compare_digest(str(expected), str(sent))
