"""One settings object, read from DIGEST_* environment variables at the edges."""

from __future__ import annotations

import os
import re
import secrets
import ssl
import threading
from dataclasses import dataclass, field, replace
from datetime import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from digest.errors import ConfigError

SLOTS = ("morning", "evening")
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SMTPConfig:
    """Where and how to reach the SMTP relay; the password never shows in repr."""

    host: str
    port: int
    tls: str  # "none", "starttls" or "implicit"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    # The whole exchange for one message (connect, EHLO, MAIL, RCPT, DATA) may take this
    # long, whatever the server does: a relay that drips a byte at a time cannot hold a lane.
    deadline: float = 20.0
    # The relay's limits, shared by every worker (digest/mail/ratelimit.py): messages per
    # second (0: none), how many may go at once (0: one second's worth), and optional
    # caps per clock hour and per UTC day. `weight`: its share among several relays.
    rate: float = 0.0
    burst: float = 0.0
    per_hour: int = 0
    per_day: int = 0
    weight: float = 1.0

    @property
    def name(self) -> str:
        """host:port, what logs and the rate limiter's keys call this relay."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    """Everything digest needs to know about its surroundings."""

    data_dir: Path
    database_url: str = field(repr=False)
    outbox_dir: Path
    templates_dir: Path
    secret_key: str = field(repr=False)
    # How long `digest init` waits for the database to take connections (compose start-up).
    database_wait_seconds: int = 60
    smtp: SMTPConfig | None = None  # the first (or only) relay
    smtp_relays: tuple[SMTPConfig, ...] = ()  # every relay, when there are several
    redis_url: str | None = field(default=None, repr=False)
    base_url: str = "http://localhost:8000"
    from_address: str = "digest@example.com"
    from_name: str = "The Daily Digest"
    postal_address: str = "1 Example Street, Sydney NSW 2000, Australia"
    list_id: str = "daily.digest.example.com"
    unsubscribe_mailto: str = "unsubscribe@example.com"
    default_timezone: str = "Australia/Sydney"
    send_times: dict[str, time] = field(
        default_factory=lambda: {"morning": time(6, 0), "evening": time(17, 0)}
    )
    max_articles: int = 12
    first_lookback_hours: int = 24
    late_grace_hours: int = 24
    catchup_minutes: int = 120
    batch_size: int = 500
    smtp_connections: int = 4
    lease_seconds: int = 600
    max_attempts: int = 5
    retry_base_seconds: int = 60
    retry_max_seconds: int = 3600
    allow_private_feeds: bool = False
    feed_timeout: float = 15.0
    feed_max_bytes: int = 5_000_000
    confirm_ttl_hours: int = 72
    # Mail that comes back (issue 8): the envelope sender (VERP tags are added to it),
    # where replies go, the sender part of Feedback-ID, and optional DKIM signing.
    bounce_address: str = ""
    reply_to: str = ""
    feedback_id_sender: str = "digest"
    dkim_selector: str = ""
    dkim_domain: str = ""
    dkim_key_file: Path | None = None
    view_ttl_days: int = 30
    # Past editions, without any personal part, at /archive (digest/editions/archive.py).
    public_archive: bool = False
    # The sign-up form's limits (digest/readers/signup_limits.py): per client address, per
    # recipient mailbox, and a global hourly budget of confirmation emails.
    signup_client_limit: str = "10 per hour;30 per day"
    signup_mailbox_limit: str = "3 per day"
    signup_mails_per_hour: int = 300
    # Reverse proxies in front of the web app whose X-Forwarded-For is to be believed.
    trusted_proxies: int = 0
    # The JSON API (digest/web/api/): requests per token, the header in which a
    # subscribe token's caller names its end client (for the sign-up limits), and the
    # browser origins that may call /api/v1/signups (CORS; none by default).
    api_rate_limit: str = "600 per minute"
    api_client_header: str = ""
    api_cors_origins: tuple[str, ...] = ()
    # Celery (workers/): the queue every digest task goes through, how long Redis waits
    # for an ack before handing a task to another worker, how often one task may come
    # back after its worker was lost, and how often beat runs the periodic tasks.
    task_queue: str = "digest"
    visibility_timeout: int = 7200
    task_max_redeliveries: int = 3
    dispatch_every_seconds: int = 60
    ingest_every_seconds: int = 300
    sweep_every_seconds: int = 15
    # Send tasks keep retrying while the database is unreachable for this long, apart
    # from a delivery's own DIGEST_MAX_ATTEMPTS.
    outage_seconds: int = 300
    # A claim on delivery rows lasts this long unless the worker holding it renews it
    # (every third of it); rows of a stopped worker go back within about this much.
    claim_seconds: int = 45
    # Send results are written in group commits: when this many wait, or when the
    # oldest has waited this long (seconds). A crash resends at most the messages in
    # flight plus one group per running batch.
    record_group: int = 32
    record_window: float = 0.05
    # Returned mail (digest/readers/returned.py): this many soft bounces within this many
    # days, with no successful delivery after them, suppress the reader.
    soft_bounce_limit: int = 3
    soft_bounce_days: int = 14
    # ESP webhooks (digest/readers/webhooks/): each route answers 404 until its setting is set.
    ses_topic_arns: tuple[str, ...] = ()
    sendgrid_webhook_key: str = field(default="", repr=False)
    mailgun_signing_key: str = field(default="", repr=False)
    postmark_webhook_auth: str = field(default="", repr=False)
    # A bounce mailbox read over IMAP by beat (digest/readers/mailbox.py), and how often.
    inbound_imap_url: str = field(default="", repr=False)
    inbound_imap_every_seconds: int = 300
    # Monitoring (digest/operations/health.py): when beat and a worker count as down
    # (their heartbeats are older than this), how late a due cohort or a stalled edition
    # turns CRITICAL, and the WARNING thresholds.
    beat_stale_seconds: int = 180
    worker_stale_seconds: int = 120
    stall_seconds: int = 300
    failure_warn_percent: int = 5
    deferred_warn: int = 100
    feed_warn_hours: int = 6
    # Alert mail: who gets one message per new CRITICAL condition (and when it clears),
    # and at most how many conditions are mailed per hour.
    alert_to: tuple[str, ...] = ()
    alert_per_hour: int = 10
    # /metrics of the web app is served only with a token (Bearer, or basic auth's password).
    metrics_token: str = field(default="", repr=False)
    # Click counts (digest/editions/clicks.py): off, aggregate (per edition, article and
    # hour, nothing about the reader) or reader (also who clicked, for the sunset).
    click_tracking: str = "off"
    click_retention_days: int = 90
    # Clicks this soon after an edition's first message are a mail filter's scan.
    scanner_window_seconds: int = 120
    open_tracking: bool = False
    rank_by_clicks: bool = False
    # The sunset (reader mode only): readers with no click in their last N editions get
    # one "still want this?" email; no answer in D days unsubscribes them. 0: off.
    sunset_editions: int = 0
    sunset_days: int = 14

    @property
    def database_url_safe(self) -> str:
        """The database URL with any password masked, for logs."""
        parts = urlsplit(self.database_url)
        if parts.password:
            return self.database_url.replace(f":{parts.password}@", ":***@", 1)
        return self.database_url

    @property
    def sender_domain(self) -> str:
        return self.from_address.rpartition("@")[2] or "localhost"

    def send_time(self, slot: str) -> time:
        if slot not in self.send_times:
            raise ConfigError(f"unknown slot {slot!r}; expected one of {', '.join(SLOTS)}")
        return self.send_times[slot]

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests and the CLI use it)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def parse_smtp_url(url: str, defaults: dict[str, str] | None = None) -> SMTPConfig:
    """smtp://user:pass@host:587?starttls=1, smtps://host:465 or smtp://host:25; the
    query may add timeout=, deadline=, rate=, burst=, per_hour=, per_day=, weight=
    (`defaults` gives those the URL leaves out)."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError(
            f"DIGEST_SMTP_URL must look like smtp://host:port, got scheme {parts.scheme!r}"
        )
    query = {**(defaults or {})}
    query.update(dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p))

    def number(name: str, default: float) -> float:
        try:
            value = float(query.get(name, default))
        except ValueError:
            raise ConfigError(f"SMTP URL {name}= must be a number, got {query[name]!r}") from None
        if value < 0:
            raise ConfigError(f"SMTP URL {name}= must not be negative, got {value:g}")
        return value

    if parts.scheme == "smtps":
        tls = "implicit"
    elif query.get("starttls", "").lower() in ("1", "true", "yes"):
        tls = "starttls"
    else:
        tls = "none"
    default_port = 465 if tls == "implicit" else 587 if tls == "starttls" else 25
    return SMTPConfig(
        host=parts.hostname,
        port=parts.port or default_port,
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        timeout=number("timeout", 30),
        deadline=number("deadline", 20),
        rate=number("rate", 0),
        burst=number("burst", 0),
        per_hour=int(number("per_hour", 0)),
        per_day=int(number("per_day", 0)),
        weight=number("weight", 1),
    )


