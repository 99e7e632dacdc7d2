"""SQLAlchemy 2.0 typed models: the database is the source of truth."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SUBSCRIBER_STATUSES = ("pending", "active", "unsubscribed", "bounced", "complained")
# `cancelled`: the edition was cancelled before this reader's message went out.
DELIVERY_STATUSES = (
    "queued",
    "sending",
    "sent",
    "deferred",
    "failed",
    "suppressed",
    "cancelled",
)
# `superseded`: an edition of the timezone covered its window first (no mail);
# `paused` and `cancelled`: an operator stopped it while it was being sent.
EDITION_STATUSES = (
    "planned",
    "sending",
    "done",
    "empty",
    "missed",
    "superseded",
    "paused",
    "cancelled",
)


# Plain values the store and the edition code both speak: the store takes and returns
# them, the edition code reasons about them. They live here, below both.


@dataclass(frozen=True)
class Cohort:
    """Everyone in one timezone who gets the same slot on the same local day."""

    slot: str
    local_day: date
    timezone: str

    def __str__(self) -> str:
        return f"{self.slot} {self.local_day.isoformat()} {self.timezone}"


@dataclass(frozen=True)
class Candidate:
    id: int
    section: str
    priority: int
    published_at: datetime
    seen_at: datetime


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, hands back aware UTC, on SQLite and PostgreSQL alike."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class Subscriber(Base):
    __tablename__ = "subscriber"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    timezone: Mapped[str | None] = mapped_column(String(64))
    morning: Mapped[bool] = mapped_column(Boolean, default=True)
    evening: Mapped[bool] = mapped_column(Boolean, default=True)
    # Sorted, comma-joined section names; "" means every section. Kept as one string
    # so subscribers with the same choice group together for rendering.
    sections: Mapped[str] = mapped_column(String(500), default="")
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    consent: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the last sign-up email went out: anyone can type any address into the form,
    # so repeats within a few minutes send nothing (the page looks the same).
    last_notice_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        # The console's readers list pages by (column, id) keys (digest/store/readers_query).
        Index("ix_subscriber_created_id", "created_at", "id"),
        Index("ix_subscriber_status_id", "status", "id"),
        Index("ix_subscriber_timezone", "timezone"),
    )


class Suppression(Base):
    """Addresses that must never be mailed again, kept as a hash of the address."""

    __tablename__ = "suppression"

    email_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Feed(Base):
    __tablename__ = "feed"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2000), unique=True)
    section: Mapped[str] = mapped_column(String(64), default="news")
    title: Mapped[str] = mapped_column(String(500), default="")
    etag: Mapped[str | None] = mapped_column(String(500))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_ok_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    # A paused feed is not polled; its articles already stored still count.
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Article(Base):
    __tablename__ = "article"

    id: Mapped[int] = mapped_column(primary_key=True)
    feed_id: Mapped[int | None] = mapped_column(ForeignKey("feed.id", ondelete="SET NULL"))
    guid: Mapped[str | None] = mapped_column(String(1000), unique=True)
    url: Mapped[str] = mapped_column(String(2000), unique=True)
    title: Mapped[str] = mapped_column(String(500))
    summary_html: Mapped[str] = mapped_column(Text, default="")
    image_url: Mapped[str | None] = mapped_column(String(2000))
    section: Mapped[str] = mapped_column(String(64), default="news")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # Hidden by an operator: never selected for an edition from then on.
    hidden: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Operator(Base):
    """Someone who may use the console; the password is kept only as a slow hash."""

    __tablename__ = "operator"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Part of every console session: bumping it (sign-out, a new password, removal)
    # ends every session of this operator, copies of the cookie included.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class AuditEntry(Base):
    """One operator action: who did what, when (the console shows these)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    operator: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")


