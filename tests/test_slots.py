"""Feed text can never become a per-reader slot (issue 7, item 1).

Slot markers carry a nonce drawn at render time and kept beside the rendering, so no
nesting, splitting or encoding of marker-like text in a feed reaches a reader's values.
Each test counts where a reader's values land: exactly where the template put a slot.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from digest import store
from digest.config import REPO_ROOT, parse_smtp_url
from digest.editions import lanes, pipeline, sending
from digest.editions.render import (
    SLOT_NAMES,
    ArticleView,
    EditionView,
    SlotMarks,
    Splicer,
    render_edition,
    slot_values,
)
from digest.editions.schedule import Cohort
from digest.mail.transport import SMTPTransport
from tests.conftest import NOW

TEMPLATES = REPO_ROOT / "templates"
OLD = {n: f"DGSTx{n.replace('_', 'x').upper()}xDGST" for n in SLOT_NAMES}
NEW_SHAPE = {n: f"DGST{'0' * 32}{n.replace('_', '').upper()}" for n in SLOT_NAMES}
NESTED = "DGSTxPREFEREDGSTxPREFERENCESXURLxDGSTNCESXURLxDGST"


def hostile_strings() -> list[str]:
    """Marker text as a feed might write it: whole, nested, overlapping, encoded."""
    out = [NESTED]
    for name, old in OLD.items():
        half = len(old) // 2
        out += [
            old,
            old[:half] + old + old[half:],  # nested: removing the inner one rebuilds it
            old + old[4:],  # overlapping
            old.replace("D", "&#68;", 1),  # entity-encoded
            old.replace("D", "&#x44;", 1),
            quote(old, safe="").replace("D", "%44"),  # percent-encoded
            NEW_SHAPE[name],  # today's shape with a guessed nonce
            "DGST" + "f" * 32 + name.replace("_", "").upper(),
        ]
    return out


READER = {
    "name_suffix": " Reader-Name-Sentinel",
    "unsubscribe_url": "https://news.example.com/unsubscribe/UNSUB-SENTINEL",
    "preferences_url": "https://news.example.com/preferences/PREFS-SENTINEL",
    "view_url": "https://news.example.com/editions/1/VIEW-SENTINEL",
}
SENTINELS = ("Reader-Name-Sentinel", "UNSUB-SENTINEL", "PREFS-SENTINEL", "VIEW-SENTINEL")


def edition_of(articles: list[ArticleView]) -> EditionView:
    return EditionView(
        "morning", date(2026, 11, 30), "Australia/Sydney", articles, "Gazette", "1 Example St"
    )


def filled(view: EditionView) -> tuple[str, str]:
    page = render_edition(view, TEMPLATES)
    marks = SlotMarks(page.slot_nonce)
    values = {k: v.removeprefix(" ") if k == "name_suffix" else v for k, v in READER.items()}
    html_values = slot_values(name=values["name_suffix"], for_html=True, **_links(values))
    text_values = slot_values(name=values["name_suffix"], for_html=False, **_links(values))
    html = Splicer.of(page.html, marks).fill(html_values)
    text = Splicer.of(page.text, marks).fill(text_values)
    return html, text


def _links(values: dict[str, str]) -> dict[str, str]:
    return {k: values[k] for k in ("unsubscribe_url", "preferences_url", "view_url")}


BASELINE = filled(edition_of([ArticleView("Plain", "https://x.example/a", "news")]))


def counts(html: str, text: str) -> dict[str, tuple[int, int]]:
    return {s: (html.count(s), text.count(s)) for s in SENTINELS}


_EVIL_WITH_VALUE = re.compile(r"evil\.example[^\s\"'<>]*(?:SENTINEL|Sentinel)")


def assert_only_own_slots(html: str, text: str) -> None:
    assert counts(html, text) == counts(*BASELINE)
    assert not _EVIL_WITH_VALUE.search(html) and not _EVIL_WITH_VALUE.search(text)


@pytest.mark.parametrize("bad", hostile_strings())
@pytest.mark.parametrize("field", ["title", "url", "image_url", "summary", "section"])
def test_marker_text_in_any_feed_field_fills_nothing(field: str, bad: str) -> None:
    kw = {
        "title": "Title",
        "url": "https://evil.example/a",
        "section": "news",
        "summary_html": "<p>Summary</p>",
        "summary_text": "Summary",
        "image_url": "https://evil.example/pixel.gif",
    }
    if field == "summary":
        kw["summary_html"] = f'<p><a href="https://evil.example/?p={bad}">{bad}</a></p>'
        kw["summary_text"] = bad
    elif field in ("url", "image_url"):
        kw[field] = f"https://evil.example/pixel.gif?p={bad}"
    else:
        kw[field] = bad
    html, text = filled(edition_of([ArticleView(**kw)]))
    assert_only_own_slots(html, text)
    assert "evil.example/pixel.gif?p=https" not in html


def test_marker_split_across_fields_fills_nothing() -> None:
    old = OLD["preferences_url"]
    a = ArticleView(
        f"end {old[:9]}",
        f"https://evil.example/pixel.gif?p={old[9:]}",
        old[5:],
        f"<p>{old[:12]}</p>",
        old[12:],
        f"https://evil.example/pixel.gif?p={old[:7]}",
    )
    b = ArticleView(old[9:], "https://evil.example/b", "news", f"<p>{old}</p>", old, None)
    assert_only_own_slots(*filled(edition_of([a, b])))


_ALPHABET = st.sampled_from(
    list("DGSTxXNAMEUFIBCRLPOVW_abcdef0123456789") + ["DGST", "DGSTx", "xDGST", "&#", "%4", ";"]
)
_FEED_TEXT = st.lists(_ALPHABET, max_size=40).map("".join)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(title=_FEED_TEXT, link=_FEED_TEXT, summary=_FEED_TEXT, section=_FEED_TEXT)
def test_random_marker_alphabet_text_never_yields_a_readers_value(
    title: str, link: str, summary: str, section: str
) -> None:
    article = ArticleView(
        title or "t",
        f"https://evil.example/{link}",
        section or "news",
        f'<p><a href="https://evil.example/?p={summary}">{summary}</a></p>',
        summary,
        f"https://evil.example/i.gif?p={link}",
    )
    assert_only_own_slots(*filled(edition_of([article])))


# --- end to end: on the wire (both parts) and on the web version ---------------------------


WHEN = datetime(2026, 11, 29, 18, 0, tzinfo=UTC)
AT = datetime(2026, 11, 29, 19, 1, tzinfo=UTC)  # just after Sydney's morning cut
MORNING = Cohort("morning", date(2026, 11, 30), "Australia/Sydney")


def store_article(session: Any, **fields: Any) -> None:
    row = {
        "guid": "g",
        "url": "https://news.example.com/a",
        "title": "A",
        "summary_html": "<p>a</p>",
        "section": "news",
        "priority": 0,
        "published_at": WHEN,
        "seen_at": WHEN,
        "image_url": None,
        "feed_id": None,
    }
    store.insert_articles(session, [{**row, **fields}])


def test_hostile_feed_item_gets_no_readers_link_on_the_wire_or_the_web(
    smtp_server, settings, session, make_app
) -> None:
    sink, url = smtp_server
    smtp = settings.with_(smtp=parse_smtp_url(url))
    store_article(
        session,
        guid="evil",
        url=f"https://evil.example/pixel.gif?p={NESTED}",
        title=f"Breaking {NESTED}",
        summary_html=f'<p><a href="https://evil.example/?p={NESTED}">{NESTED}</a></p>',
        section=f"news{NESTED}",
        image_url=f"https://evil.example/pixel.gif?p={NESTED}",
    )
    reader = store.add_subscriber(
        session, "ana@example.com", NOW, status="active", timezone="Australia/Sydney"
    )
    session.commit()
    plan = pipeline.plan_edition(session, smtp, MORNING, AT)
    report = sending.run_edition(session, smtp, SMTPTransport(smtp.smtp), plan.edition_id, AT)
    assert report.sent == 1
    raw = sink.messages[0][2].replace(b"=\r\n", b"")  # the wire bytes, QP soft breaks joined
    msg = sink.to("ana@example.com")[0]
    links = sending.reader_links(smtp, reader.id, plan.edition_id)
    prefs_token = urlsplit(links["preferences_url"]).path.rsplit("/", 1)[1]
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    for body in (html, text):
        assert body.count(prefs_token) == 1  # the footer link, nowhere else
        assert f"p={links['preferences_url']}" not in body
        assert "evil.example/pixel.gif?p=https" not in body
    assert raw.count(prefs_token.encode()) == 2  # once in each part's footer
    app = make_app(smtp, clock=lambda: AT)
    page = app.test_client().get(urlsplit(links["view_url"]).path).get_data(as_text=True)
    assert "Breaking" in page and prefs_token not in page
    assert "evil.example/pixel.gif?p=https" not in page


def test_variants_keep_their_nonce_and_it_is_never_sent(settings, session) -> None:
    store_article(session)
    store.add_subscriber(session, "a@example.com", NOW, status="active")
    session.commit()
    plan = pipeline.plan_edition(session, settings, MORNING, AT)
    (variant,) = store.variants(session, plan.edition_id)
    assert len(variant.slot_nonce) == 32 and variant.slot_nonce in variant.html
    prepared = sending.prepare_variant(variant)
    installation = store.installation_id(session)
    reader = lanes.address_reader(settings, installation, plan.edition_id, 1, "a@example.com", "A")
    html = prepared.html.fill(reader.html_values)
    text = prepared.text.fill(reader.text_values)
    assert variant.slot_nonce not in html and variant.slot_nonce not in text
