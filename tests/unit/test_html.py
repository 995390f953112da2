"""detox.text.html: untrusted HTML mail bodies to readable plain text."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import detox.text.html as html_module
from detox.text.html import HtmlText, html_to_text, is_script_url, link_target, strip_invisible

NEWSLETTER = """<!DOCTYPE html>
<html lang="ja">
<head>
<meta charset="utf-8">
<title>市報メールマガジン 第12号</title>
<style>body { font-family: "メイリオ"; } .hide { display: none; }</style>
<script>document.write("tracking");</script>
</head>
<body>
<!-- header start -->
<span style="display:none;max-height:0;overflow:hidden">プレヘッダーの隠しテキスト</span>
<table width="600" cellpadding="0" cellspacing="0" border="0" align="center">
  <tr>
    <td>
      <img src="https://example.jp/logo.png" alt="みどり市 ロゴ" width="200">
      <img src="https://example.jp/spacer.gif" width="1" height="1">
    </td>
  </tr>
  <tr><td>&nbsp;</td></tr>
  <tr>
    <td>
      <h1>市報メールマガジン&#12288;第12号</h1>
      <p>市民の皆さま、こんにちは。<br>
      <span>みどり</span><span>市</span>広報課です。&#8203;今月の<b>お知らせ</b>をお届けします。</p>
      <p>パス&#x200B;ワードの確認は<span style="font-size:0">偽の</span>不要です。</p>
      <h2>■ 今月のお知らせ</h2>
      <ul>
        <li>市民まつり：10月&nbsp;5日（土）
          <ul>
            <li>会場：中央公園</li>
            <li><p>雨天時は体育館</p></li>
          </ul>
        </li>
        <li><a href="https://www.city.example.lg.jp/event/">詳細はこちら</a></li>
        <li><a href="https://www.city.example.lg.jp/">www.city.example.lg.jp</a></li>
      </ul>
      <ol start="3">
        <li>申込書を記入</li>
        <li>窓口へ提出</li>
      </ol>
      <table border="1">
        <tr><th>日付</th><th>行事</th><th></th></tr>
        <tr><td>10/5</td><td>市民まつり</td><td>&nbsp;</td></tr>
        <tr><td></td><td></td><td></td></tr>
        <tr><td>10/12</td><td><table><tr><td>健康相談</td><td>要予約</td></tr></table></td><td>無料</td></tr>
      </table>
      <p>お問い合わせ：<a href="mailto:kouhou@city.example.lg.jp">kouhou@city.example.lg.jp</a>
      または <a href="mailto:kouhou@city.example.lg.jp?subject=%E8%B3%AA%E5%95%8F">広報課</a></p>
      <p><a href="javascript:alert('x')">ここをクリック</a>
      <a href="https://evil.example/login" style="color:blue">https://www.city.example.lg.jp/login</a></p>
      <form action="https://evil.example/post"><label>メール</label><input type="text" name="m">
      <button>送信</button></form>
      <iframe src="https://evil.example/frame"></iframe>
      <blockquote>引用された文章です。</blockquote>
      <dl><dt>担当</dt><dd>広報課&nbsp;&nbsp;山田</dd></dl>
      <pre>  TEL: 000-123-4567
  FAX: 000-123-4568</pre>
      <div hidden>隠し要素</div>
      <p>&#x2460;&amp;&#x2461; &lt;重要&gt; &copy; 2024</p>
    </td>
  </tr>
</table>
<script>alert(1)</script>
<!-- footer -->
</body>
</html>
"""

NEWSLETTER_TEXT = """\
[画像: みどり市 ロゴ]
市報メールマガジン\u3000第12号

市民の皆さま、こんにちは。
みどり市広報課です。今月のお知らせをお届けします。

パスワードの確認は不要です。

■ 今月のお知らせ

・ 市民まつり：10月 5日（土）
  ・ 会場：中央公園
  ・ 雨天時は体育館
