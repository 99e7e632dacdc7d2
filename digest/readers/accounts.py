"""The reader's side of the list: sign up, confirm, change preferences, leave.

No Flask here: functions take the session, settings and `now`, and never commit (the
caller owns the transaction). Sending the sign-up email is a separate step, so that
the caller can send it after the change is committed.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.editions import pages, sending
from digest.editions.render import environment
from digest.editions.schedule import local_day, send_at
from digest.editions.selection import normalise_sections
from digest.errors import Duplicate, InvalidAddress, InvalidInput, InvalidToken, NotFound
from digest.mail.addresses import mailbox_of, normalise_address
from digest.mail.message import Envelope, build_message
from digest.mail.returns import envelope_sender
from digest.mail.tokens import seal, sign, single_message_id
from digest.mail.transport import Transport
from digest.models import Subscriber
from digest.readers.subscribers import parse_editions, parse_timezone, subscriber_fields
from digest.store.subscribers import suppression_reason

# Statuses of readers who left; only a confirmed fresh sign-up brings them back.
LEFT = ("unsubscribed", "bounced", "complained")
NOTICE_INTERVAL = timedelta(minutes=10)
SECTIONS_LOOKBACK = timedelta(days=30)
FORM_TTL = timedelta(hours=12)
# A name in a form: at most this many characters and UTF-8 bytes (it travels in the
# confirmation link, which must stay within tokens.SEALED_MAX).
NAME_MAX_CHARS = 100
NAME_MAX_BYTES = 300
_REGIONS = (
    "Africa/",
    "America/",
    "Antarctica/",
    "Arctic/",
    "Asia/",
    "Atlantic/",
    "Australia/",
    "Europe/",
    "Indian/",
    "Pacific/",
)


# --- forms -----------------------------------------------------------------------------


@dataclass
class Form:
    """What a subscribe or preferences form sent, as text, kept to show it again."""

    email: str = ""
    name: str = ""
    timezone: str = ""
    editions: str = "both"
    sections: list[str] = field(default_factory=list)


def editions_choice(morning: bool, evening: bool) -> str:
    """The form's value for a choice of editions: both, morning or evening."""
    return "both" if morning and evening else "morning" if morning else "evening"


def form_of(subscriber: Subscriber) -> Form:
    """A preferences form filled in with what the reader chose so far."""
    editions = editions_choice(subscriber.morning, subscriber.evening)
    return Form(
        email=subscriber.email,
        name=subscriber.name,
        timezone=subscriber.timezone or "",
        editions=editions,
        sections=[s for s in subscriber.sections.split(",") if s],
    )


