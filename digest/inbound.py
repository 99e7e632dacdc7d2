"""Mail that comes back: mailto unsubscribes, bounce reports (RFC 3464 DSNs) and
complaint reports (ARF, RFC 5965), one message at a time, e.g. piped in by the MTA.

Nothing in an inbound message is trusted on its own: an unsubscribe must carry the
reader's signed token, and a bounce or complaint must quote the Message-ID we sent,
whose HMAC tag proves which reader it was for. A forged report changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes, message_from_string, policy
from email.message import EmailMessage, Message

from sqlalchemy.orm import Session

from digest import accounts, store
from digest.errors import InvalidToken, NotFound
from digest.tokens import message_id, read_token

_UNSUBSCRIBE = re.compile(r"unsubscribe\s+([0-9a-z]+\.[0-9a-z]*\.[A-Za-z0-9_-]+)", re.I)
_OUR_ID = re.compile(r"<digest\.(\d+)\.(\d+)\.[A-Za-z0-9]+@[^>\s]+>")


@dataclass(frozen=True)
class Inbound:
    """What one inbound message asks for."""

    kind: str  # unsubscribe, bounce, complaint or ignored
    detail: str
    subscriber_id: int | None = None
    edition_id: int | None = None


def classify(raw: bytes, secret: str, now: datetime) -> Inbound:
    """Read one message and say what it is and whom it is about; no I/O."""
    msg = message_from_bytes(raw, policy=policy.default)
    if msg.get_content_type() == "multipart/report":
        report_type = str(msg.get_param("report-type", "")).lower()
        if report_type == "delivery-status":
            return _bounce(msg, secret)
        if report_type == "feedback-report":
            return _complaint(msg, secret)
    found = _UNSUBSCRIBE.search(str(msg.get("Subject", "")))
    if found is None:
        return Inbound("ignored", "not an unsubscribe request, bounce or complaint")
    try:
        subscriber_id = read_token(secret, "unsubscribe", found.group(1), now)
    except InvalidToken as exc:
        return Inbound("ignored", f"unsubscribe request with an unusable token: {exc}")
    return Inbound("unsubscribe", "unsubscribe request by email", subscriber_id)


def _quoted_message_id(msg: Message, secret: str) -> tuple[int, int] | None:
    """(edition, subscriber) of the message of ours a report quotes, if its tag holds."""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            payload = part.get_payload()
            quoted = payload[0] if isinstance(payload, list) and payload else None
        elif ctype == "text/rfc822-headers":
            content = part.get_payload(decode=True)
            text = content.decode("utf-8", "replace") if isinstance(content, bytes) else ""
            quoted = message_from_string(text)
        else:
            continue
        if not isinstance(quoted, Message):
            continue
        found = _OUR_ID.search(str(quoted.get("Message-ID", "")))
        if found is None:
            continue
        edition_id, subscriber_id = int(found.group(1)), int(found.group(2))
        domain = found.group(0).rsplit("@", 1)[1].rstrip(">")
        if message_id(secret, edition_id, subscriber_id, domain) == found.group(0):
            return edition_id, subscriber_id
    return None


def _bounce(msg: EmailMessage, secret: str) -> Inbound:
    statuses = []
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            blocks = part.get_payload()
            for block in blocks[1:] if isinstance(blocks, list) else []:
                if isinstance(block, Message):
                    statuses.append((str(block.get("Action", "")), str(block.get("Status", ""))))
    hard = [s for action, s in statuses if action.lower() == "failed" and s.startswith("5")]
    if not hard:
        return Inbound("ignored", f"delivery report without a permanent failure: {statuses}")
    ours = _quoted_message_id(msg, secret)
    if ours is None:
        return Inbound("ignored", "bounce that does not quote a message of ours")
    return Inbound("bounce", f"bounced: status {hard[0]}", ours[1], ours[0])


def _complaint(msg: EmailMessage, secret: str) -> Inbound:
    feedback = ""
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            first = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(first, Message):
                feedback = str(first.get("Feedback-Type", ""))
    ours = _quoted_message_id(msg, secret)
    if ours is None:
        return Inbound("ignored", "complaint that does not quote a message of ours")
    return Inbound("complaint", f"complaint ({feedback or 'abuse'})", ours[1], ours[0])


STATUS_FOR = {"unsubscribe": "unsubscribed", "bounce": "bounced", "complaint": "complained"}


def apply(session: Session, found: Inbound, now: datetime) -> str:
    """Act on a classified message: the reader leaves for good. Returns what was done."""
    if found.kind not in STATUS_FOR or found.subscriber_id is None:
        return f"ignored: {found.detail}"
    try:
        subscriber = accounts.leave(session, found.subscriber_id, STATUS_FOR[found.kind], now)
    except NotFound:
        return f"ignored: {found.detail}, but the reader no longer exists"
    if found.edition_id is not None and found.kind == "bounce":
        store.record_late_bounce(session, found.edition_id, subscriber.id, found.detail)
    return f"{found.detail}: {accounts.mask_address(subscriber.email)} is now {subscriber.status}"
