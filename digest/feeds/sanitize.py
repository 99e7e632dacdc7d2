"""Feed HTML is sanitised before it is stored; titles become plain text."""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

import nh3

SUMMARY_TAGS = {"a", "p", "br", "strong", "em", "b", "i", "ul", "ol", "li", "blockquote", "code"}
SUMMARY_ATTRIBUTES = {"a": {"href", "title"}}
# Elements whose content is not reading text (code, fallbacks, embedded documents):
# dropped together with their content, where other unknown tags are only unwrapped.
DROPPED_WITH_CONTENT = {
    "script",
    "style",
    "iframe",
    "noscript",
    "noembed",
    "noframes",
    "object",
    "template",
    "title",
    "textarea",
    "xmp",
}
MAX_URL = 2000  # the size of the URL columns
# nh3 is fast, but a multi-megabyte "summary" is not a summary: anything past this is
# cut before cleaning and the result is treated as overlong.
MAX_HTML_INPUT = 200_000
_SPACE = re.compile(r"\s+")
# Block-level tags separate words in visible text even when the markup has no spaces.
_BLOCK = re.compile(
    r"<(?=/?(?:p|br|div|li|ul|ol|h[1-6]|tr|td|th|dd|dt|hr|blockquote|section|article)\b)",
    re.IGNORECASE,
)


def clean_summary(raw: str, limit: int = 4000, *, base: str | None = None) -> str:
    """A small, safe subset of HTML: no scripts, styles, handlers or foreign URLs.

    Links must be absolute http(s) or mailto; relative ones are resolved against
    `base` (the article's URL) when given, else dropped.
    """
    if not raw:
        return ""
    cleaned = nh3.clean(
        raw[:MAX_HTML_INPUT],
        tags=SUMMARY_TAGS,
        clean_content_tags=DROPPED_WITH_CONTENT,
        attributes=SUMMARY_ATTRIBUTES,
        attribute_filter=_link_filter(base),
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer",
        strip_comments=True,
    )
    cleaned = _drop_controls(cleaned).strip()
    if len(cleaned) <= limit and len(raw) <= MAX_HTML_INPUT:
        return cleaned
    return _truncate(cleaned, limit)


def _link_filter(base: str | None) -> Callable[[str, str, str], str | None]:
    def keep(tag: str, attribute: str, value: str) -> str | None:
        if attribute != "href":
            return value
        value = value.strip()
        if value.lower().startswith("mailto:"):
            return value if "\n" not in value and "\r" not in value else None
        return safe_url(urljoin(base, value) if base else value)

    return keep


def _truncate(cleaned: str, limit: int) -> str:
    # Cutting HTML mid-tag breaks it; fall back to the plain text of an overlong summary.
    text = html_to_text(cleaned)
    return html.escape(text[: limit - 1].rstrip() + "…", quote=False)


def _drop_controls(text: str) -> str:
    # Control characters (escape sequences, NUL...) have no business in stored text;
    # whitespace ones (tab, CR, LF, NEL...) are kept for the caller to collapse.
    return "".join(c for c in text if c.isspace() or unicodedata.category(c) != "Cc")


def html_to_text(raw: str) -> str:
    """Visible text of an HTML fragment, on one line, whitespace collapsed."""
    if not raw:
        return ""
    stripped = nh3.clean(
        _BLOCK.sub(" <", raw[:MAX_HTML_INPUT]),
        tags=set(),
        clean_content_tags=DROPPED_WITH_CONTENT,
        strip_comments=True,
    )
    # Unescape after cleaning: the text may then hold "<" again, which is what it says.
    # It is plain text from here on and gets escaped wherever it is put into HTML.
    text = _drop_controls(html.unescape(stripped))
    return _SPACE.sub(" ", text).strip()


def clean_title(raw: str, limit: int = 300) -> str:
    """A title as one line of plain text: markup removed, CR/LF and controls gone."""
    return html_to_text(raw)[:limit].rstrip()


def safe_url(raw: object) -> str | None:
    """The URL if it is absolute http(s) and free of whitespace and controls, else None."""
    if not isinstance(raw, str):
        return None
    url = raw.strip()
    if not url or len(url) > MAX_URL:
        return None
    # Backslashes are read as slashes by browsers but not by urlsplit, so the two would
    # disagree about the host; spaces and controls make a URL ambiguous in text and HTML.
    if "\\" in url or any(c.isspace() or unicodedata.category(c) == "Cc" for c in url):
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url
