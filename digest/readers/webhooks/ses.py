"""Amazon SES bounce and complaint notifications, delivered by Amazon SNS.

SNS signs each message with a key whose certificate it serves from
`https://sns.<region>.amazonaws.com/...pem`; the certificate URL is checked to be
exactly that before anything is fetched, and certificates are cached. The topic must be
one of DIGEST_SES_TOPIC_ARNS. A subscription confirmation is verified like a
notification, then confirmed by fetching its SubscribeURL (checked the same way).
"""

from __future__ import annotations

import base64
import re
import threading
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from digest.readers.webhooks import Event, Refused, obj, parse_json, text

Fetch = Callable[[str], bytes]
MAX_AGE = timedelta(hours=1)
_SNS_HOST = r"sns\.[a-z]{2}(-[a-z]+)+-\d\.amazonaws\.com(\.cn)?"
_CERT_URL = re.compile(rf"https://{_SNS_HOST}/[A-Za-z0-9_./-]{{1,200}}\.pem")
_SUBSCRIBE_URL = re.compile(rf"https://{_SNS_HOST}/\?[^\s#]{{1,2000}}")
_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED["UnsubscribeConfirmation"] = _SIGNED["SubscriptionConfirmation"]


def fetch_https(url: str) -> bytes:
    """GET a small document over HTTPS (the signing certificate, the SubscribeURL)."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - URL checked
        return bytes(response.read(65536))


class SnsVerifier:
    """Checks SNS messages; keeps the certificates it fetched (they rarely change)."""

    def __init__(self, fetch: Fetch = fetch_https) -> None:
        self.fetch = fetch
        self._certs: dict[str, rsa.RSAPublicKey] = {}
        self._lock = threading.Lock()

    def key(self, url: str) -> rsa.RSAPublicKey:
        if not _CERT_URL.fullmatch(url):
            raise Refused(
                403, "the signing certificate is not on an sns.<region>.amazonaws.com URL"
            )
        with self._lock:
            found = self._certs.get(url)
        if found is not None:
            return found
        try:
            pem = self.fetch(url)
        except Exception as exc:  # noqa: BLE001 - unreachable now: SNS delivers again later
            raise Refused(
                503, f"the signing certificate could not be fetched ({exc.__class__.__name__})"
            ) from None
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise Refused(403, "the signing certificate is unreadable") from None
        public = cert.public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            raise Refused(403, "the signing certificate holds no RSA key")
        with self._lock:
            if len(self._certs) > 50:
                self._certs.clear()
            self._certs[url] = public
        return public

    def verify(self, message: dict[str, Any], topics: tuple[str, ...], now: datetime) -> None:
        kind = message.get("Type")
        if kind not in _SIGNED:
            raise Refused(400, f"unknown SNS message type {text(kind, 40)!r}")
        if message.get("TopicArn") not in topics:
            raise Refused(403, "the topic is not one of DIGEST_SES_TOPIC_ARNS")
        version = message.get("SignatureVersion")
        algorithm: hashes.HashAlgorithm
        if version == "1":
            algorithm = hashes.SHA1()  # noqa: S303 - SNS's own version 1 signatures
        elif version == "2":
            algorithm = hashes.SHA256()
        else:
            raise Refused(403, "unknown signature version")
        try:
            stamp = datetime.fromisoformat(str(message.get("Timestamp", "")).replace("Z", "+00:00"))
            signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
        except ValueError:
            raise Refused(400, "malformed timestamp or signature") from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        if now - stamp > MAX_AGE or stamp - now > timedelta(minutes=5):
            raise Refused(403, "the message is stale (its timestamp is too far from now)")
        signed = "".join(
            f"{name}\n{message[name]}\n"
            for name in _SIGNED[kind]
            if isinstance(message.get(name), str)
        )
        key = self.key(str(message.get("SigningCertURL", "")))
        try:
            key.verify(signature, signed.encode("utf-8"), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise Refused(403, "the signature does not verify") from None


def read(
    body: bytes, topics: tuple[str, ...], verifier: SnsVerifier, now: datetime
) -> tuple[list[Event], str, str]:
    """(events, replay key, note) of one SNS delivery; Refused if it is not believed."""
    message = parse_json(body)
    if not isinstance(message, dict):
        raise Refused(400, "the body is no SNS message")
    verifier.verify(message, topics, now)
    key = f"sns:{text(message.get('MessageId'), 100)}"
    if message["Type"] == "SubscriptionConfirmation":
        url = text(message.get("SubscribeURL"), 2100)
        if not _SUBSCRIBE_URL.fullmatch(url):
            raise Refused(403, "the SubscribeURL is not on an sns.<region>.amazonaws.com URL")
        try:
            verifier.fetch(url)
        except Exception as exc:  # noqa: BLE001 - SNS sends the confirmation again
            raise Refused(
                502, f"confirming the subscription failed ({exc.__class__.__name__})"
            ) from None
        return [], key, f"subscribed to {text(message.get('TopicArn'), 300)}"
    if message["Type"] == "UnsubscribeConfirmation":
        return [], key, f"unsubscribed from {text(message.get('TopicArn'), 300)}"
    try:
        notification = parse_json(str(message.get("Message", "")).encode("utf-8"))
    except Refused:
        raise Refused(400, "the notification is not JSON") from None
    if not isinstance(notification, dict):
        raise Refused(400, "the notification is not an SES notification")
    return events_of(notification), key, ""


def events_of(notification: dict[str, Any]) -> list[Event]:
    """An SES notification (or event publishing record) as events."""
    kind = notification.get("notificationType") or notification.get("eventType")
    mail = obj(notification.get("mail"))
    headers = obj(mail.get("commonHeaders"))
    message_id = text(headers.get("messageId"), 300)
    if kind == "Bounce":
        bounce = obj(notification.get("bounce"))
        bounce_type = text(bounce.get("bounceType"), 40)
        subtype = text(bounce.get("bounceSubType"), 60)
        outcome = "hard" if bounce_type == "Permanent" else "soft"
        events = []
        for recipient in _list(bounce.get("bouncedRecipients")):
            address = text(recipient.get("emailAddress"))
            detail = " ".join(
                filter(
                    None,
                    [text(recipient.get("status"), 20), text(recipient.get("diagnosticCode"), 200)],
                )
            )
            reason = f"SES {bounce_type} bounce ({subtype})" + (f": {detail}" if detail else "")
            events.append(Event(address, outcome, reason, message_id))
        return events
    if kind == "Complaint":
        complaint = obj(notification.get("complaint"))
        feedback = text(complaint.get("complaintFeedbackType"), 40)
        outcome = "" if feedback == "not-spam" else "complaint"
        reason = f"SES complaint ({feedback or 'unspecified'})"
        return [
            Event(text(r.get("emailAddress")), outcome, reason, message_id)
            for r in _list(complaint.get("complainedRecipients"))
        ]
    return [Event("", "", f"SES {text(kind, 40) or 'unknown'} notification")]


def _list(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