def validate(
    form: Form, allowed_sections: Collection[str], *, email: str | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Column values for the form, or a message per field saying what to fix.

    `email` is the reader's known address (the preferences form cannot change it);
    without it the form's own email field is checked.
    """
    errors: dict[str, str] = {}
    if not name_fits(form.name):
        errors["name"] = (
            f"Use a shorter name: at most {NAME_MAX_CHARS} characters "
            "(fewer with emoji or other long characters)."
        )
    address = email
    if address is None:
        try:
            address = normalise_address(form.email)
        except InvalidAddress as exc:
            errors["email"] = _address_problem(form.email, exc)
    try:
        parse_editions(form.editions)
    except InvalidInput:
        errors["editions"] = "Choose the morning edition, the evening edition or both."
    try:
        parse_timezone(form.timezone)
    except InvalidInput:
        errors["timezone"] = "Choose a timezone from the list."
    chosen = normalise_sections(form.sections)
    unknown = sorted(set(filter(None, chosen.split(","))) - set(allowed_sections))
    if unknown:
        errors["sections"] = f"There is no section called {', '.join(unknown)[:200]}."
    elif len(chosen) > 500:
        errors["sections"] = "Choose fewer sections."
    if errors or address is None:
        return {}, errors
    return subscriber_fields(address, form.name, form.timezone, form.editions, form.sections), {}


def name_fits(name: str) -> bool:
    """Whether a name is within NAME_MAX_CHARS characters and NAME_MAX_BYTES bytes."""
    return len(name) <= NAME_MAX_CHARS and len(name.encode("utf-8", "replace")) <= NAME_MAX_BYTES


def cap_name(name: str) -> str:
    """A name cut to what name_fits allows (for a field that cannot say it is too long)."""
    name = name[:NAME_MAX_CHARS]
    while not name_fits(name):
        name = name[:-1]
    return name


def largest_request() -> dict[str, str]:
    """The biggest request a valid sign-up form can make (sizes the confirmation link)."""
    fields = {
        "name": '"' * NAME_MAX_CHARS,  # each one escaped in JSON: two bytes
        "timezone": "America/Argentina/ComodRivadavia",
        "morning": True,
        "evening": True,
        "sections": ("x" * 63 + ",") * 7 + "x" * 51,
    }
    return _request_of(fields, "web form" + "x" * 60, datetime(9999, 12, 31, tzinfo=UTC))


def _address_problem(raw: str, exc: InvalidAddress) -> str:
    if not raw.strip():
        return "Enter your email address."
    # "address 'x' must contain exactly one @": the reader knows what they typed.
    reason = re.match(r"^address (['\"]).*\1 (.+)$", str(exc), re.S)
    return f"Enter a valid email address: this one {reason.group(2) if reason else exc}."


def _form_mac(secret: str, stamp: str) -> str:
    # "subscribe-form|..." never begins a subscriber token's signed text: no confusion.
    return sign(secret, f"subscribe-form|{stamp}")


def form_token(secret: str, now: datetime) -> str:
    """A signed, dated, unique token for the subscribe form's hidden field (each is
    good for one sign-up: the web app remembers the ones used)."""
    stamp = f"{int(now.timestamp()):x}-{secrets.token_hex(8)}"
    return f"{stamp}.{_form_mac(secret, stamp)}"


def check_form_token(secret: str, token: str, now: datetime, ttl: timedelta = FORM_TTL) -> None:
    """Raise InvalidInput unless the token was issued by us within `ttl`."""
    stamp, _, mac = (token or "")[:100].partition(".")
    if not hmac.compare_digest(mac.encode(), _form_mac(secret, stamp).encode()):
        raise InvalidInput("This form could not be checked. Please send it again.")
    try:
        age = now.timestamp() - int(stamp.partition("-")[0], 16)
    except ValueError:
        raise InvalidInput("This form could not be checked. Please send it again.") from None
    if not -300 <= age <= ttl.total_seconds():
        raise InvalidInput("This form was open too long. Please check it and send it again.")


@lru_cache(maxsize=1)
def _zones() -> tuple[str, ...]:
    return tuple(sorted(z for z in available_timezones() if z.startswith(_REGIONS))) + ("UTC",)


def timezone_choices(current: str = "") -> list[str]:
    """The timezones a form offers: the regional IANA names, plus the reader's own."""
    zones = list(_zones())
    if current and current not in zones:
        zones.insert(0, current)
    return zones


def offered_sections(session: Session, now: datetime, current: str = "") -> list[str]:
    """The sections a reader can choose now, plus any they chose before."""
    found = set(store.known_sections(session, now - SECTIONS_LOOKBACK))
    return sorted(found | set(filter(None, current.split(","))))


def mask_address(email: str) -> str:
    """j***@example.com: enough for a reader to recognise, little for anyone else."""
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}***@{domain}"


