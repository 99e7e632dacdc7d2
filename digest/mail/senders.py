"""Who every message is from, as the settings say: From, the list headers, Reply-To,
the Feedback-ID sender and, when configured, the DKIM key (read here, at the edge)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from digest.config import Settings
from digest.mail.dkim import DKIMKey, load_key
from digest.mail.message import Sender


@lru_cache(maxsize=4)
def _key(selector: str, domain: str, path: Path, mtime_ns: int) -> DKIMKey:
    return load_key(selector, domain, path)


def dkim_key(settings: Settings) -> DKIMKey | None:
    """The configured signing key (ConfigError if it cannot be used), or None."""
    if not settings.dkim_selector or settings.dkim_key_file is None:
        return None
    path = settings.dkim_key_file
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = 0  # load_key says what is wrong with it
    return _key(settings.dkim_selector, dkim_domain(settings), path, mtime)


def dkim_domain(settings: Settings) -> str:
    """d= of the signature: DIGEST_DKIM_DOMAIN, else the From domain (aligned for DMARC)."""
    return settings.dkim_domain or settings.sender_domain


def sender_for(settings: Settings) -> Sender:
    """The Sender every message digest builds carries."""
    return Sender(
        from_address=settings.from_address,
        from_name=settings.from_name,
        list_id=settings.list_id,
        list_name=settings.from_name,
        unsubscribe_mailto=settings.unsubscribe_mailto,
        reply_to=settings.reply_to,
        feedback_sender=settings.feedback_id_sender,
        dkim=dkim_key(settings),
    )
