"""What every store module shares: dialect-aware INSERT and small helpers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_for_session(session: Session, model: Any) -> Any:
    """INSERT that knows ON CONFLICT on both dialects digest runs on."""
    return insert_for(session.get_bind().dialect.name, model)


def insert_for(dialect_name: str, model: Any) -> Any:
    return (postgresql.insert if dialect_name == "postgresql" else sqlite.insert)(model)


def rowcount(result: Any) -> int:
    """Rows an UPDATE touched (a CursorResult attribute the generic Result type lacks)."""
    return int(getattr(result, "rowcount", 0) or 0)


def ping(session: Session) -> None:
    """A trivial query: raises if the database cannot be reached."""
    session.execute(select(literal(1))).scalar_one()
