"""Mail that comes back: mailto unsubscribes, bounce reports (RFC 3464 DSNs),
complaint reports (ARF, RFC 5965) and readers' replies, one message at a time, piped in
by the MTA.

Nothing in an inbound message is trusted on its own. An unsubscribe must carry the
reader's signed token. A bounce is matched first by the VERP address it was sent to
(its signed tag names the edition and the reader, whatever the report quotes), then by
the Message-ID it quotes in its own top-level parts (whose HMAC tag names the reader);
a complaint by the VERP Return-Path or the Message-ID of the message it carries. A
report that names a recipient must name that reader. A forged or unrelated report
changes nothing. Anything else (a reader's reply, an auto-reply) is kept, not dropped.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes, message_from_string, policy
from email.message import Message
from pathlib import Path

from sqlalchemy.orm import Session

from digest import store
from digest.errors import InvalidToken, NotFound
from digest.mail.returns import read_verp
from digest.mail.tokens import message_id, read_token
from digest.readers import accounts

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

    kind: str  # unsubscribe, bounce, failure (one message only), complaint, reply, ignored
    detail: str
    subscriber_id: int | None = None
    edition_id: int | None = None
    recipient: str | None = None  # the address the report names, checked against the reader
    by_envelope: bool = False  # matched by its signed VERP address, which alone names the reader


def classify(raw: bytes, secret: str, now: datetime, recipient: str = "") -> Inbound:
    """Read one message and say what it is and whom it is about; no I/O, never raises.

    `recipient` is the envelope address the MTA delivered it to (Postfix passes it as
    ORIGINAL_RECIPIENT); without it, Delivered-To and X-Original-To are read, which
    the receiving MTA writes (a VERP tag there is signed, so it cannot be made up).
    """
    try:
        msg = message_from_bytes(raw, policy=policy.compat32)
        verp = _verp(msg, secret, recipient)
        if msg.get_content_type() == "multipart/report":
            report_type = str(msg.get_param("report-type", "")).lower()
            if report_type == "delivery-status":
                return _bounce(msg, secret, verp)
            if report_type == "feedback-report":
                return _complaint(msg, secret)
        return _unsubscribe(msg, secret, now, verp)
    except Exception as exc:  # noqa: BLE001 - hostile mail must never crash the MTA pipe
        return Inbound("ignored", f"unreadable message ({exc.__class__.__name__})")


def _verp(msg: Message, secret: str, recipient: str) -> tuple[int, int] | None:
    candidates = [recipient] if recipient else []
    candidates += [
        str(v) for v in msg.get_all("Delivered-To", []) + msg.get_all("X-Original-To", [])
    ]
    for candidate in candidates:
        found = read_verp(candidate[:400], secret)
        if found is not None:
            return found
    return None


def _unsubscribe(msg: Message, secret: str, now: datetime, verp: tuple[int, int] | None) -> Inbound:
    found = _UNSUBSCRIBE.search(str(msg.get("Subject", "")))
    if found is None:
        if not _address(msg.get("From")):
            return Inbound("ignored", "not a message from anyone (no From address)")
        if verp is not None:
            # A bounce that is no DSN (some MTAs write prose): the address names the
            # delivery, but nothing says the failure is permanent. Kept for a person.
            return Inbound("reply", "returned mail that is not a delivery report", verp[1])
        return Inbound("reply", "not an unsubscribe request, bounce or complaint")
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


def _bounce(report: Message, secret: str, verp: tuple[int, int] | None) -> Inbound:
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
    status, recipient = failed[0]
    kind = "bounce" if status in NO_MAILBOX else "failure"
    if verp is not None:
        edition_id, subscriber_id = verp
        detail = f"bounced: status {status} (matched by its VERP address)"
        return Inbound(kind, detail, subscriber_id, edition_id, recipient, by_envelope=True)
    ours = _ours(report, secret)
    if ours is None:
        return Inbound("ignored", "bounce that does not quote a message of ours")
    edition_id, subscriber_id, _ = ours
    detail = f"bounced: status {status} (matched by its Message-ID)"
    return Inbound(kind, detail, subscriber_id, edition_id, recipient)


def _complaint(report: Message, secret: str) -> Inbound:
    feedback_type, recipient = "", None
    carried: list[Message] = []
    for part in report.get_payload() if report.is_multipart() else []:
        if not isinstance(part, Message):
            continue
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            first = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(first, Message):
                feedback_type = str(first.get("Feedback-Type", "")).strip().lower()
                recipient = _address(first.get("Original-Rcpt-To"))
        quoted = _quoted(part)
        if quoted is not None:
            carried.append(quoted)
    if feedback_type not in COMPLAINTS:
        return Inbound("ignored", f"feedback report of type {feedback_type!r}, not a complaint")
    detail = f"complaint ({feedback_type or 'abuse'})"
    recipient = None if _redacted(recipient) else recipient
    for quoted in carried:
        # Return-Path is written by the mailbox's own MTA at delivery: a VERP address there
        # says this message went straight from us to this reader (not forwarded on), so
        # it stands even when the provider redacts the recipient, as many do.
        verp = _return_path_verp(quoted, secret)
        if verp is not None:
            to = _address(quoted.get("To"))
            recipient = recipient or (None if _redacted(to) else to)
            edition_id, subscriber_id = verp
            return Inbound(
                "complaint",
                detail + " (matched by its VERP Return-Path)",
                subscriber_id,
                edition_id,
                recipient,
                by_envelope=True,
            )
    ours = _ours(report, secret)
    if ours is None:
        return Inbound("ignored", "complaint that does not quote a message of ours")
    edition_id, subscriber_id, quoted = ours
    recipient = recipient or _address(quoted.get("To"))
    detail += " (matched by its Message-ID)"
    return Inbound("complaint", detail, subscriber_id, edition_id, recipient)


def _redacted(address: str | None) -> bool:
    """Providers that hide the reader write "redacted@..." or "xxxxxx@..." instead."""
    local = (address or "").partition("@")[0]
    return "redacted" in local or (bool(local) and set(local) <= set("x*"))


def _return_path_verp(quoted: Message, secret: str) -> tuple[int, int] | None:
    for value in quoted.get_all("Return-Path", []):
        found = read_verp(str(value)[:400], secret)
        if found is not None:
            return found
    return None


STATUS_FOR = {"unsubscribe": "unsubscribed", "bounce": "bounced", "complaint": "complained"}


def apply(session: Session, found: Inbound, now: datetime) -> str:
    """Act on a classified message. Returns what was done, as one line."""
    if found.kind == "reply":
        return f"kept: {found.detail}"
    if found.subscriber_id is None or found.kind == "ignored":
        return f"ignored: {found.detail}"
    try:
        subscriber = store.get_subscriber(session, found.subscriber_id)
    except NotFound:
        return f"ignored: {found.detail}, but the reader no longer exists"
    unnamed_ok = found.by_envelope and found.recipient is None
    if found.kind != "unsubscribe" and found.recipient != subscriber.email and not unnamed_ok:
        # The report must name the reader the message was sent to (a VERP-matched report
        # may name nobody: some MTAs say nothing about whom they tried).
        return f"ignored: {found.detail}, for another or an unnamed recipient"
    if found.edition_id and found.kind in ("bounce", "failure"):
        store.record_late_bounce(session, found.edition_id, subscriber.id, found.detail)
    if found.kind == "failure":
        return (
            f"{found.detail}: that message failed; {accounts.mask_address(subscriber.email)} stays"
        )
    subscriber = accounts.leave(session, subscriber.id, STATUS_FOR[found.kind], now)
    return f"{found.detail}: {accounts.mask_address(subscriber.email)} is now {subscriber.status}"


# --- keeping what a person should read (the CLI's side: files in the data folder) ---------


def kept_folder(data_dir: Path) -> Path:
    return data_dir / "inbound" / "replies"


def keep(raw: bytes, data_dir: Path, now: datetime) -> Path:
    """Store a reply as an .eml file under the data folder, never overwriting one.

    OSError if the folder cannot be written: the caller then asks the MTA to try again.
    """
    folder = kept_folder(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{stamp}-{hashlib.sha256(raw).hexdigest()[:16]}.eml"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except FileExistsError:
        return path  # the same message delivered twice: one copy is enough
    with os.fdopen(fd, "wb") as out:
        out.write(raw)
    return path


def count_kept(data_dir: Path) -> int:
    """How many replies are kept (0 when the folder does not exist or cannot be read)."""
    try:
        return sum(1 for p in kept_folder(data_dir).iterdir() if p.suffix == ".eml")
    except OSError:
        return 0
