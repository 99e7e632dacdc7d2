"""The API's request and response bodies as pydantic models: they check what comes in
and, through digest/web/api/spec.py, are the OpenAPI document's schemas."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from digest.store.base import MAX_ID

ReaderStatus = Literal["pending", "active", "unsubscribed", "bounced", "complained", "erased"]
Editions = Literal["both", "morning", "evening"]
Slot = Literal["morning", "evening"]


class In(BaseModel):
    """A request body: exactly these fields, with these JSON types (no coercion)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Query(BaseModel):
    """Query parameters arrive as text; unknown ones are ignored."""

    model_config = ConfigDict(extra="ignore")


# --- readers ---------------------------------------------------------------------------


class Reader(BaseModel):
    id: int
    email: str
    name: str
    status: str
    editions: str = Field(description="both, morning, evening or none")
    sections: list[str] = Field(description="empty: every section")
    timezone: str | None = Field(description="null: the list's default timezone")
    consent: str
    created_at: datetime
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None


class ReaderPage(BaseModel):
    items: list[Reader]
    total: int = Field(description="how many readers match the filters (on every page)")
    next_after: int | None = Field(
        description="pass as `after` (with the same filters and order) for the next page; "
        "null on the last page"
    )


_STATUS = "(pending|active|unsubscribed|bounced|complained|erased)"
StatusList = Annotated[str, Field(pattern=f"^{_STATUS}(,{_STATUS})*$", max_length=80)]
ReaderSource = Literal["web form", "cli", "import", "console import", "api"]
Day = Annotated[
    str, Field(pattern="^[0-9]{4}-[0-9]{2}-[0-9]{2}$", json_schema_extra={"format": "date"})
]


class ReaderQuery(Query):
    """The console's reader filters, under the names of its query string (a filtered
    console URL's query works here too), read by the same code: digest/store/
    readers_query.py. The API's own defaults: `sort=id`, `order=asc`."""

    status: list[StatusList] = Field(
        default_factory=list,
        max_length=12,
        description="any of these statuses: repeat the parameter or separate with commas; "
        "erased readers are listed only when asked for",
    )
    email: str | None = Field(None, max_length=320, description="exactly this address")
    q: str | None = Field(
        None, max_length=320, description="text in the address or the name, any case"
    )
    timezone: str | None = Field(
        None,
        max_length=64,
        pattern="^[A-Za-z0-9/_+-]*$",
        description="this IANA timezone, or `default` for readers on the list's default",
    )
    editions: Editions | None = Field(
        None, description="readers who get the morning, the evening, or both"
    )
    edition: Slot | None = Field(
        None,
        json_schema_extra={"deprecated": True},  # a document note; no warning when read
        description="the same as `editions` with morning or evening",
    )
    section: str | None = Field(
        None, max_length=64, description="readers who get this section (all-section readers do)"
    )
    source: ReaderSource | None = Field(
        None, description="how they signed up: the start of their consent record"
    )
    signed_up_from: Day | None = Field(None, description="signed up on or after this day (UTC)")
    signed_up_to: Day | None = Field(None, description="signed up on or before this day (UTC)")
    last_delivery: Literal["never", "7d", "30d", "over30d"] | None = Field(
        None,
        description="never sent anything, sent something in the last 7 or 30 days, or "
        "nothing for 30 days",
    )
    min_failures: int | None = Field(
        None, ge=0, le=999_999, description="at least this many failed deliveries"
    )
    sort: Literal["id", "created", "email"] = Field(
        "id", description="by id, sign-up time or address"
    )
    order: Literal["asc", "desc"] = Field("asc", description="asc: smallest first")
    after: int = Field(
        0,
        ge=0,
        le=MAX_ID,
        description="keyset cursor: the `next_after` of the page before; 0: the first page",
    )
    limit: int = Field(100, ge=1, le=500)


class ReaderCreate(In):
    email: str = Field(min_length=1, max_length=320)
    name: str = Field("", max_length=200)
    timezone: str | None = Field(None, max_length=64)
    editions: Editions = "both"
    sections: list[str] = Field(default_factory=list, max_length=50)
    confirmed: bool = Field(
        False,
        description="true: active at once (the publisher has the reader's consent); false: "
        "a pending reader who gets the opt-in email",
    )
    source: str = Field("api", max_length=60, description="where the consent came from")


class ReaderUpdate(In):
    name: str | None = Field(None, max_length=200)
    timezone: str | None = Field(None, max_length=64)
    editions: Editions | None = None
    sections: list[str] | None = Field(None, max_length=50)


class Signup(In):
    email: str = Field(min_length=1, max_length=320)
    name: str = Field("", max_length=200)
    timezone: str | None = Field(None, max_length=64)
    editions: Editions = "both"
    sections: list[str] = Field(default_factory=list, max_length=50)
    source: str = Field("api sign-up", max_length=60)


class Accepted(BaseModel):
    status: Literal["accepted"]
    detail: str
    reader_id: int | None = None