# --- lifecycle ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """The email a sign-up calls for: `confirm` (click to confirm), `already` (a note to
    an active reader), or `none` (nothing: the same address moments ago, a mailbox over
    its limit, or one that bounced or complained). `request` is what the sign-up asked
    for; it travels in the confirmation link and is applied only when that is used."""

    kind: str
    subscriber_id: int
    email: str
    request: dict[str, str] = field(default_factory=dict)
    installation: str = ""  # the database's id, part of the sign-up email's Message-ID


# Addresses that bounced or complained get no mail from a web form, ever: a sign-up
# form must not be a way to mail a spam trap or a person who reported us.
NEVER_MAIL = ("bounced", "complained", "operator")
MAILBOX_WIDE = ("complained", "operator")


def _apply(subscriber: Subscriber, fields: dict[str, Any]) -> None:
    for key in ("name", "timezone", "morning", "evening", "sections"):
        setattr(subscriber, key, fields[key])


def _stamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%MZ")


def _request_of(fields: dict[str, Any], source: str, now: datetime) -> dict[str, str]:
    editions = editions_choice(fields["morning"], fields["evening"])
    return {
        "name": fields["name"],
        "timezone": fields["timezone"] or "",
        "editions": editions,
        "sections": fields["sections"],
        "source": source[:60],
        "at": str(int(now.timestamp() * 1000)),  # ms: an unsubscribe may come seconds later
    }


def request_subscription(
    session: Session,
    settings: Settings,
    fields: dict[str, Any],
    now: datetime,
    *,
    source: str = "web form",
) -> Notice:
    """Say which email a sign-up calls for; the caller's page is the same whatever the
    address's state, so a sign-up never reveals who is subscribed.

    Nothing the request asked for is stored: it travels signed in the confirmation link
    and takes effect when that link is used, so a stranger's second request for the same
    address can neither change the first nor put their text in anyone's mail. A new
    address is kept as `pending` with nothing personal; a reader who unsubscribed stays
    unsubscribed until they confirm. An active reader's choices are left alone (anyone
    can type any address); they get a note pointing at their preferences.
    """
    email = fields["email"]
    subscriber = store.find_subscriber(session, email)
    if subscriber is None:
        subscriber = _add_pending(session, email, now)
    if subscriber.status in NEVER_MAIL or _never_mail(session, email):
        return Notice("none", subscriber.id, subscriber.email)
    kind = "already" if subscriber.status == "active" else "confirm"
    last = subscriber.last_notice_at
    if last is not None and now - last < NOTICE_INTERVAL:
        kind = "none"  # the same address again within minutes: send nothing more
    else:
        subscriber.last_notice_at = now
    session.flush()
    request = _request_of(fields, source, now)
    return Notice(kind, subscriber.id, subscriber.email, request, store.installation_id(session))


def _never_mail(session: Session, email: str) -> bool:
    """Whether the address, or the mailbox it reaches (`trap+1@` for a `trap@` that
    complained), may get no sign-up email."""
    if suppression_reason(session, email) in NEVER_MAIL:
        return True
    # A bounce is about the exact address that bounced (a server may refuse `vic+news@`
    # and deliver to `vic@`); only complaints and operators speak for the whole mailbox.
    return suppression_reason(session, mailbox_of(email)) in MAILBOX_WIDE


def forget_notice(session: Session, notice: Notice) -> None:
    """The sign-up email could not be sent: let the next request for it send one."""
    store.get_subscriber(session, notice.subscriber_id).last_notice_at = None


def editions_label(fields: dict[str, Any]) -> str:
    if fields["morning"] and fields["evening"]:
        return "the morning and evening editions"
    return "the morning edition" if fields["morning"] else "the evening edition"


def _add_pending(session: Session, email: str, now: datetime) -> Subscriber:
    try:
        with session.begin_nested():
            return store.add_subscriber(session, email, now, status="pending")
    except (IntegrityError, Duplicate):
        # Two sign-ups for one address at once: the other request inserted it first.
        found = store.find_subscriber(session, email)
        if found is None:
            raise
        return found


def _issued(request: dict[str, str]) -> datetime:
    try:
        return datetime.fromtimestamp(int(request.get("at", "")) / 1000, UTC)
    except ValueError:
        raise InvalidToken("this link is malformed") from None


def reader(session: Session, subscriber_id: int) -> Subscriber:
    """The reader a link names; NotFound once they were erased (their old links, and
    any confirmation link still in a mailbox, must not bring their data back)."""
    subscriber = store.get_subscriber(session, subscriber_id)
    if subscriber.status == "erased":
        raise NotFound(f"no subscriber with id {subscriber_id}")
    return subscriber


def check_confirmable(session: Session, subscriber_id: int, request: dict[str, str]) -> Subscriber:
    """The reader a confirmation link is for, if the link may still be used: not after
    the address bounced or complained, nor after an unsubscribe later than the link."""
    subscriber = reader(session, subscriber_id)
    issued = _issued(request)
    left_after = subscriber.unsubscribed_at is not None and subscriber.unsubscribed_at > issued
    never = suppression_reason(session, subscriber.email) in NEVER_MAIL
    if never or subscriber.status in NEVER_MAIL or (subscriber.status in LEFT and left_after):
        raise InvalidToken(
            "this confirmation link is no longer valid: the address was unsubscribed "
            "after it was sent"
        )
    return subscriber


def requested_fields(subscriber: Subscriber, request: dict[str, str]) -> dict[str, Any]:
    """The column values a confirmation link asks for (checked again: links live days)."""
    try:
        return subscriber_fields(
            subscriber.email,
            request.get("name", ""),
            request.get("timezone") or None,
            request.get("editions", "both"),
            request.get("sections", ""),
        )
    except InvalidInput:
        raise InvalidToken("this link is malformed") from None


def confirm(
    session: Session, subscriber_id: int, request: dict[str, str], now: datetime
) -> Subscriber:
    """Make a sign-up active with what its own link asked for. Confirming is fresh
    consent, so a suppression from an earlier unsubscribe is lifted. A reader who is
    already active keeps their choices; confirming twice changes nothing."""
    subscriber = check_confirmable(session, subscriber_id, request)
    if subscriber.status == "active":
        return subscriber
    _apply(subscriber, requested_fields(subscriber, request))
    subscriber.status = "active"
    subscriber.confirmed_at = now
    source = request.get("source", "web form")
    subscriber.consent = (
        f"{source}, requested {_stamp(_issued(request))}, confirmed {_stamp(now)}"
    )[-200:]
    store.lift_suppression(session, subscriber.email)
    return subscriber


def unsubscribe(session: Session, subscriber_id: int, now: datetime) -> Subscriber:
    """Stop all mail to a reader at once, including an edition being sent right now.

    Suppresses the address (kept hashed) and every delivery not yet handed to a sender;
    those in a sender's hands are caught when it re-reads statuses. Idempotent.
    """
    return leave(session, subscriber_id, "unsubscribed", now)


def leave(session: Session, subscriber_id: int, status: str, now: datetime) -> Subscriber:
    """A reader leaves for good (unsubscribed, bounced or complained): see unsubscribe."""
    subscriber = reader(session, subscriber_id)
    if subscriber.status not in LEFT:
        store.set_status(session, subscriber, status, now)
    else:
        store.suppress(session, subscriber.email, subscriber.status, now)
    if subscriber.status in MAILBOX_WIDE:
        # A complaint is about the mailbox: its +tag and dotted variants get no sign-up
        # email either. A bounce suppresses only the exact address that bounced.
        store.suppress(session, mailbox_of(subscriber.email), subscriber.status, now)
    reason = f"subscriber is {subscriber.status}"
    for edition_id in sorted(store.suppress_open_deliveries(session, subscriber.id, reason)):
        store.update_edition_status(session, edition_id)
    return subscriber


def update_preferences(session: Session, subscriber_id: int, fields: dict[str, Any]) -> Subscriber:
    """Change a current reader's editions, sections, timezone and name."""
    subscriber = reader(session, subscriber_id)
    if subscriber.status in LEFT:
        raise InvalidInput("this address is unsubscribed; subscribe again to get editions")
    _apply(subscriber, fields)
    session.flush()
    return subscriber


