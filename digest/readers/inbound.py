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
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes, message_from_string, policy
from email.message import Message
from pathlib import Path

from sqlalchemy.orm import Session

from digest import store
from digest.errors import InvalidToken, NotFound
from digest.mail.returns import NO_MAILBOX, read_verp
from digest.mail.tokens import OurMessageId, read_message_id, read_token
from digest.readers import accounts
from digest.readers.returned import SoftRule, act, clean

_UNSUBSCRIBE = re.compile(
    r"unsubscribe\s+([0-9a-z]{1,20}\.[0-9a-z]{0,20}\.[A-Za-z0-9_-]{1,40})", re.I
)
_ADDRESS = re.compile(r"[^\s<>;:\"]+@[^\s<>;\"]+")
COMPLAINTS = ("", "abuse", "fraud")


@dataclass(frozen=True)
class Failed:
    """What a bounce says about one recipient: hard (the address is gone) or soft."""

    address: str | None
    kind: str  # hard or soft
    reason: str


@dataclass(frozen=True)
class Inbound:
    """What one inbound message asks for."""

    # unsubscribe, hard, soft, complaint, reply, warning (a delay: nothing to do), ignored
    kind: str
    detail: str
    subscriber_id: int | None = None
    edition_id: int | None = None
    recipient: str | None = None  # the address the report names, checked against the reader
    by_envelope: bool = False  # matched by its signed VERP address, which alone names the reader
    failed: tuple[Failed, ...] = ()  # a bounce's verdict for each recipient it names
    # The installation part of the Message-ID it was matched by ("" for VERP, or an id
    # minted before installation ids): `apply` refuses another installation's.
    installation: str = ""


def classify(raw: bytes, secret: str, now: datetime, recipient: str = "") -> Inbound:
    """Read one message and say what it is and whom it is about; no I/O, never raises.

    `recipient` is the envelope address the MTA delivered it to (Postfix passes it as
    ORIGINAL_RECIPIENT); without it, Delivered-To and X-Original-To are read, which
    the receiving MTA writes (a VERP tag there is signed, so it cannot be made up).
    """
    try:
        msg = message_from_bytes(raw, policy=policy.compat32)
        verp = _verp(msg, secret, recipient)
        report_type = str(msg.get_param("report-type", "") or "").lower()
        if msg.get_content_type() == "multipart/report" and report_type == "feedback-report":
            return _complaint(msg, secret)
        blocks = _status_blocks(msg)
        if blocks:
            failed, delayed = _read_dsn(blocks)
            if failed:
                return _bounce(msg, secret, verp, tuple(failed))
            if delayed:
                return _warning(delayed, verp)
        permanent, temporary = _detected(msg)
        if _auto_reply(msg, bounce_like=bool(permanent)):
            # Out-of-office and other auto-replies never suppress: kept for a person.
            return Inbound("reply", "an auto-reply", verp[1] if verp else None)
        if permanent:
            guessed = tuple(
                Failed(a, "hard", "permanent failure (non-standard bounce)")
                for a in sorted(permanent)
            )
            return _bounce(msg, secret, verp, guessed)
        if temporary:
            return _warning(sorted(temporary), verp)
        return _unsubscribe(msg, secret, now, verp)
    except Exception as exc:  # noqa: BLE001 - hostile mail must never crash the MTA pipe
        return Inbound("ignored", f"unreadable message ({exc.__class__.__name__})")


def _warning(addresses: list[str], verp: tuple[int, int] | None) -> Inbound:
    named = clean(", ".join(addresses), 120)
    subscriber_id = verp[1] if verp else None
    return Inbound("warning", f"delivery delayed for {named}: still being tried", subscriber_id)


_AUTO_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|out of (the )?office|abwesenheit|"
    r"absence|autoreply|vacation)",
    re.I,
)