class Edition(Base):
    __tablename__ = "edition"
    __table_args__ = (UniqueConstraint("slot", "local_day", "timezone", name="uq_edition_cohort"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    slot: Mapped[str] = mapped_column(String(16))
    local_day: Mapped[date] = mapped_column(Date)
    timezone: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="planned")
    send_at: Mapped[datetime] = mapped_column(UTCDateTime)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    note: Mapped[str] = mapped_column(Text, default="")
    # Taken off the public archive by an operator (the readers who got it keep it).
    unpublished: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # While its readers are still being queued, a chunk at a time and sent as they are
    # (digest.editions.queueing.queue_more): the last subscriber id queued so far.
    # NULL once every reader has a delivery row; only then can the edition be done.
    queue_after: Mapped[int | None] = mapped_column(Integer, default=None)


class EditionArticle(Base):
    """The snapshot of an edition's articles, in the order they are shown."""

    __tablename__ = "edition_article"

    edition_id: Mapped[int] = mapped_column(
        ForeignKey("edition.id", ondelete="CASCADE"), primary_key=True
    )
    article_id: Mapped[int] = mapped_column(ForeignKey("article.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)


class EditionVariant(Base):
    """One pre-inlined rendering of an edition per distinct choice of sections."""

    __tablename__ = "edition_variant"
    __table_args__ = (UniqueConstraint("edition_id", "sections", name="uq_variant_sections"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    edition_id: Mapped[int] = mapped_column(ForeignKey("edition.id", ondelete="CASCADE"))
    sections: Mapped[str] = mapped_column(String(500))
    subject: Mapped[str] = mapped_column(String(300))
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    article_count: Mapped[int] = mapped_column(Integer)
    # The random value in this rendering's slot markers (digest.editions.render.SlotMarks): feed
    # text never sees it, so no feed can write a marker.
    slot_nonce: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # DIGEST_CLICK_TRACKING when it was rendered: "reader" renderings carry each reader's
    # part of the click links, so only their editions count towards the sunset.
    click_tracking: Mapped[str] = mapped_column(String(16), default="off", server_default="off")


class Delivery(Base):
    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("edition_id", "subscriber_id", name="uq_delivery_once"),
        Index("ix_delivery_edition_status", "edition_id", "status"),
        Index("ix_delivery_status_lease", "status", "lease_until"),
        Index("ix_delivery_subscriber_sent", "subscriber_id", "sent_at"),
        # An edition's first and last message at once (monitoring: lag, stalls, rate).
        Index("ix_delivery_edition_sent", "edition_id", "sent_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    edition_id: Mapped[int] = mapped_column(ForeignKey("edition.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscriber.id", ondelete="CASCADE"))
    variant_id: Mapped[int | None] = mapped_column(ForeignKey("edition_variant.id"))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(300))
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiToken(Base):
    """A key for the JSON API (/api/v1), kept only as a SHA-256 hash of the token: the
    token itself is shown once, when it is made. `scope` is read, write or subscribe."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(60), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The token's first characters, so an operator can tell which one a client holds.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiJob(Base):
    """A bulk job started through the API (a reader import) and its report."""

    __tablename__ = "api_job"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    token_name: Mapped[str] = mapped_column(String(60))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The report as JSON text: counts and one entry per row that was not imported.
    report: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")


class ReturnedMail(Base):
    """One bounce, complaint or unsubscribe that came back for a reader, by any path
    (the MTA pipe, an IMAP mailbox, an ESP's webhook). Soft bounces are counted here."""

    __tablename__ = "returned_mail"
    __table_args__ = (Index("ix_returned_mail_subscriber_at", "subscriber_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscriber.id", ondelete="CASCADE"))
    edition_id: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # hard, soft, complaint, unsubscribe
    source: Mapped[str] = mapped_column(String(16))  # pipe, imap, ses, sendgrid, ...
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")


class WebhookSeen(Base):
    """A signed webhook delivery already acted on (SNS MessageId, Mailgun token, ...):
    the same one again is a replay."""

    __tablename__ = "webhook_seen"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class Heartbeat(Base):
    """The last sign of life of beat or of one worker, written every few seconds."""

    __tablename__ = "heartbeat"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # "beat" or "worker"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # host or node name
    pid: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Set by a clean shutdown; a process that was killed just stops writing.
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AlertState(Base):
    """One CRITICAL condition the alert mail knows about, and what it last said of it."""

    __tablename__ = "alert_state"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    summary: Mapped[str] = mapped_column(Text, default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # What the last mail about it said (raised or not) and when it went.
    notified: Mapped[bool] = mapped_column(Boolean, default=False)
    mailed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ClickCount(Base):
    """Clicks on one article of one edition in one hour: nothing about who clicked.

    `machine` counts what the scanner filter set aside (HEAD requests, known scanner
    agents, clicks right after sending, one client fetching many links at once).
    """

    __tablename__ = "click_count"

    edition_id: Mapped[int] = mapped_column(
        ForeignKey("edition.id", ondelete="CASCADE"), primary_key=True
    )
    article_id: Mapped[int] = mapped_column(
        ForeignKey("article.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    human: Mapped[int] = mapped_column(Integer, default=0)
    machine: Mapped[int] = mapped_column(Integer, default=0)


class OpenCount(Base):
    """Tracking-pixel fetches of one edition in one hour (DIGEST_OPEN_TRACKING)."""

    __tablename__ = "open_count"

    edition_id: Mapped[int] = mapped_column(
        ForeignKey("edition.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    human: Mapped[int] = mapped_column(Integer, default=0)
    machine: Mapped[int] = mapped_column(Integer, default=0)


class ReaderClick(Base):
    """One reader's human click (DIGEST_CLICK_TRACKING=reader only): deleted when the
    reader is erased, and after DIGEST_CLICK_RETENTION_DAYS."""

    __tablename__ = "reader_click"
    __table_args__ = (Index("ix_reader_click_subscriber_at", "subscriber_id", "clicked_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscriber.id", ondelete="CASCADE"))
    edition_id: Mapped[int] = mapped_column(ForeignKey("edition.id", ondelete="CASCADE"))
    article_id: Mapped[int] = mapped_column(ForeignKey("article.id", ondelete="CASCADE"))
    clicked_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class SunsetNotice(Base):
    """A "still want this?" email sent to a reader who stopped clicking, and its end:
    kept (they answered or clicked) or ended (unsubscribed as inactive)."""

    __tablename__ = "sunset_notice"

    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscriber.id", ondelete="CASCADE"), primary_key=True
    )
    asked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    kept_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)


class Installation(Base):
    """This database's installation id (one row, made by migration 0011): a random part
    in every Message-ID, so databases that share a secret key never mint the same one."""

    __tablename__ = "installation"

    id: Mapped[int] = mapped_column(primary_key=True)  # always 1
    installation_id: Mapped[str] = mapped_column(String(16))
