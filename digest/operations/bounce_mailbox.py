"""One pass over the bounce mailbox: each message read like the MTA pipe's and acted on
through the same one place; the CLI (`digest inbound --imap`) and beat both call this."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.readers.inbound import apply, classify
from digest.readers.mailbox import Tally, parse_imap_url, read_mailbox
from digest.readers.returned import SoftRule, clean

# What the mailbox may move or flag: what was ours and acted on (or a delay warning for
# one of our deliveries). Replies and anything not understood stay for a person.
ACTED = ("unsubscribe", "hard", "soft", "complaint", "warning")


def read_bounce_mailbox(
    settings: Settings, sessions: Callable[[], Session], url: str, now: datetime
) -> Tally:
    """Read the mailbox at `url` once. MailboxError if it cannot be read; a database error
    propagates with the message it was on left untouched."""
    target = parse_imap_url(url)
    rule = SoftRule.of(settings)
    installation: list[str] = []  # read once, when a Message-ID first asks for it

    def ours(part: str) -> bool:
        if not installation:
            with sessions() as session:
                installation.append(store.installation_id(session))
                session.commit()
        return part == installation[0]

    def handle(raw: bytes) -> tuple[bool, str]:
        found = classify(raw, settings.secret_key, now)
        if found.kind not in ACTED or found.subscriber_id is None:
            return False, f"left: {clean(found.detail)}"
        if found.installation and not ours(found.installation):
            # A mailbox shared with another installation: its bounces are its own.
            return False, f"left: {clean(found.detail)}, of another installation"
        with sessions() as session:
            line = apply(session, found, now, rule, source="imap")
            session.commit()
        return True, line

    return read_mailbox(target, handle)