def smtp_relays(env: dict[str, str]) -> tuple[SMTPConfig, ...]:
    """Every relay configured: DIGEST_SMTP_URLS (comma separated), else DIGEST_SMTP_URL_1,
    _2 ..., else DIGEST_SMTP_URL. DIGEST_SMTP_RATE, _BURST, _PER_HOUR and _PER_DAY apply
    to each relay whose URL does not say otherwise."""
    if env.get("DIGEST_SMTP_URLS"):
        urls = [u.strip() for u in env["DIGEST_SMTP_URLS"].split(",") if u.strip()]
    else:
        urls = []
        while env.get(f"DIGEST_SMTP_URL_{len(urls) + 1}"):
            urls.append(env[f"DIGEST_SMTP_URL_{len(urls) + 1}"])
        if not urls and env.get("DIGEST_SMTP_URL"):
            urls = [env["DIGEST_SMTP_URL"]]
    limits = {
        key: env[f"DIGEST_SMTP_{key.upper()}"]
        for key in ("rate", "burst", "per_hour", "per_day")
        if env.get(f"DIGEST_SMTP_{key.upper()}")
    }
    return tuple(parse_smtp_url(url, limits) for url in urls)


def _parse_time(name: str, value: str) -> time:
    try:
        hour, minute = value.split(":")
        return time(int(hour), int(minute))
    except ValueError:
        raise ConfigError(f"{name} must be HH:MM, got {value!r}") from None


