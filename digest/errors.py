"""One exception root for everything digest raises on purpose."""


class DigestError(Exception):
    """Root of every error digest raises deliberately."""


class ConfigError(DigestError, ValueError):
    """A setting is missing or malformed."""


class InvalidAddress(DigestError, ValueError):
    """An email address that cannot be sent to."""


class InvalidInput(DigestError, ValueError):
    """A value from outside (CSV row, JSON record, form field) is unusable."""


class HeaderInjection(DigestError, ValueError):
    """A string meant for a header carries a line break."""


class InvalidToken(DigestError, ValueError):
    """A token that is forged, mangled, expired or for another purpose."""


class NotFound(DigestError, LookupError):
    """A row asked for by id or address does not exist."""


class Duplicate(DigestError, ValueError):
    """A row that must be unique already exists."""


class NothingToSend(DigestError, LookupError):
    """An edition has no articles for the readers asked about."""


class FeedError(DigestError):
    """A feed could not be fetched or parsed."""


class UnsafeURL(FeedError, ValueError):
    """A feed URL points somewhere digest refuses to fetch from."""


class SendError(DigestError):
    """Base of the two outcomes the transport reports for a failed send."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TransientSendError(SendError):
    """4xx reply or dropped connection: try again later."""


class RelayUnavailable(TransientSendError):
    """No relay may take a message now (all down, or over their rate caps): the batch
    hands its rows back, untried, and goes again in `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SendStopped(DigestError):
    """Sending stopped before the work was done, for a reason no reader caused; the
    rows it held are back in the queue, untried (`digest send` exits 3)."""


class OutboxUnwritable(SendStopped, OSError):
    """The outbox folder exists but cannot be written (read-only, no permission)."""


class PermanentSendError(SendError):
    """5xx reply: do not try again."""

    def __init__(self, message: str, code: int | None = None, unknown_mailbox: bool = False):
        super().__init__(message, code)
        self.unknown_mailbox = unknown_mailbox


class DatabaseUnavailable(DigestError, ConnectionError):
    """The database did not take connections in time, or refused digest for good."""
