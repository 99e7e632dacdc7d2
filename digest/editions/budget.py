"""What fits in one email: a subject of about 78 characters, summaries whose plain text
keeps its paragraphs, and a whole message under Gmail's clipping size.

Gmail shows "[Message clipped]" past about 102 kB and hides the rest, footer and
unsubscribe link included; digest keeps each message (both parts, encoded, with its
headers) under 100 kB by shortening summaries, longest first, only when it has to.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol, TypeVar

from digest.feeds.sanitize import html_to_text
from digest.mail.addresses import fold_header_text
from digest.mail.message import qp

SUBJECT_LENGTH = 78
MESSAGE_BUDGET = 100_000
# Headers, the MIME framing, a DKIM signature and one reader's links and name.
PER_READER_OVERHEAD = 4_000
# Characters of plain text a summary keeps, tried in turn until the message fits.
SUMMARY_LIMITS: tuple[int | None, ...] = (None, 1500, 1000, 700, 450, 280, 160, 0)

# A paragraph ends at a closing p, li or blockquote, at a line break or a list's end.
_PARAGRAPH_END = re.compile(r"</(?:p|li|blockquote|ul|ol)\s*>|<br\s*/?>", re.IGNORECASE)


class Summarised(Protocol):
    @property
    def summary_html(self) -> str: ...

    @property
    def summary_text(self) -> str: ...


A = TypeVar("A", bound=Summarised)


def cut_on_word(text: str, limit: int) -> str:
    """`text` in at most `limit` characters, cut after a whole word, with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    if limit <= 1:
        return "…"[:limit]
    head = text[: limit - 1]
    space = head.rfind(" ")
    if space > limit // 3:  # a word boundary not too far back; else cut the long word
        head = head[:space]
    return head.rstrip(" ,;:.-–—") + "…"


def subject_line(head: str, lead: str, limit: int = SUBJECT_LENGTH) -> str:
    """`head: lead`, the lead cut on a word to keep the whole within `limit`."""
    head = fold_header_text(head, limit=limit)
    lead = fold_header_text(lead, limit=1000)
    room = limit - len(head) - 2
    if not lead or room < 12:
        return head
    return f"{head}: {cut_on_word(lead, room)}"


def paragraphs(summary_html: str) -> list[str]:
    """The summary's paragraphs as plain text (each on one line)."""
    pieces = (html_to_text(piece) for piece in _PARAGRAPH_END.split(summary_html))
    return [p for p in pieces if p]


def plain_summary(summary_html: str) -> str:
    """Plain text with a blank line between paragraphs."""
    return "\n\n".join(paragraphs(summary_html))


def shorten(summary_html: str, limit: int) -> tuple[str, str]:
    """(html, text) of a summary cut to `limit` characters of text, on a word."""
    kept: list[str] = []
    room = limit
    for paragraph in paragraphs(summary_html):
        if room <= 1:
            break
        piece = cut_on_word(paragraph, room)
        kept.append(piece)
        room -= len(piece)
    body = "".join(f"<p>{html.escape(p, quote=False)}</p>" for p in kept)
    return body, "\n\n".join(kept)


def fit_summaries(articles: Sequence[A], limit: int | None) -> list[A]:
    """The articles with their plain-text summaries in paragraphs and, when `limit` is
    given, each summary longer than it shortened (short ones stay as they are)."""
    fitted = []
    for article in articles:
        text = plain_summary(article.summary_html) if article.summary_html else ""
        if limit is not None and len(text) > limit:
            summary_html, text = shorten(article.summary_html, limit)
            article = replace(article, summary_html=summary_html)  # type: ignore[type-var]
        text = text or article.summary_text
        fitted.append(replace(article, summary_text=text))  # type: ignore[type-var]
    return fitted


def message_size(html_body: str, text_body: str) -> int:
    """Bytes of a message with these bodies once quoted-printable encoded, with room
    for the headers and a reader's values."""
    return len(qp(html_body)) + len(qp(text_body)) + PER_READER_OVERHEAD
