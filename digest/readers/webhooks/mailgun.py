"""Mailgun's webhooks: the signature travels in the body (timestamp, token and the
hex HMAC-SHA256 of timestamp + token with the webhook signing key); a timestamp too far
from now is stale and a token seen before is a replay."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta
from typing import Any

from digest.readers.webhooks import Event, Refused, obj, parse_json, text

TOLERANCE = timedelta(minutes=15)


def read(body: bytes, signing_key: str, now: datetime) -> tuple[list[Event], str]:
    """(events, replay key) of one delivery; Refused if it is not believed."""
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise Refused(400, "the body is no Mailgun event")
    signed = payload.get("signature")
    if not isinstance(signed, dict):
        raise Refused(401, "no Mailgun signature")
    timestamp, token = text(signed.get("timestamp"), 20), text(signed.get("token"), 100)
    signature = text(signed.get("signature"), 100)
    expected = hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256)
    if not token or not hmac.compare_digest(expected.hexdigest(), signature.lower()):
        raise Refused(403, "the signature does not verify")
    try:
        stamp = int(timestamp)
    except ValueError:
        raise Refused(403, "malformed timestamp") from None
    if abs(now.timestamp() - stamp) > TOLERANCE.total_seconds():
        raise Refused(403, "the delivery is stale (its timestamp is too far from now)")
    data = payload.get("event-data")
    if not isinstance(data, dict):
        raise Refused(400, "no event-data")
    return [event_of(data)], f"mailgun:{token}"


def event_of(data: dict[str, Any]) -> Event:
    name = text(data.get("event"), 40)
    address = text(data.get("recipient"))
    message = obj(data.get("message"))
    headers = obj(message.get("headers"))
    raw_id = text(headers.get("message-id"), 300)
    message_id = f"<{raw_id.strip('<>')}>" if raw_id else ""
    if name == "failed":
        severity = text(data.get("severity"), 20)
        status = obj(data.get("delivery-status"))
        detail = " ".join(
            filter(None, [str(status.get("code", ""))[:5], text(status.get("description"), 200)])
        ) or text(status.get("message"), 200)
        kind = "hard" if severity == "permanent" else "soft"
        reason = f"Mailgun {severity or 'unknown'} failure" + (f": {detail}" if detail else "")
        return Event(address, kind, reason, message_id)
    if name == "complained":
        return Event(address, "complaint", "Mailgun complaint", message_id)
    if name == "unsubscribed":
        return Event(address, "unsubscribe", "Mailgun unsubscribe", message_id)
    return Event(address, "", f"Mailgun {name or 'unknown'} event", message_id)
