"""The envelope sender of every message: a VERP bounce address naming the delivery.

`bounces+<edition>.<subscriber>.<mac>@domain`: a returned message reaches the bounce
address whatever it quotes of the original (many MTAs send headers only, some nothing),
and the address alone says which delivery failed. The tag is signed (HMAC) and written
in lower case only, since some MTAs lower-case local parts; edition 0 is mail outside
an edition (the sign-up email).
"""

from __future__ import annotations

import base64
import hmac
import re

from digest.config import Settings
from digest.mail.tokens import mac

# Enhanced statuses (RFC 3463) that say the address itself does not exist: bad mailbox,
# bad domain, null MX. Any other permanent failure (policy, a blocklist, a full mailbox)
# fails that one message and keeps the reader. Read at send time (a refused RCPT) and in
# the reports that come back (DSNs).
NO_MAILBOX = frozenset({"5.1.1", "5.1.2", "5.1.10"})

_TAG = re.compile(r"\+(\d{1,18})\.(\d{1,18})\.([a-z2-7]{16})@")


def _mac(secret: str, edition_id: int, subscriber_id: int) -> str:
    digest = mac(secret, f"verp|{edition_id}|{subscriber_id}".encode())
    return base64.b32encode(digest[:10]).decode("ascii").lower()


def verp_address(base: str, secret: str, edition_id: int, subscriber_id: int) -> str:
    """The bounce address `base` with a signed tag naming (edition, subscriber)."""
    local, _, domain = base.rpartition("@")
    tag = f"{edition_id}.{subscriber_id}.{_mac(secret, edition_id, subscriber_id)}"
    return f"{local}+{tag}@{domain}"


def read_verp(address: str, secret: str) -> tuple[int, int] | None:
    """(edition, subscriber) a VERP address names, if its tag holds; else None."""
    found = _TAG.search(address.strip().strip("<>").lower())
    if found is None:
        return None
    edition_id, subscriber_id = int(found.group(1)), int(found.group(2))
    expected = _mac(secret, edition_id, subscriber_id)
    return (edition_id, subscriber_id) if hmac.compare_digest(expected, found.group(3)) else None


def envelope_sender(settings: Settings, edition_id: int, subscriber_id: int) -> str:
    """MAIL FROM for one message: the VERP bounce address, or From when none is set."""
    if not settings.bounce_address:
        return settings.from_address
    return verp_address(settings.bounce_address, settings.secret_key, edition_id, subscriber_id)