def _auto_reply(msg: Message, bounce_like: bool) -> bool:
    """An out-of-office or other automatic answer (RFC 3834), not a bounce. Bounces carry
    `Auto-Submitted: auto-replied` too, so when a bounce was detected only a subject that
    says so, or a header only vacation programs write, makes it an auto-reply."""
    vacation = bool(_AUTO_SUBJECT.search(str(msg.get("Subject", ""))))
    if vacation or msg.get("X-Autoreply") or msg.get("X-Autorespond"):
        return True
    if str(msg.get("Precedence", "")).strip().lower() == "auto_reply":
        return True
    auto = _first_word(msg.get("Auto-Submitted"))
    return auto == "auto-replied" and not bounce_like


def _detected(msg: Message) -> tuple[set[str], set[str]]:
    """flufl.bounce's reading of a bounce that is no RFC 3464 report (qmail, Exim, Yahoo,
    Exchange...): (permanent, temporary) failed addresses, lower-cased."""
    from flufl.bounce import all_failures

    temporary, permanent = all_failures(msg)

    def text(values: Collection[bytes | str]) -> set[str]:
        found = set()
        for value in values:
            address = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            address = address.strip().strip("<>").lower()
            if "@" in address and len(address) <= 320:
                found.add(address)
        return found

    return text(permanent), text(temporary)


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
        if not _address(msg.get("From")) and verp is None:
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


def _ours(report: Message, secret: str) -> tuple[OurMessageId, Message] | None:
    """What the Message-ID of a message of ours the report quotes at its top level (not
    in some attachment further down) names, and that message, if its HMAC tag holds."""
    for part in report.get_payload() if report.is_multipart() else []:
        if not isinstance(part, Message):
            continue
        quoted = _quoted(part)
        if quoted is None:
            continue
        found = read_message_id(secret, str(quoted.get("Message-ID", "")))
        if found is not None:
            return found, quoted
    return None


def ours_by_message_id(secret: str, installation: str, value: str) -> tuple[int, int] | None:
    """(edition, subscriber) a Message-ID of this installation names, if its HMAC tag
    holds; one minted before installation ids counts, another installation's does not."""
    found = read_message_id(secret, value)
    if found is None or found.installation not in ("", installation):
        return None
    return found.edition_id, found.subscriber_id


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


# Diagnostic wording that says the address itself is gone (for 5.0.0 and other generic
# statuses, such as a remote 550 relayed by the publisher's own MTA).
_GONE = re.compile(
    r"user unknown|unknown user|no such (user|mailbox|recipient|address|account)|"
    r"(user|mailbox|recipient|account|address)( \S+)? (does not|doesn't) exist|"
    r"(mailbox|user|recipient) (not found|unavailable|is unavailable)|unknown recipient|"
    r"invalid (recipient|mailbox|address)|recipient address rejected|"
    r"account (has been )?(disabled|deactivated|closed)|not a valid (mailbox|user)|"
    r"unrouteable address|address rejected|no mailbox here|user doesn't have",
    re.I,
)
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def _first_word(value: object) -> str:
    text = re.sub(r"\([^)]*\)", " ", str(value or "")).strip().lower()
    return text.split()[0] if text.split() else ""


def _verdict(status: str, diagnostic: str) -> str:
    """hard when the status, or the wording for a generic status, says the address is
    gone; soft for any other failure (a full mailbox, a policy block, a timeout)."""
    codes = [status] + [".".join(m) for m in _STATUS.findall(diagnostic)]
    if any(code in NO_MAILBOX for code in codes):
        return "hard"
    if status.startswith("5") and _GONE.search(diagnostic):
        return "hard"
    if status in ("5.0.0", "") and not diagnostic:
        # A permanent failure with nothing said about why: taken at its word.
        return "hard"
    return "soft"


