"""Sanitising feed HTML and titles: parametrized tables, hostile input first."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from digest.feeds.sanitize import clean_summary, clean_title, html_to_text, safe_url
from digest.mail.addresses import check_header_value, fold_header_text

# Markup that must never survive into a stored summary, whatever wraps it.
FORBIDDEN = (
    "<script",
    "alert",
    "onerror",
    "onclick",
    "onload",
    "onmouseover",
    "javascript:",
    "vbscript:",
    "data:",
    "<style",
    "<iframe",
    "<img",
    "<svg",
    "<object",
    "<form",
    "style=",
    "src=",
)


@pytest.mark.parametrize(
    "raw",
    [
        "<p>Hello</p><script>alert(1)</script>",
        "<p>Hello<script src='https://evil.example/x.js'></script></p>",
        '<p onclick="alert(1)">Hello</p>',
        '<img src="x" onerror="alert(1)"><p>Hello</p>',
        '<p>Hello <a href="javascript:alert(1)">link</a></p>',
        '<p>Hello <a href="JaVaScRiPt:alert(1)">link</a></p>',
        '<p>Hello <a href="jav&#x09;ascript:alert(1)">link</a></p>',
        '<p>Hello <a href=" javascript:alert(1)">link</a></p>',
        '<p>Hello <a href="vbscript:alert(1)">link</a></p>',
        '<p>Hello <a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a></p>',
        "<style>p { background: url(javascript:alert(1)) }</style><p>Hello</p>",
        '<p style="background:url(javascript:alert(1))">Hello</p>',
        '<iframe src="https://evil.example/">alert(1)</iframe><p>Hello</p>',
        '<svg onload="alert(1)"><script>alert(1)</script></svg><p>Hello</p>',
        '<object data="https://evil.example/x.swf">alert(1)</object><p>Hello</p>',
        '<form action="https://evil.example/"><input onfocus="alert(1)"></form><p>Hello</p>',
        '<noscript><img src=x onerror="alert(1)"></noscript><p>Hello</p>',
        '<math><mi xlink:href="javascript:alert(1)">m</mi></math><p>Hello</p>',
        "<p>Hello</p><!-- <script>alert(1)</script> -->",
        '<a href="https://ok.example/" onmouseover="alert(1)">Hello</a>',
        "<<script>script>alert(1)<</script>/script><p>Hello</p>",
        '<p>Hello</p><base href="javascript:alert(1)//">',
    ],
)
def test_clean_summary_removes_hostile_markup(raw: str) -> None:
    cleaned = clean_summary(raw)
    assert "Hello" in cleaned
    lowered = cleaned.lower()
    for bad in FORBIDDEN:
        assert bad not in lowered, f"{bad!r} survived in {cleaned!r}"


@pytest.mark.parametrize(
    ("raw", "base", "expected"),
    [
        ("", None, ""),
        ("<p>Plain <strong>bold</strong></p>", None, "<p>Plain <strong>bold</strong></p>"),
        ("Tom &amp; Jerry", None, "Tom &amp; Jerry"),
        ("1 < 2", None, "1 &lt; 2"),
        (
            '<a href="https://ok.example/a?x=1&amp;y=2" title="t">x</a>',
            None,
            '<a href="https://ok.example/a?x=1&amp;y=2" title="t" rel="noopener noreferrer">x</a>',
        ),
        (
            '<a href="mailto:desk@example.com">mail</a>',
            None,
            '<a href="mailto:desk@example.com" rel="noopener noreferrer">mail</a>',
        ),
        # Relative links are meaningless in an email: resolved against the article, or gone.
        ('<a href="/more">more</a>', None, '<a rel="noopener noreferrer">more</a>'),
        ('<a href="//evil.example/x">x</a>', None, '<a rel="noopener noreferrer">x</a>'),
        (
            '<a href="/more">more</a>',
            "https://news.example.com/story/1",
            '<a href="https://news.example.com/more" rel="noopener noreferrer">more</a>',
        ),
        (
            '<a href="javascript:alert(1)">x</a>',
            "https://news.example.com/",
            '<a rel="noopener noreferrer">x</a>',
        ),
        ("<div><span>unwrapped</span></div>", None, "unwrapped"),
        ("<h1>Head</h1><p>Body</p>", None, "Head<p>Body</p>"),
        ("<p>bell\x07 and escape\x1b[31m red</p>", None, "<p>bell and escape[31m red</p>"),
        ("<p>nul&#0;and&#27;esc</p>", None, "<p>nul\ufffdandesc</p>"),
        (
            '<p>x</p><a rel="opener" target="_blank" href="https://a.example/">a</a>',
            None,
            '<p>x</p><a href="https://a.example/" rel="noopener noreferrer">a</a>',
        ),
    ],
)
def test_clean_summary(raw: str, base: str | None, expected: str) -> None:
    assert clean_summary(raw, base=base) == expected


def test_clean_summary_overlong_becomes_escaped_text_with_an_ellipsis() -> None:
    raw = "<p>" + "word & more " * 1000 + "</p>"
    cleaned = clean_summary(raw, limit=100)
    assert cleaned.endswith("…")
    assert "<p>" not in cleaned and "&amp;" in cleaned
    assert len(cleaned.replace("&amp;", "&")) <= 100


def test_clean_summary_huge_input_is_cut_not_choked_on() -> None:
    raw = "<p>" + "x" * 1_000_000 + "</p><script>alert(1)</script>"
    cleaned = clean_summary(raw)
    assert cleaned.endswith("…") and len(cleaned) <= 4000
    assert "script" not in cleaned


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", ""),
        ("Plain title", "Plain title"),
        ("<b>Big</b> news", "Big news"),
        ("<script>alert(1)</script>Hello", "Hello"),
        ('<img src=x onerror="alert(1)">Hello', "Hello"),
        ("<style>b{}</style>Hello", "Hello"),
        ("AT&amp;T &lt;3 Python", "AT&T <3 Python"),
        ("AT&T <3 Python", "AT&T <3 Python"),
        ("&lt;script&gt;alert(1)&lt;/script&gt;", "<script>alert(1)</script>"),
        ("Breaking\r\nBcc: victim@example.com", "Breaking Bcc: victim@example.com"),
        ("Breaking&#13;&#10;Bcc: victim@example.com", "Breaking Bcc: victim@example.com"),
        ("One\u2028Two\u2029Three\x85Four\x0bFive\x0cSix", "One Two Three Four Five Six"),
        ("  lots \t of   space  ", "lots of space"),
        ("Null\x00 and escape\x1b[2J", "Null and escape[2J"),
        ("<p>First</p><p>Second</p>", "First Second"),
        ("Line<br>break", "Line break"),
        ("x" * 400, "x" * 300),
    ],
)
def test_clean_title(raw: str, expected: str) -> None:
    assert clean_title(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "Breaking\r\nBcc: victim@example.com",
        "Breaking\nSubject: free money",
        "Breaking&#13;&#10;Bcc: victim@example.com",
        "Breaking\u2028Bcc: victim@example.com",
        "=?utf-8?q?Breaking=0D=0ABcc=3A_victim=40example=2Ecom?=",
        "Breaking <br>\r\n\r\n<p>body?</p>",
    ],
)
def test_hostile_title_cannot_create_a_header(raw: str) -> None:
    subject = fold_header_text(clean_title(raw))
    assert check_header_value(subject) == subject
    message = EmailMessage()
    message["Subject"] = subject
    message["To"] = "reader@example.com"
    message.set_content("body")
    parsed = message_from_bytes(message.as_bytes(), policy=policy.default)
    assert parsed["Bcc"] is None
    assert parsed.get_all("Subject") == [subject]
    assert "\n" not in str(parsed["Subject"]) and "\r" not in str(parsed["Subject"])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", ""),
        ("<p>One</p><p>Two</p>", "One Two"),
        ("<ul><li>a</li><li>b</li></ul>", "a b"),
        ("<h2>Head</h2>Body", "Head Body"),
        ("H<sub>2</sub>O", "H2O"),
        ("<b>bold</b>text", "boldtext"),
        ("a&nbsp;b &amp; c", "a b & c"),
        ("<script>var x = 1;</script>Seen", "Seen"),
        ("<iframe>fallback</iframe>Seen", "Seen"),
        ("<!-- hidden -->Seen", "Seen"),
    ],
)
def test_html_to_text(raw: str, expected: str) -> None:
    assert html_to_text(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://news.example.com/a", "https://news.example.com/a"),
        ("  http://news.example.com/a?b=1#c  ", "http://news.example.com/a?b=1#c"),
        ("HTTPS://News.Example.com/", "HTTPS://News.Example.com/"),
        ("https://news.example.com:8443/a", "https://news.example.com:8443/a"),
        (None, None),
        ("", None),
        (42, None),
        (["https://news.example.com/"], None),
        ("javascript:alert(1)", None),
        ("JavaScript:alert(1)", None),
        ("data:text/html,<script>alert(1)</script>", None),
        ("vbscript:msgbox", None),
        ("file:///etc/passwd", None),
        ("ftp://news.example.com/a", None),
        ("mailto:desk@example.com", None),
        ("/relative/path", None),
        ("//news.example.com/a", None),
        ("news.example.com/a", None),
        ("https://", None),
        ("https://:80/", None),
        ("https://news.example.com/a b", None),
        ("https://news.example.com/a\r\nSet-Cookie: x=1", None),
        ("https://news.example.com/a\x00", None),
        ("https://evil.example\\@news.example.com/", None),
        ("https://news.example.com:99999/", None),
        ("https://news.example.com:port/", None),
        ("http://[::1/", None),
        ("https://news.example.com/" + "a" * 2000, None),
    ],
)
def test_safe_url(raw: object, expected: str | None) -> None:
    assert safe_url(raw) == expected
