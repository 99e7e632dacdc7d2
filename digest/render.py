"""Edition HTML and text: rendered and inlined once, personalised per reader by splicing."""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from premailer import Premailer

from digest.addresses import fold_header_text

# Per-reader values are rendered as these markers, which survive Jinja escaping and
# premailer's serialisation untouched, and are spliced in per message afterwards.
SLOT_NAMES = ("name_suffix", "unsubscribe_url", "preferences_url", "view_url")
SLOTS = {name: f"DGSTx{name.replace('_', 'x').upper()}xDGST" for name in SLOT_NAMES}
_SLOT_RE = re.compile("(" + "|".join(SLOTS.values()) + ")")
_SLOT_BY_MARK = {mark: name for name, mark in SLOTS.items()}


@dataclass(frozen=True)
class ArticleView:
    title: str
    url: str
    section: str
    summary_html: str = ""
    summary_text: str = ""
    image_url: str | None = None
    published_at: datetime | None = None


@dataclass(frozen=True)
class EditionView:
    slot: str
    local_day: date
    timezone: str
    articles: Sequence[ArticleView]
    sender_name: str
    postal_address: str
    editions_label: str = "morning and evening editions"


@dataclass(frozen=True)
class Rendered:
    """One edition variant, inlined, with per-reader slots still open."""

    subject: str
    html: str
    text: str


@dataclass
class Splicer:
    """A template cut at its slots once, so filling it in is a join, not a search."""

    parts: list[str] = field(default_factory=list)
    slots: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, template: str) -> Splicer:
        pieces = _SLOT_RE.split(template)
        return cls(parts=pieces[0::2], slots=[_SLOT_BY_MARK[m] for m in pieces[1::2]])

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
    day = view.local_day.strftime("%A %-d %B")
    lead = view.articles[0].title if view.articles else ""
    subject = f"{edition_title(view.slot)}, {day}: {lead}" if lead else edition_title(view.slot)
    return fold_header_text(subject, limit=150)


def defuse(text: str) -> str:
    """Remove slot markers from outside text: a feed that wrote one into a summary
    would otherwise have each reader's private links spliced into its own URL."""
    return _SLOT_RE.sub("", text) if "DGSTx" in text else text


def _defused(view: EditionView) -> EditionView:
    articles = [
        replace(
            a,
            title=defuse(a.title),
            url=defuse(a.url),
            section=defuse(a.section),
            summary_html=defuse(a.summary_html),
            summary_text=defuse(a.summary_text),
            image_url=defuse(a.image_url) if a.image_url else a.image_url,
        )
        for a in view.articles
    ]
    return replace(
        view,
        articles=articles,
        sender_name=defuse(view.sender_name),
        postal_address=defuse(view.postal_address),
    )


def render_edition(view: EditionView, templates_dir: Path) -> Rendered:
    """Render one variant and inline its CSS (the only premailer call per variant)."""
    view = _defused(view)
    html_env, text_env = environment(templates_dir)
    context = {
        "subject": subject_for(view),
        "title": edition_title(view.slot),
        "dateline": view.local_day.strftime("%A %-d %B %Y"),
        "preheader": " · ".join(a.title for a in view.articles[:3]),
        "greeting": "Good morning" if view.slot == "morning" else "Good evening",
        "groups": group_by_section(view.articles),
        "sender_name": view.sender_name,
        "postal_address": view.postal_address,
        "editions_label": view.editions_label,
        "slots": SLOTS,
    }
    raw_html = html_env.get_template("email/edition.html").render(context)
    text = text_env.get_template("email/edition.txt").render(context)
    return Rendered(subject=context["subject"], html=inline_css(raw_html), text=text)  # type: ignore[arg-type]


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
    *, name: str, unsubscribe_url: str, preferences_url: str, view_url: str, for_html: bool
) -> dict[str, str]:
    """What fills a reader's slots; HTML gets escaped values, text gets plain ones."""
    clean_name = fold_header_text(name, limit=80)
    values = {
        "name_suffix": f" {clean_name}" if clean_name else "",
        "unsubscribe_url": unsubscribe_url,
        "preferences_url": preferences_url,
        "view_url": view_url,
    }
    return html_escaped(values) if for_html else values


def html_escaped(values: dict[str, str]) -> dict[str, str]:
    """Slot values made safe for the HTML body."""
    return {k: html.escape(v, quote=True) for k, v in values.items()}
