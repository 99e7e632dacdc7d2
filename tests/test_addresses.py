"""Addresses and header text: malformed input is refused with a reason."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from digest.errors import HeaderInjection, InvalidAddress
from digest.mail.addresses import (
    check_header_value,
    fold_header_text,
    folded,
    normalise_address,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ana@example.com", "ana@example.com"),
        ("  Ana.Souza+news@Example.COM ", "ana.souza+news@example.com"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("user@bücher.example", "user@xn--bcher-kva.example"),
    ],
)
def test_good_addresses(raw: str, expected: str) -> None:
    assert normalise_address(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("ana", "exactly one @"),
        ("ana@@example.com", "exactly one @"),
        ("a@b@example.com", "exactly one @"),
        ("ana@example", "invalid domain"),
        ("ana@-example.com", "invalid domain"),
        (".ana@example.com", "local part"),
        ("an..a@example.com", "local part"),
        ("ana smith@example.com", "local part"),
        ("ana@example.com\r\nBcc: victim@example.org", "line break"),
        ("ana@example.com\nX: y", "line break"),
        ("ana\x00@example.com", "control"),
        ("a" * 65 + "@example.com", "local part"),
        ("ana@" + "a" * 250 + ".com", "domain"),
    ],
)
def test_bad_addresses_name_the_reason(raw: str, reason: str) -> None:
    with pytest.raises(InvalidAddress, match=reason):
        normalise_address(raw)


def test_invalid_address_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        normalise_address("nope")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ana", "Ana"),
        ("Ana\r\nBcc: evil@example.org", "Ana Bcc: evil@example.org"),
        ("Ana\u2028Bcc: x", "Ana Bcc: x"),
        ("=?utf-8?q?Ana=0D=0ABcc:_x?=", "= ?utf-8?q?Ana=0D=0ABcc:_x?="),
        ("  lots   of\t space ", "lots of space"),
    ],
)
def test_fold_header_text(raw: str, expected: str) -> None:
    assert fold_header_text(raw) == expected


@given(st.text(st.characters(max_codepoint=0x3000), max_size=90), st.sampled_from([10, 80, 200]))
def test_the_short_way_for_folded_text_folds_the_same(raw: str, limit: int) -> None:
    """Text already folded (names are, at import) skips the work and comes out the same."""
    assert fold_header_text(raw, limit) == folded(raw, limit)


def test_check_header_value_refuses_breaks() -> None:
    assert check_header_value("<a@b>") == "<a@b>"
    with pytest.raises(HeaderInjection):
        check_header_value("x\r\nBcc: y")
