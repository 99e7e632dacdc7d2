"""Rendering: autoescaped, inlined once, slots intact, phone-friendly."""

from datetime import date
from pathlib import Path

from digest.config import REPO_ROOT
from digest.editions.render import (
    ArticleView,
    EditionView,
    SlotMarks,
    Splicer,
    render_edition,
    slot_values,
)

TEMPLATES = REPO_ROOT / "templates"


def view(*articles: ArticleView, slot: str = "morning") -> EditionView:
    return EditionView(
        slot,
        date(2026, 11, 30),
        "Australia/Sydney",
        list(articles),
        "Gazette",
        "1 Example Street, Sydney",
    )


def article(title: str = "Title", section: str = "news", image: str | None = None) -> ArticleView:
    return ArticleView(
        title,
        "https://news.example.com/a?x=1&y=2",
        section,
        "<p>Safe <strong>summary</strong></p>",
        "Safe summary",
        image,
    )


def test_every_slot_survives_inlining_once_per_body() -> None:
    page = render_edition(view(article()), TEMPLATES)
    for name, mark in SlotMarks(page.slot_nonce).by_name.items():
        if name == "click_reader":  # only after reader-mode click links (test_clicks.py)
            assert mark not in page.html and mark not in page.text
            continue
        assert page.html.count(mark) == 1 and page.text.count(mark) == 1


def test_each_rendering_draws_its_own_nonce() -> None:
    first, second = (render_edition(view(article()), TEMPLATES) for _ in range(2))
    assert first.slot_nonce != second.slot_nonce and len(first.slot_nonce) == 32
    assert first.slot_nonce not in second.html


def test_titles_are_escaped_and_urls_attribute_safe() -> None:
    page = render_edition(view(article('<script>alert("x")</script> & "quotes"')), TEMPLATES)
    assert "<script>" not in page.html
    assert "&lt;script&gt;" in page.html
    assert 'href="https://news.example.com/a?x=1&amp;y=2"' in page.html
    assert "<strong>summary</strong>" in page.html  # sanitised summary HTML is kept


def test_css_is_inlined_and_only_media_queries_stay_in_a_style_block() -> None:
    page = render_edition(view(article(image="https://img.example.com/a.jpg")), TEMPLATES)
    assert 'class="article" style="' in page.html
    style_block = page.html.split("<style>", 1)[1].split("</style>", 1)[0]
    assert style_block.strip().startswith("@media")
    # The image scales with the column: a fixed width would hold a phone's table at 552 px.
    img = page.html.split("<img", 1)[1].split(">", 1)[0]
    assert "width:100%" in img.replace(" ", "") and 'width="552"' in img


def test_grouped_by_section_with_subject_and_footer() -> None:
    page = render_edition(
        view(article("A", "sport"), article("C", "sport"), article("B", "news"), slot="evening"),
        TEMPLATES,
    )
    assert page.subject.startswith("The Evening Edition, Monday 30 November: A")
    assert (
        page.html.index("Sport")
        < page.html.index(">A<")
        < page.html.index(">C<")
        < page.html.index("News")
        < page.html.index(">B<")
    )
    assert "1 Example Street, Sydney" in page.html and "1 Example Street, Sydney" in page.text
    assert "Unsubscribe" in page.html and "preferences" in page.html


def test_splicer_fills_html_escaped_values() -> None:
    page = render_edition(view(article()), TEMPLATES)
    values = slot_values(
        name='Ana <b>"',
        unsubscribe_url="https://x/u/1",
        for_html=True,
        preferences_url="https://x/p/1",
        view_url="https://x/v/1",
    )
    html = Splicer.of(page.html, SlotMarks(page.slot_nonce)).fill(values)
    assert "Good morning Ana &lt;b&gt;&#x27;" not in html
    assert "Good morning Ana &lt;b&gt;&quot;," in html
    assert 'href="https://x/u/1"' in html and "DGST" not in html


def test_templates_dir_exists() -> None:
    assert Path(TEMPLATES / "email" / "edition.html").exists()
