"""detox.text.urls: defanging URLs in plain text."""

from __future__ import annotations

import time

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from detox.text.urls import DefangResult, defang_urls


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("https://evil.example/login", "hxxps://evil[.]example/login"),
        ("http://evil.example/", "hxxp://evil[.]example/"),
        ("HTTPS://EVIL.EXAMPLE/Login", "hxxps://EVIL[.]EXAMPLE/Login"),
        ("ftp://files.example.org/pub/a.tar.gz", "fxp://files[.]example[.]org/pub/a.tar.gz"),
        ("ftps://files.example.org/", "fxps://files[.]example[.]org/"),
        ("www.example.com/path", "www[.]example[.]com/path"),
        ("see www2.example.com.", "see www2[.]example[.]com."),
        ("ftp.example.jp/pub", "ftp[.]example[.]jp/pub"),
        # only the authority's dots; the path, query and fragment are left alone; ports are kept
        ("http://a.example:8080/x.y/z.html?q=a.b#f.g", "hxxp://a[.]example:8080/x.y/z.html?q=a.b#f.g"),
        ("http://192.0.2.1/admin", "hxxp://192[.]0[.]2[.]1/admin"),
        ("http://[2001:db8::1]:443/", "hxxp://[2001:db8::1]:443/"),
        ("https://user:pw@host.example/", "hxxps://user:pw@host[.]example/"),
        ("https://www.bank.example@evil.example/", "hxxps://www[.]bank[.]example@evil[.]example/"),
        # Japanese and IDN hosts, punycode
        ("https://例え.jp/ページ", "hxxps://例え[.]jp/ページ"),
        ("https://例え.テスト/", "hxxps://例え[.]テスト/"),
        ("https://xn--r8jz45g.xn--zckzah/", "hxxps://xn--r8jz45g[.]xn--zckzah/"),
        # full-width tricks
        (
            "ｈｔｔｐｓ：／／ｅｖｉｌ．ｅｘａｍｐｌｅ／ｌｏｇｉｎ",
            "hxxps://ｅｖｉｌ[.]ｅｘａｍｐｌｅ／ｌｏｇｉｎ",
        ),
        ("ＨＴＴＰ://evil｡example/", "hxxp://evil[.]example/"),
        ("ｗｗｗ．example．jp", "ｗｗｗ[.]example[.]jp"),
        ("http:\\\\evil.example\\share", "hxxp://evil[.]example\\share"),
        ("https:/evil.example/", "hxxps://evil[.]example/"),
        # a scheme repeated inside the URL is defanged as well
        ("https://t.example/r?u=https://evil.example/", "hxxps://t[.]example/r?u=hxxps://evil.example/"),
        (
            "https://t.example/r?u=https%3A%2F%2Fevil.example",
            "hxxps://t[.]example/r?u=https%3A%2F%2Fevil.example",
        ),
        # the sentence around the URL is kept
        ("詳細はhttps://example.jp/aをご覧ください。", "詳細はhxxps://example[.]jp/aをご覧ください。"),
        ("詳細はhttps://example.jpをご覧ください。", "詳細はhxxps://example[.]jpをご覧ください。"),
        ("「www.example.jp」へ", "「www[.]example[.]jp」へ"),
        ("(https://example.jp/a_(b)), next", "(hxxps://example[.]jp/a_(b)), next"),
        ("<https://example.jp/>", "<hxxps://example[.]jp/>"),
        ("www.example.jpまでinfo@example.jp", "www[.]example[.]jpまでinfo@example.jp"),
        ("http://", "hxxp://"),
    ],
)
def test_defang(source: str, expected: str) -> None:
    result = defang_urls(source)
    assert result.text == expected
    assert result.count == 1


@pytest.mark.parametrize(
    "source",
    [
        "taro.yamada@city.example.lg.jp",
        "連絡先：taro@www.example.jp まで",
        "www.taro@example.jp",
        "www.a!b+c@example.jp",
        "mailto:info@example.jp",
        "hxxps://evil[.]example/login",
        "hxxp://evil.example/",  # already defanged by someone else: left as it is
        "hxxps[:]//evil[.]example",
        "fxp://files[.]example[.]org",
        "www[.]example[.]jp",
        "ver.1.2 report.pdf example.jp 例え.jp",
        "x.www.example.com a-www.example.com",
        "www. alone, www.",
        "",
    ],
)
def test_left_alone(source: str) -> None:
    assert defang_urls(source) == DefangResult(text=source, count=0)