def _read_dsn(blocks: list[Message]) -> tuple[list[Failed], list[str]]:
    """Each failed recipient's verdict, and the recipients only delayed, of a DSN."""
    failed: list[Failed] = []
    delayed: list[str] = []
    for block in blocks:
        action = _first_word(block.get("Action"))
        found = _STATUS.search(str(block.get("Status", "")))
        status = found.group(0) if found else ""
        # A comment after the status ("5.0.0 (recipient reached disk quota)") says why too.
        comment = str(block.get("Status", ""))[found.end() :].strip().strip("()") if found else ""
        diagnostic = clean(f"{block.get('Diagnostic-Code', '')} {comment}", 200)
        # Original-Recipient is the address as sent; Final-Recipient may be where a
        # forward took it.
        address = _address(block.get("Original-Recipient")) or _address(
            block.get("Final-Recipient")
        )
        if action == "failed" or (not action and status.startswith("5")):
            kind = _verdict(status, diagnostic)
            reason = f"status {status or 'none'}" + (f" ({diagnostic})" if diagnostic else "")
            failed.append(Failed(address, kind, reason))
        elif action == "delayed":
            delayed.append(address or "a recipient")
    return failed, delayed


def _bounce(
    report: Message, secret: str, verp: tuple[int, int] | None, failed: tuple[Failed, ...]
) -> Inbound:
    first = next((f for f in failed if f.kind == "hard"), failed[0])
    kind, recipient = first.kind, first.address
    if verp is not None:
        edition_id, subscriber_id = verp
        detail = f"bounced: {first.reason} (matched by its VERP address)"
        return Inbound(
            kind, detail, subscriber_id, edition_id, recipient, by_envelope=True, failed=failed
        )
    ours = _ours(report, secret)
    if ours is None:
        return Inbound("ignored", "bounce that does not quote a message of ours")
    mid = ours[0]
    detail = f"bounced: {first.reason} (matched by its Message-ID)"
    return Inbound(
        kind,
        detail,
        mid.subscriber_id,
        mid.edition_id,
        recipient,
        failed=failed,
        installation=mid.installation,
    )


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
    mid, quoted = ours
    recipient = recipient or _address(quoted.get("To"))
    detail += " (matched by its Message-ID)"
    return Inbound(
        "complaint",
        detail,
        mid.subscriber_id,
        mid.edition_id,
        recipient,
        installation=mid.installation,
    )


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


def apply(
    session: Session,
    found: Inbound,
    now: datetime,
    rule: SoftRule | None = None,
    source: str = "pipe",
) -> str:
    """Act on a classified message (through returned.act). Returns what was done, as one line."""
    rule = rule or SoftRule()
    if found.kind == "reply":
        return f"kept: {found.detail}"
    if found.kind == "warning":
        return f"ignored: {found.detail}"
    if found.subscriber_id is None or found.kind == "ignored":
        return f"ignored: {found.detail}"
    if found.installation and found.installation != store.installation_id(session):
        # The same key, another database: its reader ids are not ours.
        return f"ignored: {found.detail}, but of another installation of digest"
    try:
        subscriber = accounts.reader(session, found.subscriber_id)
    except NotFound:
        return f"ignored: {found.detail}, but the reader no longer exists"
    kind, detail = found.kind, found.detail
    email = subscriber.email.lower()
    if kind in ("hard", "soft"):
        mine = [f for f in found.failed if f.address is not None and f.address == email]
        unnamed = [f for f in found.failed if f.address is None]
        if mine or (found.by_envelope and unnamed and len(unnamed) == len(found.failed)):
            chosen = next((f for f in mine if f.kind == "hard"), (mine or unnamed)[0])
            kind = chosen.kind
            how = "VERP address" if found.by_envelope else "Message-ID"
            detail = f"bounced: {chosen.reason} (matched by its {how})"
        elif found.by_envelope:
            # Our signed address says the message was for this reader, but the report
            # names another address (a forward, or a list of several): the reader's own
            # address is not proven gone, so it counts as a soft bounce.
            kind = "soft"
            detail = f"{detail}, for another address than the reader's"
        else:
            return f"ignored: {detail}, for another or an unnamed recipient"
    elif kind == "complaint":
        unnamed_ok = found.by_envelope and found.recipient is None
        if found.recipient != email and not unnamed_ok:
            return f"ignored: {detail}, for another or an unnamed recipient"
    if found.edition_id and kind in ("hard", "soft"):
        store.record_late_bounce(session, found.edition_id, subscriber.id, detail)
    return act(session, subscriber.id, kind, detail, source, now, rule, found.edition_id or None)


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
