"""Counts read right wherever digest writes one: "1 reader", "2 readers"."""

from email import message_from_bytes, policy

import pytest

from digest.readers.sunset import compose
from digest.words import counted, noun
from tests.conftest import NOW, make_settings


@pytest.mark.parametrize(
    ("count", "singular", "want"),
    [
        (0, "reader", "0 readers"),
        (1, "reader", "1 reader"),
        (2, "reader", "2 readers"),
        (1, "delivery", "1 delivery"),
        (3, "delivery", "3 deliveries"),
        (2, "day", "2 days"),  # a vowel before the y: a plain s
        (2, "section choice", "2 section choices"),
    ],
)
def test_a_count_and_its_noun(count: int, singular: str, want: str) -> None:
    assert counted(count, singular) == want


def test_an_irregular_plural_is_given() -> None:
    assert noun(2, "index", "indexes") == "indexes" and noun(1, "index", "indexes") == "index"


def test_the_re_permission_email_says_1_day_and_1_edition(tmp_path) -> None:
    """Counts from the settings in a reader's email: DIGEST_SUNSET_DAYS=1 reads "1 day"."""
    one = {"DIGEST_SUNSET_DAYS": "1", "DIGEST_SUNSET_EDITIONS": "1"}
    settings = make_settings(tmp_path, "sqlite://", DIGEST_CLICK_TRACKING="reader", **one)
    raw, _ = compose(settings, 7, "r@example.com", NOW)
    text = message_from_bytes(raw, policy=policy.default).get_body(("plain",)).get_content()
    flat = " ".join(text.split())
    assert "within 1 day," in flat and "your last 1 edition." in flat, flat