def first_edition(
    settings: Settings, subscriber: Subscriber, now: datetime
) -> tuple[str, datetime] | None:
    """The slot and local time of the next edition this reader will get."""
    timezone = subscriber.timezone or settings.default_timezone
    choices = (("morning", subscriber.morning), ("evening", subscriber.evening))
    wanted = [slot for slot, on in choices if on]
    today = local_day(now, timezone)
    upcoming = sorted(
        (send_at(settings.send_time(slot), today + timedelta(days=d), timezone), slot)
        for d in range(3)
        for slot in wanted
    )
    for at, slot in upcoming:
        if at > now:
            return slot, at.astimezone(ZoneInfo(timezone))
    return None


def edition_html(
    session: Session, settings: Settings, edition_id: int, subscriber_id: int, now: datetime
) -> str:
    """The edition this reader got, as a page with nothing personal in it.

    Whoever holds a "view in browser" link (a forwarded email) sees this page, so it
    carries no name and no account links: those point at pages that ask for the links
    in the reader's own email. The link works for `view_ttl_days` after the edition.
    """
    reader(session, subscriber_id)  # an erased reader's links open nothing
    delivery = store.find_delivery(session, edition_id, subscriber_id)
    if delivery is None or delivery.variant_id is None:
        raise NotFound("this edition was not sent to you")
    edition = store.get_edition(session, edition_id)
    if now - edition.send_at > timedelta(days=settings.view_ttl_days):
        raise InvalidToken("this link has expired")
    variant = store.get_variant(session, delivery.variant_id)
    return pages.public_html(settings, variant, session=session, now=now)


