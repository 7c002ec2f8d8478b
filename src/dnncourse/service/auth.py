"""Who is signed in: argon2 password hashes, one-time sign-in links, CSRF tokens.

A student's first visit is a one-time link from the instructor (the roster import prints
one per student): it lets them choose a password, stored as an argon2id hash (argon2-cffi).
Only the SHA-256 of a link's 256-bit random token is stored; a link works once, for a week.
The session is a cookie signed with the service's secret (Starlette's SessionMiddleware,
itsdangerous) holding the user's id and a random CSRF token; every POST must echo that token
(a form field ``csrf`` or the header ``X-CSRF-Token``), compared in constant time.
"""

import hashlib
import secrets
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select

from .models import SigninToken, User, utcnow

LINK_LIFETIME = timedelta(days=7)
MIN_PASSWORD = 8
_hasher = PasswordHasher()


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


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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


def csrf_token(session: dict) -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def csrf_ok(session: dict, sent: str | None) -> bool:
    expected = session.get("csrf")
    return bool(expected and sent) and secrets.compare_digest(str(expected), str(sent))