・ 詳細はこちら (https://www.city.example.lg.jp/event/)
・ www.city.example.lg.jp

3. 申込書を記入
4. 窓口へ提出

日付 | 行事
10/5 | 市民まつり
10/12 | 健康相談 | 要予約 | 無料

お問い合わせ：kouhou@city.example.lg.jp または 広報課 (kouhou@city.example.lg.jp)

ここをクリック https://www.city.example.lg.jp/login (https://evil.example/login)

メール

> 引用された文章です。

担当
  広報課  山田

  TEL: 000-123-4567
  FAX: 000-123-4568

①&② <重要> © 2024
"""


def text(html: str) -> str:
    return html_to_text(html).text


# -- the whole newsletter -----------------------------------------------------------------------


def test_newsletter_exact_text() -> None:
    assert text(NEWSLETTER) == NEWSLETTER_TEXT


def test_newsletter_counts() -> None:
    result = html_to_text(NEWSLETTER)
    assert result.links == 5
    assert result.images == 1
    assert dict(result.removed) == {
        "style": 1,
        "script": 2,
        "comment": 2,
        "hidden": 3,
        "img": 1,
        "javascript-url": 1,
        "form": 1,
        "input": 1,
        "button": 1,
        "iframe": 1,
        "invisible": 2,
    }


def test_result_is_frozen() -> None:
    result = html_to_text("<p>x</p>")
    assert isinstance(result, HtmlText)
    with pytest.raises(AttributeError):
        result.text = "y"  # type: ignore[misc]
    with pytest.raises(TypeError):
        result.removed["x"] = 1  # type: ignore[index]


# -- inline text and whitespace -----------------------------------------------------------------


def test_japanese_inline_spans_gain_no_spaces() -> None:
    assert text("<span>東京</span><span>都</span>") == "東京都\n"
    assert text("<b>千代田</b><i>区</i><font color=red>役所</font>") == "千代田区役所\n"


def test_segment_break_between_cjk_is_removed_but_kept_for_latin() -> None:
    assert text("<p>東京\n都</p>") == "東京都\n"
    assert text("<p>hello\nworld</p>") == "hello world\n"
    assert text("<p>東京 都</p>") == "東京 都\n"  # a real space stays
    assert text("<p>東京\nTokyo</p>") == "東京 Tokyo\n"


def test_whitespace_collapses_and_output_is_normalised() -> None:
    assert text("  <p>  a   b \t c  </p>  ") == "a b c\n"
    assert text("<p>a</p><p></p><p></p><p>b</p>") == "a\n\nb\n"
    assert text("") == ""
    assert text("   \n ") == ""
    assert text("<p>&nbsp;</p>") == ""


def test_nbsp_is_a_space_that_does_not_collapse() -> None:
    assert text("a&nbsp;&nbsp;&nbsp;b") == "a   b\n"
    assert text("<div>&nbsp;&nbsp;字下げ</div>") == "  字下げ\n"


def test_entities_are_decoded() -> None:
    assert text("&#x2460;&#9313; &amp; &lt;tag&gt; &quot;q&quot; &yen;100 &hellip;") == (
        '①② & <tag> "q" ¥100 …\n'
    )


def test_invisible_and_bidi_characters_are_removed() -> None:
    html = "pay&#x200B;pal\u200c.com \u202eexe.txt\u202c \u2066x\u2069\ufeff&#xFEFF;"
    result = html_to_text(html)
    assert result.text == "paypal.com exe.txt x\n"
    assert result.removed["invisible"] == 8


def test_control_characters_and_lone_surrogates_do_not_break_anything() -> None:
    result = html_to_text("a\x00b\x01c\ud800d<p>e\x7f</p>")
    assert result.text == "abcd\n\ne\n"
    assert result.removed["control"] == 4


# -- blocks and line breaks ---------------------------------------------------------------------


def test_br_and_div_lines_like_a_browser() -> None:
    html = "<div>a</div><div><br></div><div>b</div><div>c<br></div><div>d</div>"
    assert text(html) == "a\n\nb\nc\nd\n"
    assert text("a<br>b<br><br>c<br><br><br><br>d") == "a\nb\n\nc\n\nd\n"


def test_paragraphs_and_headings() -> None:
    assert text("<h1>見出し</h1>本文<h3>小見出し</h3><p>段落</p>") == "見出し\n\n本文\n\n小見出し\n\n段落\n"


def test_outlook_msonormal_paragraphs_are_lines() -> None:
    html = (
        "<p class=MsoNormal>一行目<o:p></o:p></p><p class=MsoNormal><o:p>&nbsp;</o:p></p>"
        '<p class=MsoNormal>三行目</p><p style="margin:0">四行目</p><p>五行目</p>'
    )
    assert text(html) == "一行目\n三行目\n四行目\n\n五行目\n"


def test_hr() -> None:
    assert text("a<hr>b") == "a\n" + "-" * 40 + "\nb\n"


def test_pre_is_verbatim() -> None:
    html = "<p>before</p><pre>\n  def f():\n      return  1\n\n\tend</pre><p>after</p>"
    assert text(html) == "before\n\n  def f():\n      return  1\n\n    end\n\nafter\n"


def test_blockquote_is_quoted() -> None:
    html = (
        "<p>返信です</p><blockquote><p>元の一行目</p><p>二行目</p>"
        "<blockquote>さらに前</blockquote></blockquote>"
    )
    assert text(html) == "返信です\n\n> 元の一行目\n>\n> 二行目\n>\n> > さらに前\n"


def test_ruby_keeps_the_reading_in_brackets() -> None:
    assert text("<ruby>漢字<rp>（</rp><rt>かんじ</rt><rp>）</rp></ruby>") == "漢字(かんじ)\n"


# -- lists --------------------------------------------------------------------------------------


def test_nested_lists() -> None:
    html = (
        "<ul><li>一<ul><li>一の一<ol><li>深い</li></ol></li></ul></li><li>二<br>続き</li></ul>"
        "<ol start=7><li>七</li><li value=10>十</li><li>十一</li></ol>"
    )
    assert text(html) == ("・ 一\n  ・ 一の一\n    1. 深い\n・ 二\n  続き\n\n7. 七\n10. 十\n11. 十一\n")


def test_list_directly_inside_list_and_empty_items() -> None:
    assert text("<ul><ul><li>a</li></ul><li></li><li>b</li></ul>") == "  ・ a\n・ b\n"


def test_definition_list() -> None:
    assert text("<dl><dt>用語</dt><dd>説明文</dd><dt>次</dt><dd>その説明</dd></dl>") == (
        "用語\n  説明文\n次\n  その説明\n"
    )


# -- tables -------------------------------------------------------------------------------------


def test_table_rows_and_cells() -> None:
    html = (
        "<table><tr><th>名前</th><th>値</th></tr>"
        "<tr><td><p>東京</p></td><td><p>1</p></td></tr>"
        "<tr><td></td><td>&nbsp;</td></tr>"
        "<tr><td>大阪</td><td></td><td>3</td></tr></table>"
    )
    assert text(html) == "名前 | 値\n東京 | 1\n大阪 | 3\n"


def test_layout_table_adds_no_separators() -> None:
    html = (
        "<table width=100%><tr><td>"
        "<table width=600 align=center><tr><td width=20>&nbsp;</td><td>"
        "<p>本文一</p><p>本文二</p>"
        "</td><td width=20></td></tr></table>"
        "</td></tr></table><p>後</p>"
    )
    assert text(html) == "本文一\n\n本文二\n\n後\n"


def test_nested_tables_are_flattened() -> None:
    html = (
        "<table><tr><td>外1</td><td><table><tr><td>内1</td><td>内2</td></tr>"
        "<tr><td>内3</td></tr></table></td><td>外3</td></tr></table>"
    )
    assert text(html) == "外1 | 内1 | 内2\n内3 | 外3\n"


# -- links and images ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "expected", "links"),
    [
        ('<a href="https://example.jp/a">詳細はこちら</a>', "詳細はこちら (https://example.jp/a)\n", 1),
        ('<a href="https://example.jp/a">https://example.jp/a</a>', "https://example.jp/a\n", 1),
        ('<a href="https://example.jp/">example.jp</a>', "example.jp\n", 1),
        ('<a href="http://Example.jp">HTTPS://EXAMPLE.JP/</a>', "HTTPS://EXAMPLE.JP/\n", 1),
        ('<a href="mailto:a@example.jp">a@example.jp</a>', "a@example.jp\n", 1),
        ('<a href="MAILTO:a%40b@example.jp?cc=x">係</a>', "係 (a@b@example.jp)\n", 1),
        ('<a href="/path/page.html">相対</a>', "相対 (/path/page.html)\n", 1),
        ('<a href="#top">ページの先頭へ</a>', "ページの先頭へ\n", 0),
        ("<a>名前だけ</a>", "名前だけ\n", 0),
        ('<a href=" https://example.jp/\n a ">x</a>', "x (https://example.jp/ a)\n", 1),
    ],
)
def test_links(html: str, expected: str, links: int) -> None:
    result = html_to_text(html)
    assert result.text == expected
    assert result.links == links


@pytest.mark.parametrize(
    "href",
    [
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "&#106;avascript:alert(1)",
        "java&#x09;script:alert(1)",
        " \x01javascript:alert(1)",
        "vbscript:msgbox(1)",
        "data:text/html;base64,PHNjcmlwdD4=",
        "java\u200bscript:alert(1)",
    ],
)
def test_script_urls_are_dropped_but_text_kept(href: str) -> None:
    result = html_to_text(f'<a href="{href}">クリック</a>')
    assert result.text == "クリック\n"
    assert result.links == 0
    assert result.removed["javascript-url"] == 1


def test_phishing_link_shows_the_real_target() -> None:
    html = '<a href="https://evil.example/">https://www.bank.example.jp/</a>'
    assert text(html) == "https://www.bank.example.jp/ (https://evil.example/)\n"


def test_link_without_visible_text_is_dropped() -> None:
    result = html_to_text('<a href="https://t.example/c"><img src="b.png"></a>後')
    assert result.text == "後\n"
    assert result.links == 0
    assert result.removed == {"img": 1, "empty-link": 1}


def test_images() -> None:
    result = html_to_text(
        '<img alt="地図"> <img src="x.png"> <img alt=" "> <a href="/m"><img alt="バナー"></a>'
    )
    assert result.text == "[画像: 地図] [画像: バナー] (/m)\n"
    assert result.images == 2
    assert result.removed["img"] == 2


def test_link_helpers() -> None:
    assert is_script_url("  JAVA\tSCRIPT:x")
    assert not is_script_url("https://example.jp/javascript:")
    assert link_target("javascript:x") is None
    assert link_target("#frag") == ""
    assert link_target("mailto:%E5%B1%B1@example.jp") == "山@example.jp"
    assert link_target("mailto:a%0Ab@example.jp") == "a b@example.jp"
    assert link_target("https://example.jp/a\u2028b") == "https://example.jp/a b"
    assert link_target("https://example.jp/" + "a" * 5000) == "https://example.jp/" + "a" * 4077 + "…"
    assert strip_invisible("a\u200bb\x00c") == ("abc", 1, 1)


# -- dropped content ----------------------------------------------------------------------------


def test_active_and_embedded_content_is_dropped_and_counted() -> None:
    html = (
        "<p>本文</p><script>evil()</script><noscript>ns</noscript><template>t</template>"
        "<object data=x><param name=a value=b>obj</object><embed src=x><applet>ap</applet>"
        "<iframe src=x>if</iframe><frameset><frame src=x></frameset>"
        "<svg><text>svg</text></svg><math><mi>x</mi></math><canvas>c</canvas>"
        "<audio src=x>a</audio><video src=x>v</video><![CDATA[cdata]]><?php echo 1; ?>"
        "<select><option>o</option></select><textarea>ta</textarea>"
    )
    result = html_to_text(html)
    assert result.text == "本文\n"
    assert dict(result.removed) == {
        "script": 1,
        "noscript": 1,
        "template": 1,
        "object": 1,
        "embed": 1,
        "applet": 1,
        "iframe": 1,
        "frameset": 1,
        "svg": 1,
        "math": 1,
        "canvas": 1,
        "audio": 1,
        "video": 1,
        "cdata": 1,
        "processing-instruction": 1,
        "select": 1,
        "textarea": 1,
    }


def test_unclosed_void_elements_do_not_swallow_what_follows() -> None:
    # libxml2 nests the rest of the document inside an unclosed <embed>/<source>/<wbr>.
    html = "<div>前<embed src=x>中<source src=y>後<wbr>ろ<keygen>末</div><p>次</p>"
    result = html_to_text(html)
    assert result.text == "前中後ろ末\n\n次\n"
    assert dict(result.removed) == {"embed": 1, "source": 1, "keygen": 1}


def test_head_and_title_are_not_shown() -> None:
    html = "<html><head><title>件名</title><style>p{}</style><!-- c --></head><body>本文</body></html>"
    result = html_to_text(html)
    assert result.text == "本文\n"
    assert dict(result.removed) == {"style": 1, "comment": 1}


def test_form_keeps_labels_and_drops_controls() -> None:
    html = '<form action="x"><label for=a>氏名</label><input id=a><button>送信</button></form>'
    result = html_to_text(html)
    assert result.text == "氏名\n"
    assert dict(result.removed) == {"form": 1, "input": 1, "button": 1}


@pytest.mark.parametrize(
    "attrs",
    [
        'style="display:none"',
        'style="DISPLAY : NONE !important"',
        'style="visibility:hidden"',
        'style="font-size:0"',
        'style="font-size: 0px"',
        'style="font:0/0 a"',
        'style="opacity:0"',
        'style="mso-hide:all"',
        'style="max-height:0;overflow:hidden"',
        'style="display:/**/none"',
        "hidden",
    ],
)
def test_hidden_elements_are_dropped(attrs: str) -> None:
    result = html_to_text(f"見える<span {attrs}>隠し<b>文字</b></span>文章")
    assert result.text == "見える文章\n"
    assert result.removed["hidden"] == 1


def test_visible_styles_are_kept() -> None:
    html = '<span style="display:inline;font-size:10px;opacity:0.5;overflow:hidden">見える</span>'
    assert text(html) == "見える\n"


# -- limits and hostile input -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("open_tag", "close_tag"),
    [
        ("<div>", "</div>"),
        ("<span>", "</span>"),
        ("<table><tr><td>", "</td></tr></table>"),
        ("<ul><li>", "</li></ul>"),
        ("<blockquote>", "</blockquote>"),
        ("<b><i>", "</i></b>"),
    ],
)
def test_ten_thousand_deep_nesting(open_tag: str, close_tag: str) -> None:
    html = open_tag * 10_000 + "深い" + close_tag * 10_000
    result = html_to_text(html)
    assert "深い" in result.text
    assert "parse-error" not in result.removed
    assert len(result.text.splitlines()) == 1
    assert len(result.text) < 200  # indentation is bounded


def test_ten_thousand_deep_nesting_with_text_at_every_level() -> None:
    result = html_to_text("<div>行" * 10_000)
    assert result.text == "行\n" * 10_000


def test_one_megabyte_input() -> None:
    unit = '<p>お知らせ<span>です</span> <a href="https://example.jp/">リンク</a></p>\n'
    html = unit * (1_000_000 // len(unit) + 1)
    assert len(html) > 1_000_000
    started = time.monotonic()
    result = html_to_text(html)
    assert time.monotonic() - started < 30
    paragraphs = result.text.rstrip("\n").split("\n\n")
    assert paragraphs[0] == "お知らせです リンク (https://example.jp/)"
    assert len(set(paragraphs)) == 1
    assert result.links == len(paragraphs)


def test_one_megabyte_of_a_single_word() -> None:
    assert text("あ" * 1_000_000) == "あ" * 1_000_000 + "\n"


def test_input_is_truncated_to_max_chars() -> None:
    result = html_to_text("<p>" + "a" * 100 + "</p><p>tail</p>", max_chars=50)
    assert result.text == "a" * 47 + "\n"
    assert result.removed["truncated"] == 1


@pytest.mark.parametrize(
    "garbage",
    [
        "<",
        "<<<>>>",
        "<p",
        "</p></div></table>",
        "<a href=",
        "<!--",
        "<![CDATA[",
        "<?xml",
        "&#xFFFFFFF;&#0;",
        "<td><tr>x",
        "http://example.jp/",
        "index.html",
    ],
)
def test_garbage_never_raises(garbage: str) -> None:
    result = html_to_text(garbage)
    assert isinstance(result.text, str)


def test_falls_back_when_the_parser_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(html_module, "_parse_tree", broken)
    result = html_to_text("<p>本文 &amp; <b>太字</b></p>\n<p>二行目</p>")
    assert result.text == "本文 & 太字\n二行目\n"
    assert result.removed == {"parse-error": 1}


_INVISIBLE = frozenset(
    "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=20),
            st.sampled_from(
                [
                    "<p>",
                    "</p>",
                    "<br>",
                    "<td>",
                    "<tr>",
                    "<table>",
                    "</table>",
                    "<li>",
                    "<ul>",
                    "<pre>",
                    "</pre>",
                    "<a href='javascript:x'>",
                    "<a href=http://x>",
                    "</a>",
                    "<img alt=x>",
                    "<span style='display:none'>",
                    "</span>",
                    "&nbsp;",
                    "&#8203;",
                    "<!--",
                    "-->",
                    "<script>",
                    "</script>",
                    "<blockquote>",
                    "\n",
                    " ",
                    "東京",
                    "<div>",
                    "</div>",
                ]
            ),
        ),
        max_size=40,
    )
)
def test_property_never_raises_and_output_is_clean(parts: list[str]) -> None:
    result = html_to_text("".join(parts))
    out = result.text
    assert out == "" or (out.endswith("\n") and not out.endswith("\n\n"))
    assert not _INVISIBLE & set(out)
    assert "\n\n\n" not in out
    assert all(line == line.rstrip() for line in out.split("\n"))
    assert not out.startswith("\n")


_REUSE_DOCS = [
    NEWSLETTER,
    "<p>a<b>b</p>c",
    "<pre>  x\n  y</pre><textarea> t </textarea>",
    "<table><tr><td>1<td>2</table><ul><li>x<li>y</ul>",
    "<html><body><p>unclosed <a href='https://e.jp/'>link",
    "<!DOCTYPE html><?pi x?><![CDATA[c]]><!-- c --><p>after</p>",
    "<div x:hidden>ns</div><svg><text>s</text></svg>",
    "\ufeff<p>bom</p>",
    "<p>\udcff lone surrogate</p>",
    "",
    "plain text, no tags",
]


def _fresh(source: str) -> HtmlText:
    html_module._parsers.__dict__.pop("kept", None)  # no kept parser: this one starts from scratch
    return html_to_text(source)


def test_a_kept_parser_reads_every_document_as_a_new_one_would() -> None:
    expected = [_fresh(doc) for doc in _REUSE_DOCS]
    for order in (_REUSE_DOCS, list(reversed(_REUSE_DOCS)), _REUSE_DOCS * 2):
        for doc in order:
            assert html_to_text(doc) == expected[_REUSE_DOCS.index(doc)], doc[:40]


def test_a_parser_whose_document_raised_is_not_used_again(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _fresh(NEWSLETTER)
    original = html_module._TreeBuilder.start

    def start(self: html_module._TreeBuilder, tag: str, attrib: dict[str, str]) -> None:
        if tag == "boom":
            raise RuntimeError("deadline")  # e.g. FilterTimeout from SIGALRM inside a target call
        original(self, tag, attrib)

    # lxml binds a target's methods when its parser first runs: patch before any parser is made.
    html_module._parsers.__dict__.pop("kept", None)
    monkeypatch.setattr(html_module._TreeBuilder, "start", start)
    try:
        assert html_to_text("<p>before</p><boom>x</boom><p>after</p>").removed.get("parse-error") == 1
        assert not html_module._parsers.kept  # the parser that raised was dropped
        assert html_to_text(NEWSLETTER) == expected
        assert html_to_text("<p>before</p><boom>x</boom><p>after</p>").removed.get("parse-error") == 1
        assert html_to_text(NEWSLETTER) == expected
    finally:
        html_module._parsers.__dict__.pop("kept", None)  # none bound to the patched start is kept


def test_quick_check_never_misses_what_the_expressions_strip() -> None:
    # Every code point either class matches would make the quick check say "something to strip".
    every = "".join(map(chr, range(0x110000)))
    matched = set(html_module._INVISIBLE_RE.findall(every)) | set(html_module._CONTROL_RE.findall(every))
    assert len(matched) > 200
    for ch in matched:
        assert ch not in html_module._ALLOWED_NONPRINTABLE
        assert not ch.isprintable() or ch in html_module._PRINTABLE_INVISIBLE, hex(ord(ch))
        assert not html_module._nothing_to_strip("あ" * 70 + ch + "\u3000\n"), hex(ord(ch))


@settings(max_examples=500, deadline=None)
@given(st.text(min_size=65, max_size=300), st.text(max_size=5))
def test_strip_invisible_is_the_two_expressions(text: str, extra: str) -> None:
    for source in (text, text + extra, extra + "お知らせ\u3000\xa0\t\r\n\f" * 10):
        removed, invisible = html_module._INVISIBLE_RE.subn("", source)
        removed, control = html_module._CONTROL_RE.subn("", removed)
        assert strip_invisible(source) == (removed, invisible, control)


def test_short_word_check_never_misses_what_the_expressions_strip() -> None:
    # strip_invisible answers a printable non-ASCII word without the expressions: every code point
    # they match, inside such a word, must still be stripped exactly as they strip it.
    every = "".join(map(chr, range(0x110000)))
    matched = set(html_module._INVISIBLE_RE.findall(every)) | set(html_module._CONTROL_RE.findall(every))
    for ch in matched:
        for word in ("髙" + ch + "①", ch + "お知らせ", "㈱" + ch):
            removed, invisible = html_module._INVISIBLE_RE.subn("", word)
            removed, control = html_module._CONTROL_RE.subn("", removed)
            assert invisible + control == 1, hex(ord(ch))
            assert strip_invisible(word) == (removed, invisible, control), hex(ord(ch))


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=64))
def test_strip_invisible_on_short_text_is_the_two_expressions(text: str) -> None:
    for source in (text, "髙" + text, text + "①"):
        removed, invisible = html_module._INVISIBLE_RE.subn("", source)
        removed, control = html_module._CONTROL_RE.subn("", removed)
        assert strip_invisible(source) == (removed, invisible, control)
