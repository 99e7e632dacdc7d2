"""API tokens and API jobs (digest/operations/api_tokens.py decides what they allow)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.errors import Duplicate
from digest.models import ApiJob, ApiToken
from digest.store.base import get_or_raise


def add_token(
    session: Session, name: str, scope: str, token_hash: str, prefix: str, now: datetime
) -> ApiToken:
    if find_token(session, name) is not None:
        raise Duplicate(f"an API token called {name!r} exists already (even if revoked)")
    token = ApiToken(name=name, scope=scope, token_hash=token_hash, prefix=prefix, created_at=now)
    session.add(token)
    session.flush()
    return token


def find_token(session: Session, name: str) -> ApiToken | None:
    return session.scalars(select(ApiToken).where(ApiToken.name == name)).first()


def token_by_hash(session: Session, token_hash: str) -> ApiToken | None:
    return session.scalars(select(ApiToken).where(ApiToken.token_hash == token_hash)).first()


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.name)))


def add_job(session: Session, kind: str, token_name: str, now: datetime) -> ApiJob:
    job = ApiJob(kind=kind, status="queued", token_name=token_name, created_at=now, report="{}")
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: int) -> ApiJob:
    return get_or_raise(session, ApiJob, job_id, "job")
