"""Operator accounts and the audit log."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.errors import Duplicate
from digest.models import AuditEntry, Operator


def find_operator(session: Session, name: str) -> Operator | None:
    return session.scalars(select(Operator).where(Operator.name == name)).first()


def add_operator(session: Session, name: str, password_hash: str, now: datetime) -> Operator:
    if find_operator(session, name) is not None:
        raise Duplicate(f"an operator called {name!r} exists already")
    operator = Operator(name=name, password_hash=password_hash, created_at=now)
    session.add(operator)
    session.flush()
    return operator


def add_audit(session: Session, operator: str, action: str, detail: str, now: datetime) -> None:
    session.add(AuditEntry(at=now, operator=operator, action=action, detail=detail[:2000]))


def recent_audit(session: Session, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
    """The newest entries (older than entry `before` when given), newest first."""
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if before is not None:
        stmt = stmt.where(AuditEntry.id < before)
    return list(session.scalars(stmt))


def list_operators(session: Session) -> list[Operator]:
    return list(session.scalars(select(Operator).order_by(Operator.name)))
