"""Feed HTML is sanitised before it is stored; titles become plain text."""

from __future__ import annotations

import html
import re
from urllib.parse import urlsplit

import nh3

SUMMARY_TAGS = {"a", "p", "br", "strong", "em", "b", "i", "ul", "ol", "li", "blockquote", "code"}
SUMMARY_ATTRIBUTES = {"a": {"href", "title"}}
_SPACE = re.compile(r"\s+")


def clean_summary(raw: str, limit: int = 4000) -> str:
    """A small, safe subset of HTML: no scripts, styles, handlers or foreign URLs."""
    if not raw:
        return ""
    cleaned = nh3.clean(
        raw[: limit * 4],
        tags=SUMMARY_TAGS,
        attributes=SUMMARY_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer",
    )
    return cleaned.strip()[:limit] if len(cleaned) <= limit else _truncate(cleaned, limit)


def _truncate(cleaned: str, limit: int) -> str:
    # Cutting HTML mid-tag breaks it; fall back to the plain text of an overlong summary.
    text = html_to_text(cleaned)
    return html.escape(text[: limit - 1].rstrip() + "…")


def html_to_text(raw: str) -> str:
    """Visible text of an HTML fragment, whitespace collapsed."""
    if not raw:
        return ""
    stripped = nh3.clean(raw.replace("<br", " <br").replace("</p>", " </p>"), tags=set())
    return _SPACE.sub(" ", html.unescape(stripped)).strip()


def clean_title(raw: str, limit: int = 300) -> str:
    """A title as one line of plain text."""
    return html_to_text(raw)[:limit]


def safe_url(raw: str | None) -> str | None:
    """The URL if it is absolute http(s) and free of whitespace, else None."""
    if not raw:
        return None
    url = raw.strip()
    if any(c.isspace() for c in url) or len(url) > 2000:
        return None
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return url
