"""This database's installation id, the random part of every Message-ID digest mints."""

from __future__ import annotations

import base64
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.models import Installation
from digest.store.base import insert_for_session


def new_installation_id() -> str:
    """40 random bits as 8 lowercase base32 characters (letters and 2-7)."""
    return base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower()


def installation_id(session: Session) -> str:
    """The id migration 0011 made; a database made some other way gets one now (the
    first writer wins, so every process reads the same). Callers read it once per batch
    or process, never per message."""
    query = select(Installation.installation_id).where(Installation.id == 1)
    found = session.scalar(query)
    if found is None:
        stmt = insert_for_session(session, Installation).values(
            id=1, installation_id=new_installation_id()
        )
        session.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
        found = session.scalar(query)
    return str(found)
