"""Address and header-text checks: nothing from outside reaches a header unchecked."""

from __future__ import annotations

import re
import unicodedata

from digest.errors import HeaderInjection, InvalidAddress

_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# Characters that end a header line somewhere: CR, LF, and the Unicode line breaks
# some clients honour. Encoded-words ("=?utf-8?q?...=0A?=") are defused separately.
_BREAKS = re.compile(r"[\r\n\x0b\x0c\x85\u2028\u2029]")


def normalise_address(raw: str) -> str:
    """Return the address lower-cased and IDNA-encoded, or raise InvalidAddress naming why."""
    if not isinstance(raw, str):
        raise InvalidAddress("address must be text")
    value = raw.strip()
    if not value:
        raise InvalidAddress("address is empty")
    if _BREAKS.search(value) or any(unicodedata.category(c) == "Cc" for c in value):
        raise InvalidAddress(f"address {value!r} contains a line break or control character")
    if value.count("@") != 1:
        raise InvalidAddress(f"address {value!r} must contain exactly one @")
    local, domain = value.split("@")
    if not local or len(local) > 64 or not _LOCAL.match(local):
        raise InvalidAddress(f"address {value!r} has an invalid local part")
    try:
        ascii_domain = domain.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise InvalidAddress(f"address {value!r} has an invalid domain") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise InvalidAddress(f"address {value!r} has an invalid domain")
    address = f"{local.lower()}@{ascii_domain}"
    if len(address) > 254:
        raise InvalidAddress(f"address {value!r} is longer than 254 characters")
    return address


def fold_header_text(value: str, limit: int = 200) -> str:
    """Make free text (a name, a title) safe for a header: one line, no encoded-words."""
    if (
        len(value) <= limit
        and value.isascii()
        and value.isprintable()  # no CR, LF, tab or other control character
        and "=?" not in value
        and "  " not in value
        and value[:1] != " "
        and value[-1:] != " "
    ):
        return value  # already folded (as names are at import): nothing would change
    return folded(value, limit)


def folded(value: str, limit: int) -> str:
    """fold_header_text the long way, whatever the text."""
    text = _BREAKS.sub(" ", value)
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)
    # "=?" opens an RFC 2047 encoded-word, which a client would decode (newlines and
    # all); a space between the two characters keeps the text and defuses the syntax.
    text = text.replace("=?", "= ?")
    text = " ".join(text.split())
    return text[:limit]


def check_header_value(value: str) -> str:
    """Return value unchanged if it is one clean line, else raise HeaderInjection."""
    if _BREAKS.search(value) or "\x00" in value:
        raise HeaderInjection(f"header value {value[:60]!r} contains a line break")
    return value


_DOTLESS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def mailbox_of(email: str) -> str:
    """The mailbox an address reaches: case, `+tag`s and (at Gmail) dots in the local
    part do not make a new one. For limits and suppressions, never for sending."""
    local, _, domain = email.strip().lower().rpartition("@")
    local = local.split("+", 1)[0]
    if domain in _DOTLESS:
        local, domain = local.replace(".", ""), _DOTLESS[domain]
    return f"{local}@{domain}"
