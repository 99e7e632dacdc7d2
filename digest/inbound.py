"""Mail that comes back: mailto unsubscribes, bounce reports (RFC 3464 DSNs) and
complaint reports (ARF, RFC 5965), one message at a time, e.g. piped in by the MTA.

Nothing in an inbound message is trusted on its own. An unsubscribe must carry the
reader's signed token. A bounce or complaint must quote, in its own top-level parts,
the Message-ID digest sent (whose HMAC tag names the reader) and name that reader's
address as the recipient. A forged or unrelated report changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes, message_from_string, policy
from email.message import Message

from sqlalchemy.orm import Session

from digest import accounts, store
from digest.errors import InvalidToken, NotFound
from digest.tokens import message_id, read_token

_UNSUBSCRIBE = re.compile(
    r"unsubscribe\s+([0-9a-z]{1,20}\.[0-9a-z]{0,20}\.[A-Za-z0-9_-]{1,40})", re.I
)
_OUR_ID = re.compile(r"<digest\.(\d{1,18})\.(\d{1,18})\.[A-Za-z0-9]{1,20}@[^>\s]{1,255}>")
_ADDRESS = re.compile(r"[^\s<>;:\"]+@[^\s<>;\"]+")
# Statuses that say the address itself is gone; other permanent failures (policy,
# blocklists, a full mailbox) fail that one message but keep the reader.
NO_MAILBOX = ("5.1.1", "5.1.2", "5.1.10")
COMPLAINTS = ("", "abuse", "fraud")


@dataclass(frozen=True)
class Inbound:
    """What one inbound message asks for."""

    kind: str  # unsubscribe, bounce, failure (one message only), complaint or ignored
    detail: str
    subscriber_id: int | None = None
    edition_id: int | None = None
    recipient: str | None = None  # the address the report names, checked against the reader


def classify(raw: bytes, secret: str, now: datetime) -> Inbound:
    """Read one message and say what it is and whom it is about; no I/O, never raises."""
    try:
        msg = message_from_bytes(raw, policy=policy.compat32)
        if msg.get_content_type() == "multipart/report":
            report_type = str(msg.get_param("report-type", "")).lower()
            if report_type == "delivery-status":
                return _bounce(msg, secret)
            if report_type == "feedback-report":
                return _complaint(msg, secret)
        return _unsubscribe(msg, secret, now)
    except Exception as exc:  # noqa: BLE001 - hostile mail must never crash the MTA pipe
        return Inbound("ignored", f"unreadable message ({exc.__class__.__name__})")


def _unsubscribe(msg: Message, secret: str, now: datetime) -> Inbound:
    found = _UNSUBSCRIBE.search(str(msg.get("Subject", "")))
    if found is None:
        return Inbound("ignored", "not an unsubscribe request, bounce or complaint")
    try:
        subscriber_id = read_token(secret, "unsubscribe", found.group(1), now)
    except InvalidToken as exc:
        return Inbound("ignored", f"unsubscribe request with an unusable token: {exc}")
    return Inbound("unsubscribe", "unsubscribe request by email", subscriber_id)


def _quoted(part: Message) -> Message | None:
    """The original message (or its headers) a report part carries, if it is one."""
    ctype = part.get_content_type()
    if ctype == "message/rfc822":
        payload = part.get_payload()
        first = payload[0] if isinstance(payload, list) and payload else None
        return first if isinstance(first, Message) else None
    if ctype == "text/rfc822-headers":
        content = part.get_payload(decode=True)
        if isinstance(content, bytes):
            return message_from_string(content.decode("utf-8", "replace"))
    return None


def _ours(report: Message, secret: str) -> tuple[int, int, Message] | None:
    """(edition, subscriber, quoted message) of a message of ours the report quotes at
    its top level (not in some attachment further down), if its HMAC tag holds."""
    for part in report.get_payload() if report.is_multipart() else []:
        if not isinstance(part, Message):
            continue
        quoted = _quoted(part)
        if quoted is None:
            continue
        found = _OUR_ID.search(str(quoted.get("Message-ID", "")))
        if found is None:
            continue
        edition_id, subscriber_id = int(found.group(1)), int(found.group(2))
        domain = found.group(0).rsplit("@", 1)[1].rstrip(">")
        if message_id(secret, edition_id, subscriber_id, domain) == found.group(0):
            return edition_id, subscriber_id, quoted
    return None


def _address(value: object) -> str | None:
    found = _ADDRESS.search(str(value or ""))
    return found.group(0).lower().rstrip(".") if found else None


def _status_blocks(report: Message) -> list[Message]:
    blocks: list[Message] = []
    for part in report.get_payload() if report.is_multipart() else []:
        if isinstance(part, Message) and part.get_content_type() in (
            "message/delivery-status",
            "message/global-delivery-status",
        ):
            payload = part.get_payload()
            blocks += (
                [b for b in payload if isinstance(b, Message)] if isinstance(payload, list) else []
            )
    return blocks


def _bounce(report: Message, secret: str) -> Inbound:
    failed = [
        (
            str(b.get("Status", "")).strip(),
            _address(b.get("Final-Recipient") or b.get("Original-Recipient")),
        )
        for b in _status_blocks(report)
        if str(b.get("Action", "")).strip().lower() == "failed"
        and str(b.get("Status", "")).strip().startswith("5")
    ]
    if not failed:
        return Inbound("ignored", "delivery report without a permanent failure")
    ours = _ours(report, secret)
    if ours is None:
        return Inbound("ignored", "bounce that does not quote a message of ours")
    edition_id, subscriber_id, _ = ours
    status, recipient = failed[0]
    kind = "bounce" if status in NO_MAILBOX else "failure"
    return Inbound(kind, f"bounced: status {status}", subscriber_id, edition_id, recipient)


def _complaint(report: Message, secret: str) -> Inbound:
    feedback_type, recipient = "", None
    for part in report.get_payload() if report.is_multipart() else []:
        if isinstance(part, Message) and part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            first = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(first, Message):
                feedback_type = str(first.get("Feedback-Type", "")).strip().lower()
                recipient = _address(first.get("Original-Rcpt-To"))
    if feedback_type not in COMPLAINTS:
        return Inbound("ignored", f"feedback report of type {feedback_type!r}, not a complaint")
    ours = _ours(report, secret)
    if ours is None:
        return Inbound("ignored", "complaint that does not quote a message of ours")
    edition_id, subscriber_id, quoted = ours
    recipient = recipient or _address(quoted.get("To"))
    return Inbound(
        "complaint", f"complaint ({feedback_type or 'abuse'})", subscriber_id, edition_id, recipient
    )


STATUS_FOR = {"unsubscribe": "unsubscribed", "bounce": "bounced", "complaint": "complained"}


def apply(session: Session, found: Inbound, now: datetime) -> str:
    """Act on a classified message. Returns what was done, as one line."""
    if found.subscriber_id is None or found.kind == "ignored":
        return f"ignored: {found.detail}"
    try:
        subscriber = store.get_subscriber(session, found.subscriber_id)
    except NotFound:
        return f"ignored: {found.detail}, but the reader no longer exists"
    if found.kind != "unsubscribe" and found.recipient != subscriber.email:
        # The report must name the reader the quoted Message-ID was sent to.
        return f"ignored: {found.detail}, for another or an unnamed recipient"
    if found.edition_id is not None and found.kind in ("bounce", "failure"):
        store.record_late_bounce(session, found.edition_id, subscriber.id, found.detail)
    if found.kind == "failure":
        return (
            f"{found.detail}: that message failed; {accounts.mask_address(subscriber.email)} stays"
        )
    subscriber = accounts.leave(session, subscriber.id, STATUS_FOR[found.kind], now)
    return f"{found.detail}: {accounts.mask_address(subscriber.email)} is now {subscriber.status}"
