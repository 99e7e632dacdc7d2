"""The edition email itself: subject, size, plain text and the HTML a client reads."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from lxml import html as lxml_html

from digest.editions.budget import MESSAGE_BUDGET, cut_on_word, subject_line
from digest.editions.render import SlotMarks, Splicer, render_edition, slot_values, subject_for
from digest.mail.message import MessageTemplate, Reader, Sender
from tests.email_samples import LONG_URL, READER, TEMPLATES, article, edition, filled

HEAD = "The Morning Edition, Monday 30 November"


@pytest.mark.parametrize(
    ("lead", "expected"),
    [
        ("Ferries halted", f"{HEAD}: Ferries halted"),
        (
            "Harbour ferries halted as a signalling fault strands thousands of commuters",
            f"{HEAD}: Harbour ferries halted as a…",
        ),
        (
            "Supercalifragilisticexpialidocious" * 3,
            f"{HEAD}: SupercalifragilisticexpialidociousSu…",
        ),
        (
            "Café, crème: the ünïcode menu of Sydney's harbour-side restaurants",
            f"{HEAD}: Café, crème: the ünïcode menu of…",
        ),
        ("", HEAD),
    ],
)
def test_subject_is_name_date_and_the_lead_cut_on_a_word(lead: str, expected: str) -> None:
    view = edition([replace(article(0), title=lead)] if lead else [])
    subject = subject_for(view)
    assert subject == expected
    assert len(subject) <= 78


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("short", 10, "short"),
        ("one two three four", 12, "one two…"),
        ("one two, three", 10, "one two…"),
        ("abcdefghijklmnop", 8, "abcdefg…"),
        ("  spaced   out  ", 20, "spaced out"),
    ],
)
def test_cut_on_word(text: str, limit: int, expected: str) -> None:
    assert cut_on_word(text, limit) == expected
    assert len(cut_on_word(text, limit)) <= limit


def test_subject_line_never_exceeds_its_limit() -> None:
    for n in range(0, 120, 7):
        assert len(subject_line(HEAD, "word " * n)) <= 78


def message(view_articles=None) -> tuple[bytes, str]:
    rendered = render_edition(edition(view_articles), TEMPLATES)
    marks = SlotMarks(rendered.slot_nonce)
    sender = Sender(
        "news@gazette.example",
        "The Gazette",
        "daily.gazette.example",
        "Gazette",
        "u@gazette.example",
    )
    template = MessageTemplate(
        sender,
        rendered.subject,
        datetime(2026, 11, 29, 19, 0, tzinfo=UTC),
        "1:",
        Splicer.of(rendered.html, marks),
        Splicer.of(rendered.text, marks),
    )
    html_values = slot_values(for_html=True, **READER)
    reader = Reader(
        "zoe@example.org",
        READER["name"],
        "<digest.1.1.x@gazette.example>",
        READER["unsubscribe_url"],
        "t",
        html_values,
        slot_values(for_html=False, **READER),
    )
    return template.render(reader), filled(rendered, for_html=False)


def test_a_full_edition_with_the_longest_summaries_stays_under_gmails_clip() -> None:
    longest = [article(i, paragraphs=6, repeat=5) for i in range(12)]
    assert all(len(a.summary_html) > 3000 for a in longest)
    raw, text = message(longest)
    assert len(raw) < MESSAGE_BUDGET, len(raw)
    assert "…" in text  # summaries were shortened, on a word
    assert text.count("Read the full story: ") == 12  # every article is still there
    assert "unsubscribe here: https://news.example.com/unsubscribe/" in text


def test_summaries_that_fit_are_left_whole() -> None:
    raw, text = message([article(i, paragraphs=2, repeat=1) for i in range(12)])
    assert len(raw) < MESSAGE_BUDGET
    assert "…" not in text and text.count("Paragraph 1.") == 12


def test_plain_text_keeps_paragraphs_says_why_and_how_to_stop() -> None:
    _, text = message([article(0, paragraphs=3, repeat=1), article(1)])
    assert "Paragraph 0.\n\nFerry services" in text  # a blank line between paragraphs
    assert LONG_URL in text.split()  # never broken across lines
    assert "-- " not in text.splitlines()  # no signature marker: clients would hide the footer
    assert "because you subscribed to it" in text
    assert "To stop receiving it, unsubscribe here: https://news.example.com/unsubscribe/" in text
    assert (
        max(len(line) for line in text.splitlines() if LONG_URL not in line and "http" not in line)
        <= 72
    )


def test_the_html_a_client_reads() -> None:
    rendered = render_edition(edition(), TEMPLATES)
    page = filled(rendered)
    doc = lxml_html.fromstring(page)
    preheader = doc.cssselect(".preheader")[0]
    style = preheader.get("style").replace(" ", "")
    # Hidden by size and overflow, never by colour (spam filters score same-colour text).
    assert "color" not in style
    for rule in ("display:none", "max-height:0", "overflow:hidden", "mso-hide:all"):
        assert rule in style
    assert preheader.get("aria-hidden") == "true"
    assert preheader.text_content().startswith("Story 0:")
    images = doc.cssselect("img")
    assert len(images) == 12
    for img in images:
        link = img.getparent()
        assert link.tag == "a"  # a linked image: its alt text is the link's name
        title = link.getparent().cssselect("h2 a")[0].text_content()
        assert img.get("alt") == title and img.get("width") == "552"
    assert re.search(r"<!--\[if mso\]><table[^>]*width=\"600\"", page)
    assert page.count("<!--[if mso]></td></tr></table><![endif]-->") == 1
    metas = {m.get("name"): m.get("content") for m in doc.cssselect("meta[name]")}
    assert (
        metas["color-scheme"] == "light dark" and metas["supported-color-schemes"] == "light dark"
    )
    assert "@media (prefers-color-scheme: dark)" in page
    container = doc.cssselect("table.container")[0].get("style")
    assert "overflow-wrap:break-word" in container and "word-break:break-word" in container
