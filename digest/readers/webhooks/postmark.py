"""Postmark's webhooks: authenticated by the basic auth Postmark puts in the webhook URL
(`https://user:password@host/webhooks/postmark`), as Postmark documents; a record ID
seen before is a replay."""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

from digest.readers.webhooks import Event, Refused, parse_json, text

HARD = ("HardBounce", "BadEmailAddress", "ManuallyDeactivated")
SOFT = ("SoftBounce", "Transient", "DnsError", "Blocked", "SpamNotification", "Undeliverable")


def check_auth(header: str, expected: str) -> None:
    """Refused(401) unless the Authorization header is Basic with exactly `user:password`."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        raise Refused(401, "no credentials")
    try:
        given = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Refused(401, "malformed credentials") from None
    if not hmac.compare_digest(given, expected.encode()):
        raise Refused(401, "wrong credentials")


def read(body: bytes, authorization: str, expected: str) -> tuple[list[Event], str]:
    """(events, replay key) of one delivery; Refused if it is not believed."""
    check_auth(authorization, expected)
    record = parse_json(body)
    if not isinstance(record, dict):
        raise Refused(400, "the body is no Postmark record")
    kind = text(record.get("RecordType"), 40)
    ident = str(record.get("ID", ""))[:60] or text(record.get("MessageID"), 100)
    return [event_of(record)], f"postmark:{kind}:{ident}:{text(record.get('Email'))}"


def event_of(record: dict[str, Any]) -> Event:
    kind = text(record.get("RecordType"), 40)
    address = text(record.get("Email")) or text(record.get("Recipient"))
    if kind == "Bounce":
        bounce = text(record.get("Type"), 40)
        detail = text(record.get("Description"), 200) or text(record.get("Details"), 200)
        reason = f"Postmark {bounce}" + (f": {detail}" if detail else "")
        if bounce in HARD:
            return Event(address, "hard", reason)
        if bounce in SOFT:
            return Event(address, "soft", reason)
        if bounce == "Unsubscribe":
            return Event(address, "unsubscribe", reason)
        if bounce == "SpamComplaint":
            return Event(address, "complaint", reason)
        return Event(address, "", reason)  # auto-responders, challenges and the like
    if kind == "SpamComplaint":
        return Event(address, "complaint", "Postmark spam complaint")
    if kind == "SubscriptionChange" and record.get("SuppressSending") is True:
        why = text(record.get("SuppressionReason"), 40)
        outcome = {"HardBounce": "hard", "SpamComplaint": "complaint"}.get(why, "unsubscribe")
        return Event(address, outcome, f"Postmark suppression ({why or 'unspecified'})")
    return Event(address, "", f"Postmark {kind or 'unknown'} record")
