"""Words that agree with their count: "1 reader", "2 readers", in every message and page."""

from __future__ import annotations


def noun(count: int, singular: str, plural: str = "") -> str:
    """`singular` for a count of one, else `plural`, by default the regular English
    plural: "reader" -> "readers", "delivery" -> "deliveries"."""
    if count == 1:
        return singular
    if plural:
        return plural
    if singular.endswith("y") and singular[-2:-1] not in ("a", "e", "i", "o", "u"):
        return singular[:-1] + "ies"
    return singular + "s"


def counted(count: int, singular: str, plural: str = "") -> str:
    """The count and its noun: counted(1, "reader") == "1 reader"."""
    return f"{count} {noun(count, singular, plural)}"
