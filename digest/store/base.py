"""What every store module shares: dialect-aware INSERT and small helpers."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from digest.errors import NotFound

T = TypeVar("T")
MAX_ID = 2**31 - 1


def insert_for_session(session: Session, model: Any) -> Any:
    """INSERT that knows ON CONFLICT on both dialects digest runs on."""
    return insert_for(session.get_bind().dialect.name, model)


def insert_for(dialect_name: str, model: Any) -> Any:
    return (postgresql.insert if dialect_name == "postgresql" else sqlite.insert)(model)


def rowcount(result: Any) -> int:
    """Rows an UPDATE touched (a CursorResult attribute the generic Result type lacks)."""
    return int(getattr(result, "rowcount", 0) or 0)


def get_or_raise(session: Session, model: type[T], row_id: int, what: str) -> T:
    """The row with this primary key, or NotFound naming what was looked for."""
    # Ids are INTEGER columns (32-bit on PostgreSQL): a larger one is no row, not an error.
    row = session.get(model, row_id) if 0 < row_id <= MAX_ID else None
    if row is None:
        raise NotFound(f"no {what} with id {row_id}")
    return row


def ping(session: Session) -> None:
    """A trivial query: raises if the database cannot be reached."""
    session.execute(select(literal(1))).scalar_one()