def test_count_is_the_number_of_urls_changed() -> None:
    source = (
        "a https://a.example/ b www.b.example c hxxp://c[.]example d https://d.example/?e=http://e.example"
    )
    result = defang_urls(source)
    assert result.count == 3
    assert result.text == (
        "a hxxps://a[.]example/ b www[.]b[.]example c hxxp://c[.]example "
        "d hxxps://d[.]example/?e=hxxp://e.example"
    )
    # Japanese text right after an ASCII host ends the URL, so the next one is found too.
    assert defang_urls("https://a.jpとhttps://b.jp") == DefangResult("hxxps://a[.]jpとhxxps://b[.]jp", 2)


@pytest.mark.parametrize(
    "source",
    [
        "www.a.com/www.b.com",
        "https://a.example/www.b.example",
        "http://a.b/?u=http://c.d",
        "hxxp://a.b/?u=http://c.d",
        "ｈｔｔｐｓ：／／ｅｖｉｌ．ｅｘａｍｐｌｅ／",
        "www.a]",
        "https://example.jp。www.example.jp",
        "http://x.yあ.www.z",
    ],
)
def test_idempotent(source: str) -> None:
    once = defang_urls(source)
    twice = defang_urls(once.text)
    assert twice.text == once.text
    assert twice.count == 0


def test_result_is_frozen() -> None:
    result = defang_urls("https://a.example/")
    with pytest.raises(AttributeError):
        result.count = 0  # type: ignore[misc]


# -- linear time --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "line",
    [
        "https://" + "a." * 500_000,
        "www." * 250_000,
        "http" * 250_000,
        "h" * 1_000_000,
        "https://a" + ")" * 1_000_000,
        "https://example.jp/x " * 50_000,
        "www.a@," * 150_000,
        "www.a'" * 170_000,
        "あwww.a" * 150_000,
        "http://a.bあ" * 100_000,
        "http://" + "aあ" * 500_000,
        "ｈｔｔｐ：／" * 200_000,
        "hxxp://" + "." * 1_000_000,
    ],
)
def test_one_megabyte_line_is_fast(line: str) -> None:
    assert len(line) >= 900_000
    started = time.monotonic()
    result = defang_urls(line)
    assert time.monotonic() - started < 10
    assert "http://" not in result.text.lower()


# -- properties ---------------------------------------------------------------------------------

_URLISH = st.lists(
    st.one_of(
        st.text(max_size=8),
        st.sampled_from(
            [
                "http://",
                "https://",
                "ftp://",
                "HTTPS://",
                "ｈｔｔｐｓ：／／",
                "hxxp://",
                "hxxps[:]//",
                "www.",
                "ｗｗｗ．",
                "ftp.",
                "www[.]",
                ".",
                "．",
                "｡",
                "/",
                "／",
                "?",
                "#",
                "@",
                ":",
                "[",
                "]",
                "(",
                ")",
                "[.]",
                "example",
                "例え",
                "xn--r8jz45g",
                "jp",
                "com",
                " ",
                "\n",
                "、",
                "。",
                "「",
                "」",
                "'",
                "`",
                "<",
                ">",
                "8080",
                "をご覧",
                "taro",
            ]
        ),
    ),
    max_size=30,
).map("".join)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None)
@given(st.one_of(_URLISH, st.text()))
@example("www.a.com/www.b.com")
@example("http://a.b/?u=http://c.d")
def test_property_idempotent_and_no_clickable_scheme_left(source: str) -> None:
    once = defang_urls(source)
    assert isinstance(once.text, str)
    assert once.count >= 0
    assert (once.count == 0) == (once.text == source)
    twice = defang_urls(once.text)
    assert twice.text == once.text
    assert twice.count == 0
    lowered = once.text.lower()
    assert "http://" not in lowered
    assert "https://" not in lowered
    assert "ftp://" not in lowered


@settings(max_examples=300, deadline=None)
@given(
    st.emails(),
    st.sampled_from(["", " ", "連絡先：", "mail: ", "\n"]),
    st.sampled_from(["", " ", "まで", "."]),
)
def test_property_email_addresses_are_left_alone(address: str, before: str, after: str) -> None:
    local = address.rsplit("@", 1)[0]
    assume(not any(c in local for c in "/?#"))  # those would start a URL path after "www."
    source = before + address + after
    assert defang_urls(source) == DefangResult(text=source, count=0)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_URLISH, st.text()), st.sampled_from(["X" * 300 + "\n", "ご案内 0123 @.:/ 。\n" * 20, ""]))
def test_property_text_without_url_letters_is_skipped_not_changed(source: str, prefix: str) -> None:
    # The scan jumps to the next h/f/w (or full-width form): a stretch without one changes nothing
    # and moves nothing, before, between and after URLs.
    once = defang_urls(source)
    assert defang_urls(prefix + source) == DefangResult(text=prefix + once.text, count=once.count)
    assert defang_urls(source + "\n" + prefix).text == once.text + "\n" + prefix
