"""ESP webhooks: each provider's events read and authenticated as the provider documents
(ses.py: Amazon SES through SNS; sendgrid.py; mailgun.py; postmark.py), then acted on
through the one place that decides (digest/readers/returned.py).

No Flask here: a reader takes the request's body and headers as bytes and strings and
returns `Event`s, or raises `Refused` with the HTTP status to answer (401 without or
with wrong credentials, 403 for a forged, stale or replayed delivery, 400 malformed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.errors import DigestError
from digest.readers.inbound import ours_by_message_id
from digest.readers.returned import SoftRule, act_on_address, clean, find_reader

# Replay keys are kept this long: longer than any timestamp a reader still accepts.
KEEP_SEEN = timedelta(days=2)


class Refused(DigestError):
    """A webhook delivery that is not believed; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Event:
    """One thing a provider says happened to one address; kind "" is nothing to act on."""

    address: str
    kind: str  # hard, soft, complaint, unsubscribe, or ""
    reason: str
    message_id: str = ""  # the Message-ID we sent, when the provider passes it on


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "the body is not JSON") from None


def obj(value: object) -> dict[str, Any]:
    """A JSON object, or an empty one for anything else."""
    return value if isinstance(value, dict) else {}


def text(value: object, limit: int = 320) -> str:
    return value[:limit] if isinstance(value, str) else ""


def act_on_events(
    session: Session, settings: Settings, events: Sequence[Event], source: str, now: datetime
) -> list[str]:
    """Act on each event; returns one line per event (unknown addresses are logged only)."""
    rule = SoftRule.of(settings)
    installation = store.installation_id(session)
    lines = []
    for event in events:
        if not event.kind:
            lines.append(f"ignored: {clean(event.reason)}")
            continue
        edition_id = None
        ours = ours_by_message_id(settings.secret_key, installation, event.message_id)
        if ours is not None:
            reader = find_reader(session, event.address)
            if reader is not None and reader.id == ours[1]:
                edition_id = ours[0] or None
        lines.append(
            act_on_address(
                session, event.address, event.kind, event.reason, source, now, rule, edition_id
            )
        )
    return lines
