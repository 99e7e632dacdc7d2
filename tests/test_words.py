"""Counts read right wherever digest writes one: "1 reader", "2 readers"."""

import pytest

from digest.words import counted, noun


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