class ReaderExport(BaseModel):
    email: str
    name: str
    status: str
    editions: str
    sections: str
    timezone: str
    consent: str
    created_at: str | None
    confirmed_at: str | None
    unsubscribed_at: str | None
    deliveries: list[dict[str, Any]]


class ImportQuery(Query):
    confirmed: bool = Field(False, description="import as active readers (you hold consent)")


class Job(BaseModel):
    id: int
    kind: str
    status: Literal["queued", "running", "done", "failed"]
    created_at: datetime
    finished_at: datetime | None
    report: dict[str, Any] = Field(
        description="added, existing, suppressed, and errors: one {line, error} per row "
        "not imported"
    )


# --- articles and feeds ----------------------------------------------------------------


class ArticleIn(In):
    """One article, with the fields of `digest articles import`."""

    title: str = Field(max_length=2000)
    url: str = Field(max_length=4000)
    guid: str | None = Field(None, max_length=1000, description="pushing it again adds nothing")
    summary: str | None = Field(None, max_length=100_000)
    section: str | None = Field(None, max_length=64)
    published_at: str | None = Field(None, description="ISO 8601 with a UTC offset")
    priority: int | None = Field(None, ge=-(2**31) + 1, le=2**31 - 1)
    image_url: str | None = Field(None, max_length=4000)


class ArticlesPush(In):
    articles: list[ArticleIn] = Field(min_length=1, max_length=500)


class RecordError(BaseModel):
    index: int
    error: str


class PushResult(BaseModel):
    added: int
    existing: int
    errors: list[RecordError]


class Article(BaseModel):
    id: int
    guid: str | None
    url: str
    title: str
    section: str
    priority: int
    hidden: bool
    published_at: datetime
    seen_at: datetime


class ArticleList(BaseModel):
    items: list[Article]


class ArticleQuery(Query):
    limit: int = Field(50, ge=1, le=200)


class ArticleUpdate(In):
    hidden: bool | None = Field(None, description="true: left out of every coming edition")
    priority: int | None = Field(None, ge=-1000, le=1000, description="higher comes first")


class Feed(BaseModel):
    id: int
    url: str
    section: str
    title: str
    paused: bool
    last_polled_at: datetime | None
    last_ok_at: datetime | None
    last_error: str | None
    error_count: int


class FeedList(BaseModel):
    items: list[Feed]


class FeedIn(In):
    url: str = Field(min_length=1, max_length=2000, description="an http(s) RSS or Atom URL")
    section: str = Field("news", min_length=1, max_length=64)


class FeedUpdate(In):
    paused: bool


class PollResult(BaseModel):
    feed: Feed
    new: int
    seen: int
    skipped: list[str]
    error: str | None


# --- editions --------------------------------------------------------------------------


class Edition(BaseModel):
    id: int
    slot: str
    local_day: date
    timezone: str
    status: str
    send_at: datetime
    note: str
    counts: dict[str, int] = Field(description="deliveries by status")


class EditionList(BaseModel):
    items: list[Edition]


class EditionQuery(Query):
    limit: int = Field(50, ge=1, le=200)
    offset: int = Field(0, ge=0, le=1_000_000)


class DeliveryError(BaseModel):
    status: str
    error: str
    count: int


class Variant(BaseModel):
    sections: str = Field(description="the section choice it was rendered for; '' is all")
    subject: str
    article_count: int


class EditionDetail(Edition):
    window_start: datetime
    window_end: datetime
    articles: list[Article]
    errors: list[DeliveryError]
    variants: list[Variant]


class PreviewQuery(Query):
    sections: str = Field("", max_length=500, description="a variant's section choice")


class PlanIn(In):
    slot: Slot
    timezone: str | None = Field(None, max_length=64, description="default: the list's")
    day: date | None = Field(None, description="local day; default: today there")
    force: bool = Field(False, description="allow a day still ahead")


class PlanOut(BaseModel):
    edition_id: int
    cohort: str
    status: str
    created: bool
    queued: int
    note: str
    sending: str


class RetryIn(In):
    statuses: list[Literal["failed", "deferred"]] = Field(min_length=1, max_length=2)


class RetryOut(BaseModel):
    edition_id: int
    requeued: int
    sending: str


# --- status ----------------------------------------------------------------------------


class NextSend(BaseModel):
    slot: str
    timezone: str
    local: datetime
    utc: datetime
    readers: int
    due_now: bool


class Progress(BaseModel):
    edition_id: int
    slot: str
    local_day: date
    timezone: str
    total: int
    done: int
    sent: int
    deferred: int
    failed: int
    suppressed: int
    waiting: int
    per_second: float


class FeedHealth(BaseModel):
    id: int
    url: str
    paused: bool
    last_ok_at: datetime | None
    last_error: str | None


class Status(BaseModel):
    next_sends: list[NextSend]
    sending: list[Progress]
    last_24h: dict[str, int] = Field(description="deliveries of the last 24 hours by status")
    feeds: list[FeedHealth]
    readers: dict[str, int] = Field(description="readers by status")


class Health(BaseModel):
    status: Literal["ok", "error"]
    database: Literal["ok", "unreachable"]
