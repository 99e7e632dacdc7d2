"""Edition HTML and text: rendered and inlined once, personalised per reader by splicing."""

from __future__ import annotations

import html
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from premailer import Premailer

from digest.editions.budget import (
    MESSAGE_BUDGET,
    SUMMARY_LIMITS,
    cut_on_word,
    fit_summaries,
    message_size,
    subject_line,
)
from digest.mail.addresses import fold_header_text
from digest.words import noun

# click_reader: reader mode's part of the click links (digest/editions/clicks.py); empty
# in every rendering anyone may see.
SLOT_NAMES = ("name_suffix", "unsubscribe_url", "preferences_url", "view_url", "click_reader")
_NONCE = re.compile(r"[0-9a-f]{32,64}")


@dataclass(frozen=True)
class SlotMarks:
    """The markers of one rendering's per-reader slots.

    Each marker carries a random nonce drawn when the edition is rendered and kept only
    beside the rendering (the variant row), never in anything a feed can see: feed text
    cannot spell a marker, however it nests, splits, encodes or guesses, so only the
    template's own slots are ever filled with a reader's values.
    """

    nonce: str

    def __post_init__(self) -> None:
        if not _NONCE.fullmatch(self.nonce):
            raise ValueError("slot nonce must be 32 to 64 lowercase hex digits")

    @classmethod
    def fresh(cls) -> SlotMarks:
        return cls(secrets.token_hex(16))

    @property
    def by_name(self) -> dict[str, str]:
        # Letters and digits only: they pass Jinja escaping, URL attributes and
        # premailer's serialisation unchanged.
        return {name: f"DGST{self.nonce}{name.replace('_', '').upper()}" for name in SLOT_NAMES}

    def split(self, template: str) -> list[str]:
        """The template cut at its markers: text, marker, text, ..., text."""
        marks = self.by_name
        return re.split("(" + "|".join(marks.values()) + ")", template)


@dataclass(frozen=True)
class ArticleView:
    title: str
    url: str
    section: str
    summary_html: str = ""
    summary_text: str = ""
    image_url: str | None = None
    published_at: datetime | None = None
    # The url is a click link whose reader part is a slot (DIGEST_CLICK_TRACKING=reader).
    click_slot: bool = False


@dataclass(frozen=True)
class EditionView:
    slot: str
    local_day: date
    timezone: str
    articles: Sequence[ArticleView]
    sender_name: str
    postal_address: str
    editions_label: str = "morning and evening editions"
    pixel_url: str = ""  # DIGEST_OPEN_TRACKING's image, when on


@dataclass(frozen=True)
class Rendered:
    """One edition variant, inlined, with per-reader slots still open."""

    subject: str
    html: str
    text: str
    slot_nonce: str


@dataclass
class Splicer:
    """A template cut at its slots once, so filling it in is a join, not a search."""

    parts: list[str] = field(default_factory=list)
    slots: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, template: str, marks: SlotMarks) -> Splicer:
        by_mark = {mark: name for name, mark in marks.by_name.items()}
        pieces = marks.split(template)
        return cls(parts=pieces[0::2], slots=[by_mark[m] for m in pieces[1::2]])

    def fill(self, values: dict[str, str]) -> str:
        out = [self.parts[0]]
        for slot, part in zip(self.slots, self.parts[1:], strict=True):
            out.append(values[slot])
            out.append(part)
        return "".join(out)


@lru_cache(maxsize=8)
def environment(templates_dir: Path) -> tuple[Environment, Environment]:
    """Jinja environments: HTML with autoescape on, text without."""
    loader = FileSystemLoader(str(templates_dir))
    html_env = Environment(
        loader=loader,
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
    )
    text_env = Environment(
        loader=loader,
        autoescape=False,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    for env in (html_env, text_env):
        env.globals["noun"] = noun
    return html_env, text_env


def group_by_section(articles: Sequence[ArticleView]) -> list[dict[str, object]]:
    groups: list[dict[str, object]] = []
    for article in articles:
        if not groups or groups[-1]["section"] != article.section.title():
            groups.append({"section": article.section.title(), "articles": []})
        groups[-1]["articles"].append(article)  # type: ignore[attr-defined]
    return groups


def edition_title(slot: str) -> str:
    return f"The {slot.title()} Edition"


def subject_for(view: EditionView) -> str:
    """The edition's name and date, then the lead title cut on a word (~78 characters)."""
    day = view.local_day.strftime("%A %-d %B")
    lead = view.articles[0].title if view.articles else ""
    return subject_line(f"{edition_title(view.slot)}, {day}", lead)


def render_edition(view: EditionView, templates_dir: Path) -> Rendered:
    """Render one variant and inline its CSS (premailer once per variant, again only
    when its summaries have to be shortened to keep the message under Gmail's clip)."""
    for limit in SUMMARY_LIMITS:
        fitted = replace(view, articles=fit_summaries(view.articles, limit))
        rendered = _render(fitted, templates_dir)
        if message_size(rendered.html, rendered.text) <= MESSAGE_BUDGET:
            break
    return rendered


def _render(view: EditionView, templates_dir: Path) -> Rendered:
    marks = SlotMarks.fresh()
    html_env, text_env = environment(templates_dir)
    context = {
        "subject": subject_for(view),
        "title": edition_title(view.slot),
        "dateline": view.local_day.strftime("%A %-d %B %Y"),
        "preheader": cut_on_word(" · ".join(a.title for a in view.articles[:3]), 140),
        "greeting": "Good morning" if view.slot == "morning" else "Good evening",
        "groups": group_by_section(view.articles),
        "sender_name": view.sender_name,
        "postal_address": view.postal_address,
        "editions_label": view.editions_label,
        "slots": marks.by_name,
        "pixel_url": view.pixel_url,
    }
    raw_html = html_env.get_template("email/edition.html").render(context)
    text = text_env.get_template("email/edition.txt").render(context)
    subject = str(context["subject"])
    return Rendered(subject, inline_css(raw_html), text, marks.nonce)


def inline_css(raw_html: str) -> str:
    """premailer with the network off: every style must come from the template itself."""
    return Premailer(
        raw_html,
        allow_network=False,
        disable_validation=True,
        cssutils_logging_level=logging.CRITICAL,
        remove_classes=False,
        strip_important=False,
        # The template's own width attributes (600 on the container, 552 on images, for
        # Outlook) must stay: premailer would copy CSS widths such as 100% over them.
        disable_basic_attributes=["width", "height"],
    ).transform()


def slot_values(
    *,
    name: str,
    unsubscribe_url: str,
    preferences_url: str,
    view_url: str,
    for_html: bool,
    click_reader: str = "",
) -> dict[str, str]:
    """What fills a reader's slots; HTML gets escaped values, text gets plain ones."""
    clean_name = fold_header_text(name, limit=80)
    values = {
        "name_suffix": f" {clean_name}" if clean_name else "",
        "unsubscribe_url": unsubscribe_url,
        "preferences_url": preferences_url,
        "view_url": view_url,
        "click_reader": click_reader,
    }
    return html_escaped(values) if for_html else values


def html_escaped(values: dict[str, str]) -> dict[str, str]:
    """Slot values made safe for the HTML body: the same dict when none needs it (links
    and most names: one look at them all), else a copy with those escaped."""
    if not _HTML_SPECIAL.search("".join(values.values())):
        return values
    return {
        k: html.escape(v, quote=True) if _HTML_SPECIAL.search(v) else v for k, v in values.items()
    }


_HTML_SPECIAL = re.compile("[&<>\"']")