def _int(env: dict[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None


def _at_least(env: dict[str, str], name: str, default: int, low: int = 1) -> int:
    value = _int(env, name, default)
    if value < low:
        raise ConfigError(f"{name} must be at least {low}, got {value}")
    return value


def _flag(env: dict[str, str], name: str) -> bool:
    value = (env.get(name) or "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be 1 or 0, got {value!r}")


def _secret_key(env: dict[str, str], data_dir: Path, create: bool = True) -> str:
    if env.get("DIGEST_SECRET_KEY"):
        return env["DIGEST_SECRET_KEY"]
    # Embedded default: one random key per data folder, kept so links stay valid across runs.
    path = data_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    if not create:
        raise ConfigError(f"DIGEST_SECRET_KEY is not set and {path} does not exist")
    private_folder(data_dir)
    key = secrets.token_urlsafe(32)
    try:
        # 0600 from the first byte, and never over a key another process just made.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


_TLS_CONTEXTS: dict[tuple[str, str | None, str | None], ssl.SSLContext] = {}
_TLS_LOCK = threading.Lock()


def tls_client_context(purpose: str) -> ssl.SSLContext:
    """The default client TLS context (the server's certificate and host name checked
    against the system's trust store), made once per process and `purpose` ("smtp",
    "imap", "https": http.client sets ALPN on the context it is given). Making one
    reads the whole CA bundle, about 36 ms of CPU, which every SMTP connection (four a
    send batch), IMAP login and feed fetch paid. SSL_CERT_FILE and SSL_CERT_DIR are
    read as before: a changed value gets a context of its own."""
    key = (purpose, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    with _TLS_LOCK:
        context = _TLS_CONTEXTS.get(key)
        if context is None:
            context = _TLS_CONTEXTS[key] = ssl.create_default_context()
        return context


def open_private(path: Path, mode: str = "w", **kwargs: Any) -> IO[Any]:
    """Open a file for writing that only its owner can read, from its first byte; an
    existing file is truncated and made private too. OSError when it cannot be."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.chmod(path, 0o600)  # an existing file keeps its old mode otherwise
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def append_private(path: Path) -> IO[str]:
    """Open a text file for appending that only its owner can read (made so if it
    existed with a wider mode); OSError when it cannot be."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.chmod(path, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def others_can_read(folder: Path) -> bool:
    """Whether users other than the owner may list or read the folder."""
    try:
        return bool(folder.stat().st_mode & 0o007)
    except OSError:
        return False


def private_folder(folder: Path) -> None:
    """Create a folder only its owner can enter (it holds keys, addresses, tokens)."""
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)  # mkdir's mode is cut by the umask


# Everything that starts a new line somewhere: a header setting holding one would let
# whoever sets it (or a mistake in .env) write headers of their own into every email.
_LINE_BREAKS = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
_HEADER_SETTINGS = {
    "DIGEST_FROM_ADDRESS": "from_address",
    "DIGEST_FROM_NAME": "from_name",
    "DIGEST_LIST_ID": "list_id",
    "DIGEST_UNSUBSCRIBE_MAILTO": "unsubscribe_mailto",
    "DIGEST_BASE_URL": "base_url",
    "DIGEST_BOUNCE_ADDRESS": "bounce_address",
    "DIGEST_REPLY_TO": "reply_to",
    "DIGEST_FEEDBACK_ID_SENDER": "feedback_id_sender",
    "DIGEST_DKIM_SELECTOR": "dkim_selector",
    "DIGEST_DKIM_DOMAIN": "dkim_domain",
}


# One bare address (no display name, list, comment or query): what a header setting
# that names a mailbox must be, so that a comma or '?bcc=' cannot add a second one.
_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_ADDRESS_SETTINGS = {
    "DIGEST_FROM_ADDRESS": "from_address",
    "DIGEST_UNSUBSCRIBE_MAILTO": "unsubscribe_mailto",
    "DIGEST_BOUNCE_ADDRESS": "bounce_address",
    "DIGEST_REPLY_TO": "reply_to",
}
_HOST = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")


def check_base_url(value: str) -> str:
    """One absolute http(s) URL with a host and nothing a header could split it at
    (List-Unsubscribe holds it between < and >); ConfigError naming DIGEST_BASE_URL."""
    problem = ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        problem = "an absolute http:// or https:// URL"
    elif re.search(r"[\s<>\"'`,;\\{}|^]", value):
        problem = "one URL without spaces, quotes, <, >, commas or semicolons"
    elif "@" in parts.netloc or parts.query or parts.fragment or "?" in value or "#" in value:
        problem = "a URL without user name, query or fragment"
    else:
        try:
            host, port = parts.hostname or "", parts.port
        except ValueError:
            host, port = "", None
        netloc = parts.netloc.rpartition(":")[0] if port else parts.netloc
        if not host or not _HOST.fullmatch(netloc):
            problem = "a URL whose host is a name or an address"
    if problem:
        raise ConfigError(f"DIGEST_BASE_URL must be {problem}, got {value[:80]!r}")
    return value


def check_header_settings(settings: Settings) -> Settings:
    """ConfigError naming the first setting that reaches a header and holds a line
    break, or is not the one thing it names (one address, one URL)."""
    for name, attr in _HEADER_SETTINGS.items():
        value = getattr(settings, attr, "")
        if isinstance(value, str) and _LINE_BREAKS.search(value):
            raise ConfigError(
                f"{name} must be one line without control characters: it goes into "
                "the headers of every email"
            )
    for name, attr in _ADDRESS_SETTINGS.items():
        value = getattr(settings, attr, "")
        if value and not (len(value) <= 254 and _ADDRESS.fullmatch(value)):
            raise ConfigError(
                f"{name} must be one email address such as news@example.com (no name, "
                f"list or ?query), got {value[:80]!r}"
            )
    check_base_url(settings.base_url)
    return settings


def postgres_url(host: str, port: int, name: str, user: str, password: str | None) -> str:
    """A postgresql:// URL from its parts, each quoted so any character survives."""
    userinfo = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    if host.startswith("/"):  # a Unix socket folder goes in the query, as libpq reads it
        return f"postgresql://{userinfo}@/{quote(name, safe='')}?host={quote(host, safe='')}"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"postgresql://{userinfo}@{host}:{port}/{quote(name, safe='')}"


DATABASE_PARTS = (
    "DIGEST_DATABASE_PORT",
    "DIGEST_DATABASE_NAME",
    "DIGEST_DATABASE_USER",
    "DIGEST_DATABASE_PASSWORD",
    "DIGEST_DATABASE_PASSWORD_FILE",
)


def _database_password(env: dict[str, str]) -> str | None:
    path = env.get("DIGEST_DATABASE_PASSWORD_FILE")
    if not path:
        return env.get("DIGEST_DATABASE_PASSWORD") or None
    if env.get("DIGEST_DATABASE_PASSWORD"):
        raise ConfigError("set DIGEST_DATABASE_PASSWORD or DIGEST_DATABASE_PASSWORD_FILE, not both")
    try:
        # Secret files usually end with a newline that is not part of the password.
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n") or None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"DIGEST_DATABASE_PASSWORD_FILE {path!r}: {reason}") from None


DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres")


def check_database_url(url: str) -> str:
    """The URL if digest can use its database (SQLite or PostgreSQL), else ConfigError."""
    scheme = url.partition(":")[0].partition("+")[0].lower()
    if scheme not in DATABASE_SCHEMES or "://" not in url:
        raise ConfigError(
            f"DIGEST_DATABASE_URL: {scheme or url[:20]!r} databases are not supported; digest "
            "runs on SQLite (sqlite:///path/to/digest.db) or PostgreSQL "
            "(postgresql://user:password@host:5432/name)"
        )
    return url


def database_url_from(env: dict[str, str], data_dir: Path) -> str:
    """DIGEST_DATABASE_URL as given, else PostgreSQL from DIGEST_DATABASE_HOST and the
    other parts, else the SQLite file in the data folder."""
    if env.get("DIGEST_DATABASE_URL"):
        return check_database_url(env["DIGEST_DATABASE_URL"])
    host = env.get("DIGEST_DATABASE_HOST")
    if not host:
        given = [name for name in DATABASE_PARTS if env.get(name)]
        if given:
            raise ConfigError(f"{given[0]} is set but DIGEST_DATABASE_HOST is not")
        return f"sqlite:///{data_dir / 'digest.db'}"
    port = _int(env, "DIGEST_DATABASE_PORT", 5432)
    if not 0 < port < 65536:
        raise ConfigError(f"DIGEST_DATABASE_PORT must be 1 to 65535, got {port}")
    return postgres_url(
        host=host,
        port=port,
        name=env.get("DIGEST_DATABASE_NAME") or "digest",
        user=env.get("DIGEST_DATABASE_USER") or "digest",
        password=_database_password(env),
    )


def _path(env: dict[str, str], name: str) -> Path | None:
    return Path(env[name]).resolve() if env.get(name) else None


def check_timezone(name: str) -> str:
    """Return name if zoneinfo knows it, else raise ConfigError."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown timezone {name!r}") from None
    return name


_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")


def _header_name(value: str) -> str:
    value = value.strip()
    if value and not _HEADER_NAME.fullmatch(value):
        raise ConfigError(
            f"DIGEST_API_CLIENT_HEADER must be a header name such as X-Client-IP, got {value!r}"
        )
    return value


def _origins(value: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
    for origin in origins:
        if not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                "DIGEST_API_CORS_ORIGINS must list origins such as https://www.example.com "
                f"(scheme, host and optional port, comma separated), got {origin!r}"
            )
    return origins


_ALERT_ADDRESS = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+")


def _alert_to(env: dict[str, str]) -> tuple[str, ...]:
    """DIGEST_ALERT_TO: addresses separated by commas."""
    given = [a.strip() for a in (env.get("DIGEST_ALERT_TO") or "").split(",") if a.strip()]
    for address in given:
        if not _ALERT_ADDRESS.fullmatch(address) or _LINE_BREAKS.search(address):
            raise ConfigError(f"DIGEST_ALERT_TO: {address[:80]!r} is not an email address")
    return tuple(given)


def _metrics_token(env: dict[str, str]) -> str:
    token = env.get("DIGEST_METRICS_TOKEN") or ""
    if token and (len(token) < 16 or _LINE_BREAKS.search(token) or " " in token):
        raise ConfigError(
            "DIGEST_METRICS_TOKEN must be at least 16 characters without spaces "
            "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


def load_settings(env: dict[str, str] | None = None, *, create_secret: bool = True) -> Settings:
    """Build Settings from DIGEST_* variables, with embedded defaults for the rest.

    `create_secret=False` (digest inbound, digest check) never makes a new secret key:
    one made there would sign nothing that was ever sent.
    """
    env = dict(os.environ if env is None else env)
    data_dir = Path(env.get("DIGEST_DATA_DIR") or "var").resolve()
    database_url = database_url_from(env, data_dir)
    relays = smtp_relays(env)
    send_times = {
        "morning": _parse_time("DIGEST_MORNING_AT", env.get("DIGEST_MORNING_AT", "06:00")),
        "evening": _parse_time("DIGEST_EVENING_AT", env.get("DIGEST_EVENING_AT", "17:00")),
    }
    defaults = Settings(
        data_dir=data_dir,
        database_url="",
        outbox_dir=data_dir,
        templates_dir=data_dir,
        secret_key="",
    )
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        database_wait_seconds=_int(
            env, "DIGEST_DATABASE_WAIT_SECONDS", defaults.database_wait_seconds
        ),
        outbox_dir=Path(env.get("DIGEST_OUTBOX_DIR") or data_dir / "outbox").resolve(),
        templates_dir=Path(env.get("DIGEST_TEMPLATES_DIR") or REPO_ROOT / "templates").resolve(),
        secret_key=_secret_key(env, data_dir, create_secret),
        smtp=relays[0] if relays else None,
        smtp_relays=relays,
        redis_url=env.get("DIGEST_REDIS_URL") or None,
        base_url=(env.get("DIGEST_BASE_URL") or defaults.base_url).rstrip("/"),
        from_address=env.get("DIGEST_FROM_ADDRESS") or defaults.from_address,
        from_name=env.get("DIGEST_FROM_NAME") or defaults.from_name,
        postal_address=env.get("DIGEST_POSTAL_ADDRESS") or defaults.postal_address,
        list_id=env.get("DIGEST_LIST_ID") or defaults.list_id,
        unsubscribe_mailto=env.get("DIGEST_UNSUBSCRIBE_MAILTO") or defaults.unsubscribe_mailto,
        default_timezone=check_timezone(env.get("DIGEST_TIMEZONE") or defaults.default_timezone),
        send_times=send_times,
        max_articles=_int(env, "DIGEST_MAX_ARTICLES", defaults.max_articles),
        first_lookback_hours=_int(
            env, "DIGEST_FIRST_LOOKBACK_HOURS", defaults.first_lookback_hours
        ),
        late_grace_hours=_int(env, "DIGEST_LATE_GRACE_HOURS", defaults.late_grace_hours),
        catchup_minutes=_int(env, "DIGEST_CATCHUP_MINUTES", defaults.catchup_minutes),
        batch_size=_int(env, "DIGEST_BATCH_SIZE", defaults.batch_size),
        # Each lane also holds a database connection: stay inside the default pool (15).
        smtp_connections=min(
            10, max(1, _int(env, "DIGEST_SMTP_CONNECTIONS", defaults.smtp_connections))
        ),
        lease_seconds=_int(env, "DIGEST_LEASE_SECONDS", defaults.lease_seconds),
        max_attempts=_int(env, "DIGEST_MAX_ATTEMPTS", defaults.max_attempts),
        retry_base_seconds=_int(env, "DIGEST_RETRY_BASE_SECONDS", defaults.retry_base_seconds),
        retry_max_seconds=_int(env, "DIGEST_RETRY_MAX_SECONDS", defaults.retry_max_seconds),
        task_queue=env.get("DIGEST_TASK_QUEUE") or defaults.task_queue,
        visibility_timeout=_int(env, "DIGEST_VISIBILITY_TIMEOUT", defaults.visibility_timeout),
        task_max_redeliveries=_int(
            env, "DIGEST_TASK_MAX_REDELIVERIES", defaults.task_max_redeliveries
        ),
        dispatch_every_seconds=_int(
            env, "DIGEST_DISPATCH_EVERY_SECONDS", defaults.dispatch_every_seconds
        ),
        ingest_every_seconds=_int(
            env, "DIGEST_INGEST_EVERY_SECONDS", defaults.ingest_every_seconds
        ),
        sweep_every_seconds=_int(env, "DIGEST_SWEEP_EVERY_SECONDS", defaults.sweep_every_seconds),
        outage_seconds=_int(env, "DIGEST_OUTAGE_SECONDS", defaults.outage_seconds),
        claim_seconds=max(3, _int(env, "DIGEST_CLAIM_SECONDS", defaults.claim_seconds)),
        record_group=max(1, _int(env, "DIGEST_RECORD_GROUP", defaults.record_group)),
        record_window=_int(env, "DIGEST_RECORD_WINDOW_MS", int(defaults.record_window * 1000))
        / 1000,
        allow_private_feeds=_flag(env, "DIGEST_ALLOW_PRIVATE_FEEDS"),
        feed_timeout=float(env.get("DIGEST_FEED_TIMEOUT") or defaults.feed_timeout),
        feed_max_bytes=_int(env, "DIGEST_FEED_MAX_BYTES", defaults.feed_max_bytes),
        confirm_ttl_hours=_int(env, "DIGEST_CONFIRM_TTL_HOURS", defaults.confirm_ttl_hours),
        bounce_address=env.get("DIGEST_BOUNCE_ADDRESS") or "",
        reply_to=env.get("DIGEST_REPLY_TO") or "",
        feedback_id_sender=env.get("DIGEST_FEEDBACK_ID_SENDER") or defaults.feedback_id_sender,
        dkim_selector=env.get("DIGEST_DKIM_SELECTOR") or "",
        dkim_domain=env.get("DIGEST_DKIM_DOMAIN") or "",
        dkim_key_file=_path(env, "DIGEST_DKIM_KEY_FILE"),
        view_ttl_days=_int(env, "DIGEST_VIEW_TTL_DAYS", defaults.view_ttl_days),
        public_archive=_flag(env, "DIGEST_PUBLIC_ARCHIVE"),
        signup_client_limit=env.get("DIGEST_SIGNUP_CLIENT_LIMIT") or defaults.signup_client_limit,
        signup_mailbox_limit=env.get("DIGEST_SIGNUP_MAILBOX_LIMIT")
        or defaults.signup_mailbox_limit,
        signup_mails_per_hour=_int(
            env, "DIGEST_SIGNUP_MAILS_PER_HOUR", defaults.signup_mails_per_hour
        ),
        trusted_proxies=_int(env, "DIGEST_TRUSTED_PROXIES", defaults.trusted_proxies),
        api_rate_limit=env.get("DIGEST_API_RATE_LIMIT") or defaults.api_rate_limit,
        api_client_header=_header_name(env.get("DIGEST_API_CLIENT_HEADER") or ""),
        api_cors_origins=_origins(env.get("DIGEST_API_CORS_ORIGINS") or ""),
        **returned_mail_settings(env, defaults),
        beat_stale_seconds=_at_least(env, "DIGEST_BEAT_STALE_SECONDS", defaults.beat_stale_seconds),
        worker_stale_seconds=_at_least(
            env, "DIGEST_WORKER_STALE_SECONDS", defaults.worker_stale_seconds
        ),
        stall_seconds=_at_least(env, "DIGEST_STALL_SECONDS", defaults.stall_seconds),
        failure_warn_percent=_at_least(
            env, "DIGEST_FAILURE_WARN_PERCENT", defaults.failure_warn_percent
        ),
        deferred_warn=_at_least(env, "DIGEST_DEFERRED_WARN", defaults.deferred_warn),
        feed_warn_hours=_at_least(env, "DIGEST_FEED_WARN_HOURS", defaults.feed_warn_hours),
        alert_to=_alert_to(env),
        alert_per_hour=_at_least(env, "DIGEST_ALERT_PER_HOUR", defaults.alert_per_hour),
        metrics_token=_metrics_token(env),
        **_click_settings(env, defaults),
    )
    return check_header_settings(settings)


def returned_mail_settings(env: dict[str, str], defaults: Settings) -> dict[str, Any]:
    """The soft-bounce rule, the ESP webhooks' secrets and the bounce mailbox, checked."""
    limit = _at_least(env, "DIGEST_SOFT_BOUNCE_LIMIT", defaults.soft_bounce_limit)
    days = _at_least(env, "DIGEST_SOFT_BOUNCE_DAYS", defaults.soft_bounce_days)
    arns = tuple(a.strip() for a in env.get("DIGEST_SES_TOPIC_ARNS", "").split(",") if a.strip())
    for arn in arns:
        if not re.fullmatch(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]{1,256}", arn):
            raise ConfigError(f"DIGEST_SES_TOPIC_ARNS: {arn[:100]!r} is not an SNS topic ARN")
    postmark = env.get("DIGEST_POSTMARK_WEBHOOK_AUTH", "")
    if postmark and (":" not in postmark or postmark.startswith(":")):
        raise ConfigError("DIGEST_POSTMARK_WEBHOOK_AUTH must be user:password")
    sendgrid = env.get("DIGEST_SENDGRID_WEBHOOK_KEY", "").strip()
    if sendgrid and not (
        sendgrid.startswith("-----BEGIN PUBLIC KEY-----")
        or re.fullmatch(r"[A-Za-z0-9+/=\s]{40,}", sendgrid)
    ):
        raise ConfigError("DIGEST_SENDGRID_WEBHOOK_KEY must be a PEM or base64 public key")
    imap = env.get("DIGEST_INBOUND_IMAP_URL", "")
    if imap and urlsplit(imap).scheme not in ("imap", "imaps"):
        raise ConfigError("DIGEST_INBOUND_IMAP_URL must start with imap:// or imaps://")
    every = _int(env, "DIGEST_INBOUND_IMAP_EVERY_SECONDS", defaults.inbound_imap_every_seconds)
    return {
        "soft_bounce_limit": limit,
        "soft_bounce_days": days,
        "ses_topic_arns": arns,
        "sendgrid_webhook_key": sendgrid,
        "mailgun_signing_key": env.get("DIGEST_MAILGUN_SIGNING_KEY", ""),
        "postmark_webhook_auth": postmark,
        "inbound_imap_url": imap,
        "inbound_imap_every_seconds": max(10, every),
    }


CLICK_MODES = ("off", "aggregate", "reader")


def _click_settings(env: dict[str, str], defaults: Settings) -> dict[str, Any]:
    """DIGEST_CLICK_TRACKING and what goes with it, checked together."""
    mode = (env.get("DIGEST_CLICK_TRACKING") or defaults.click_tracking).strip().lower()
    if mode not in CLICK_MODES:
        raise ConfigError(
            f"DIGEST_CLICK_TRACKING must be one of {', '.join(CLICK_MODES)}, got {mode!r}"
        )
    sunset = _at_least(env, "DIGEST_SUNSET_EDITIONS", defaults.sunset_editions, 0)
    if sunset and mode != "reader":
        raise ConfigError(
            "DIGEST_SUNSET_EDITIONS needs DIGEST_CLICK_TRACKING=reader: without knowing "
            "who clicked, every reader would look inactive"
        )
    return {
        "click_tracking": mode,
        "click_retention_days": _at_least(
            env, "DIGEST_CLICK_RETENTION_DAYS", defaults.click_retention_days, 1
        ),
        "scanner_window_seconds": _at_least(
            env, "DIGEST_SCANNER_WINDOW_SECONDS", defaults.scanner_window_seconds, 0
        ),
        "open_tracking": _flag(env, "DIGEST_OPEN_TRACKING"),
        "rank_by_clicks": _flag(env, "DIGEST_RANK_BY_CLICKS"),
        "sunset_editions": sunset,
        "sunset_days": _at_least(env, "DIGEST_SUNSET_DAYS", defaults.sunset_days),
    }
