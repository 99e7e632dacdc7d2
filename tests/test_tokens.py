"""Signed tokens: bound to purpose, subscriber and expiry; forgeries change nothing."""

import re
from datetime import UTC, datetime, timedelta

import pytest

from digest.errors import InvalidToken
from digest.mail.tokens import (
    OurMessageId,
    make_token,
    message_id,
    read_message_id,
    read_token,
    sign,
    single_message_id,
)

SECRET = "s3cret"
NOW = datetime(2026, 11, 29, tzinfo=UTC)


def test_round_trip() -> None:
    token = make_token(SECRET, "unsubscribe", 42)
    assert read_token(SECRET, "unsubscribe", token) == 42


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.replace(t.split(".")[0], "1", 1),  # another subscriber's id
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # flipped signature
        lambda t: t + "x",
        lambda t: "",
        lambda t: "...",
        lambda t: "x" * 500,
    ],
)
def test_tampered_tokens_are_refused(mutate: object) -> None:
    token = make_token(SECRET, "unsubscribe", 42)
    with pytest.raises(InvalidToken):
        read_token(SECRET, "unsubscribe", mutate(token))  # type: ignore[operator]


def test_purpose_and_secret_are_bound() -> None:
    token = make_token(SECRET, "view", 42)
    with pytest.raises(InvalidToken):
        read_token(SECRET, "unsubscribe", token)
    with pytest.raises(InvalidToken):
        read_token("other", "view", token)


def test_expiry() -> None:
    token = make_token(SECRET, "confirm", 7, expires=NOW + timedelta(hours=1))
    assert read_token(SECRET, "confirm", token, now=NOW) == 7
    with pytest.raises(InvalidToken, match="expired"):
        read_token(SECRET, "confirm", token, now=NOW + timedelta(hours=2))


def test_message_id_is_deterministic_and_distinct() -> None:
    a = message_id(SECRET, "k3x9q2ab", 1, 2, "example.com")
    assert a == message_id(SECRET, "k3x9q2ab", 1, 2, "example.com")
    assert a != message_id(SECRET, "k3x9q2ab", 1, 3, "example.com")
    assert a != message_id(SECRET, "m7p4r2cd", 1, 2, "example.com")
    assert a.startswith("<digest.1.2.") and a.endswith(".k3x9q2ab@example.com>")


def test_a_message_id_is_read_back_with_its_installation() -> None:
    a = message_id(SECRET, "k3x9q2ab", 12, 345, "example.com")
    assert read_message_id(SECRET, f"  {a} ") == OurMessageId(12, 345, "k3x9q2ab")
    assert read_message_id("another key", a) is None
    other = message_id(SECRET, "m7p4r2cd", 12, 345, "example.com")
    # Moving one installation's tag under another's id breaks the tag.
    swapped = other.replace(".m7p4r2cd@", ".k3x9q2ab@")
    assert read_message_id(SECRET, swapped) is None
    assert read_message_id(SECRET, a.replace("<digest.12.", "<digest.13.")) is None


def test_a_message_id_of_before_installation_ids_is_still_read() -> None:
    tag = sign(SECRET, "msgid|1|2")[:10].replace("-", "x").replace("_", "y")
    assert read_message_id(SECRET, f"<digest.1.2.{tag}@example.com>") == OurMessageId(1, 2, "")


def test_single_message_ids_carry_the_installation() -> None:
    a = single_message_id("signup", "k3x9q2ab", "example.com")
    assert re.fullmatch(r"<signup\.k3x9q2ab\.[0-9a-f]{16}@example\.com>", a)
    assert a != single_message_id("signup", "k3x9q2ab", "example.com")


@pytest.mark.parametrize("secret", ["k", "a-much-longer-secret-" * 5, "clé"])
def test_the_keyed_mac_is_hmac_sha256(secret: str) -> None:
    import hashlib
    import hmac

    from digest.mail.tokens import mac

    for message in (b"", b"unsubscribe|3f|", b"x" * 200):
        assert mac(secret, message) == hmac.new(secret.encode(), message, hashlib.sha256).digest()


@pytest.mark.parametrize("subscriber_id", [0, 1, 35, 36, 123456789])
def test_a_readers_tokens_in_one_go_are_make_tokens(subscriber_id: int) -> None:
    from digest.mail.tokens import make_token, reader_tokens

    assert reader_tokens("s", subscriber_id, "42") == (
        make_token("s", "unsubscribe", subscriber_id),
        make_token("s", "preferences", subscriber_id),
        make_token("s", "view", subscriber_id, scope="42"),
    )
