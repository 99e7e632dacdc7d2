"""SendGrid's signed Event Webhook: an ECDSA (P-256, SHA-256) signature over the
timestamp header followed by the raw body, checked with the public key SendGrid shows
(DIGEST_SENDGRID_WEBHOOK_KEY, PEM or the bare base64 it displays)."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from digest.readers.webhooks import Event, Refused, parse_json, text

SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
TOLERANCE = timedelta(minutes=10)


def public_key(setting: str) -> ec.EllipticCurvePublicKey:
    try:
        if setting.lstrip().startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(setting.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode("".join(setting.split())))
    except ValueError:
        raise Refused(500, "DIGEST_SENDGRID_WEBHOOK_KEY is no usable public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise Refused(500, "DIGEST_SENDGRID_WEBHOOK_KEY is no elliptic-curve public key")
    return key


def read(
    body: bytes, signature: str, timestamp: str, key_setting: str, now: datetime
) -> tuple[list[Event], str]:
    """(events, replay key) of one delivery; Refused if it is not believed."""
    if not signature or not timestamp:
        raise Refused(401, "no SendGrid signature")
    try:
        stamp = int(timestamp)
        raw_signature = base64.b64decode(signature, validate=True)
    except ValueError:
        raise Refused(403, "malformed signature or timestamp") from None
    if abs(now.timestamp() - stamp) > TOLERANCE.total_seconds():
        raise Refused(403, "the delivery is stale (its timestamp is too far from now)")
    key = public_key(key_setting)
    try:
        key.verify(raw_signature, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise Refused(403, "the signature does not verify") from None
    events = parse_json(body)
    if not isinstance(events, list):
        raise Refused(400, "the body is no list of events")
    replay = "sendgrid:" + hashlib.sha256(raw_signature).hexdigest()
    return [event_of(e) for e in events if isinstance(e, dict)], replay


def event_of(event: dict[str, Any]) -> Event:
    name = text(event.get("event"), 40)
    address = text(event.get("email"))
    message_id = text(event.get("smtp-id"), 300)
    reason = " ".join(filter(None, [text(event.get("status"), 20), text(event.get("reason"), 200)]))
    if name == "bounce":
        # SendGrid's bounce classification: "bounce" is permanent, "blocked" temporary.
        kind = "soft" if text(event.get("type"), 20) == "blocked" else "hard"
        return Event(address, kind, f"SendGrid {name}: {reason or 'bounced'}", message_id)
    if name == "spamreport":
        return Event(address, "complaint", "SendGrid spam report", message_id)
    if name in ("unsubscribe", "group_unsubscribe"):
        return Event(address, "unsubscribe", f"SendGrid {name}", message_id)
    return Event(address, "", f"SendGrid {name or 'unknown'} event", message_id)
