"""A full edition for the email tests: 12 articles with images and long summaries."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from digest.editions.render import (
    ArticleView,
    EditionView,
    Rendered,
    SlotMarks,
    Splicer,
    slot_values,
)
from digest.feeds.sanitize import clean_summary, html_to_text

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
DAY = date(2026, 11, 30)
LONG_URL = "https://example.com/" + "averyveryverylongpathsegment" * 6
SENTENCE = (
    "Ferry services across the harbour were suspended on Tuesday morning after a fault "
    "in the signalling system, leaving thousands of commuters stranded at Circular Quay. "
)
READER = {
    "name": "Zoë Ünïcode",
    "unsubscribe_url": "https://news.example.com/unsubscribe/1.abc.def",
    "preferences_url": "https://news.example.com/preferences/1.abc.def",
    "view_url": "https://news.example.com/editions/1/1.abc.def",
}


def article(i: int, paragraphs: int = 4, repeat: int = 3, image: bool = True) -> ArticleView:
    raw = "".join(f"<p>{SENTENCE * repeat}Paragraph {j}.</p>" for j in range(paragraphs))
    if i == 0:
        raw += f"<p>Read the report at {LONG_URL}</p>"
    summary = clean_summary(raw)
    return ArticleView(
        title=f"Story {i}: harbour ferries halted as a signalling fault strands commuters",
        url=f"https://news.example.com/2026/11/30/story-{i}",
        section=("news", "sport", "business")[i % 3],
        summary_html=summary,
        summary_text=html_to_text(summary),
        image_url=f"https://img.example.com/{i}.jpg" if image else None,
    )


def edition(articles: list[ArticleView] | None = None) -> EditionView:
    return EditionView(
        slot="morning",
        local_day=DAY,
        timezone="Australia/Sydney",
        articles=articles if articles is not None else [article(i) for i in range(12)],
        sender_name="The Gazette",
        postal_address="12 Harbour Street, Sydney NSW 2000",
    )


def filled(rendered: Rendered, for_html: bool = True) -> str:
    """The rendering with one reader's values in its slots, as a message carries it."""
    marks = SlotMarks(rendered.slot_nonce)
    body = rendered.html if for_html else rendered.text
    return Splicer.of(body, marks).fill(slot_values(for_html=for_html, **READER))
