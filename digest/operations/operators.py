"""Who may use the console, and what they did: operator accounts with slow password
hashes, and the audit log every operator action is written to (console and CLI)."""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from digest.errors import InvalidInput, NotFound
from digest.models import AuditEntry, Operator
from digest.store.operators import add_audit, add_operator, find_operator, recent_audit

MIN_PASSWORD = 12
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{1,63}")
# Checked when the name is unknown, so that a wrong name costs as long as a wrong password.
_DUMMY_HASH = generate_password_hash("not a password of anyone's", method="scrypt")


def check_name(name: str) -> str:
    name = name.strip().lower()
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            "an operator name is 2 to 64 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit"
        )
    return name


def add(session: Session, name: str, password: str, now: datetime) -> Operator:
    """A new operator (scrypt hash of the password); InvalidInput says what is wrong."""
    name = check_name(name)
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"the password must be at least {MIN_PASSWORD} characters")
    return add_operator(session, name, generate_password_hash(password, method="scrypt"), now)


def authenticate(session: Session, name: str, password: str, now: datetime) -> Operator | None:
    """The operator these credentials belong to, or None (the same time either way)."""
    operator = find_operator(session, name.strip().lower()[:64])
    if operator is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    if not check_password_hash(operator.password_hash, password):
        return None
    operator.last_login_at = now
    return operator


def session_valid(session: Session, name: str, epoch: int) -> bool:
    """Whether a console session of `name` made at `epoch` may still be used."""
    operator = find_operator(session, name)
    return operator is not None and operator.session_epoch == epoch


def end_sessions(session: Session, name: str) -> None:
    """End every console session of this operator (each one carries the old epoch)."""
    operator = find_operator(session, name)
    if operator is not None:
        operator.session_epoch += 1


def set_password(session: Session, name: str, password: str) -> None:
    """A new password; every session signed in with the old one ends."""
    operator = find_operator(session, check_name(name))
    if operator is None:
        raise NotFound(f"no operator called {name!r}")
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"the password must be at least {MIN_PASSWORD} characters")
    operator.password_hash = generate_password_hash(password, method="scrypt")
    operator.session_epoch += 1


def remove(session: Session, name: str) -> None:
    """Delete an operator; their sessions end at once (the gate finds no operator)."""
    operator = find_operator(session, check_name(name))
    if operator is None:
        raise NotFound(f"no operator called {name!r}")
    session.delete(operator)


def record(session: Session, operator: str, action: str, detail: str, now: datetime) -> None:
    """Write one operator action to the audit log (the caller commits it with the action)."""
    add_audit(session, operator, action, detail, now)


def recent(session: Session, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
    """A page of the audit log, newest first (older than entry `before` when given)."""
    return recent_audit(session, limit, before)