# --- the sign-up email -------------------------------------------------------------------


def notice_links(settings: Settings, notice: Notice, now: datetime) -> dict[str, str]:
    expires = now + timedelta(hours=settings.confirm_ttl_hours)
    confirm = seal(settings.secret_key, "confirm", notice.subscriber_id, expires, notice.request)
    return {
        **sending.account_links(settings, notice.subscriber_id),
        "confirm_url": f"{settings.base_url}/confirm/{confirm}",
    }


def compose_notice(settings: Settings, notice: Notice, now: datetime) -> tuple[bytes, str]:
    """The sign-up email (text and HTML, sender identified) and its Message-ID."""
    links = notice_links(settings, notice, now)
    subject = (
        f"Confirm your subscription to {settings.from_name}"
        if notice.kind == "confirm"
        else f"You are already subscribed to {settings.from_name}"
    )
    context = {
        "kind": notice.kind,
        "subject": subject,
        "sender_name": settings.from_name,
        "postal_address": settings.postal_address,
        "ttl_hours": settings.confirm_ttl_hours,
        **links,
    }
    html_env, text_env = environment(settings.templates_dir)
    envelope = Envelope(
        to_address=notice.email,
        to_name="",  # nothing the requester typed goes into a sign-up email
        message_id=single_message_id("signup", notice.installation, settings.sender_domain),
        unsubscribe_url=links["unsubscribe_url"],
        unsubscribe_token=links["unsubscribe_token"],
        text=text_env.get_template("email/signup.txt").render(context),
        html=html_env.get_template("email/signup.html").render(context),
    )
    sender = sending.sender_of(settings)
    message = build_message(sender, subject, now, envelope, campaign="signup", edition=notice.kind)
    return message, envelope.message_id


def send_notice(settings: Settings, transport: Transport, notice: Notice, now: datetime) -> str:
    """Send the sign-up email; SendError if the transport could not. Returns its Message-ID
    ("" when the notice calls for no email)."""
    if notice.kind == "none":
        return ""
    message, message_id = compose_notice(settings, notice, now)
    with transport:
        # The bounce address (VERP, edition 0): a sign-up email that bounces marks nobody
        # active, but it comes back to digest rather than to the From mailbox.
        sender = envelope_sender(settings, 0, notice.subscriber_id)
        transport.send(sender, notice.email, message, message_id)
    return message_id
