"""Documents as text: parse an uploaded file into sections, and cut sections into chunks.

    parse(name, data) -> list[Section]     text, Markdown, HTML (stdlib `html.parser`),
                                           PDF (`pypdf`), DOCX (`python-docx`)
    chunk(sections, size, overlap) -> list[Chunk]

Each section keeps its heading and page number, and so does every chunk cut from it.
A file that is empty, broken, encrypted, too large or of an unknown kind raises
`InvalidInput` with a sentence naming the file; nothing is returned half-parsed.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePath

from parley.core.errors import InvalidInput
from parley.core.tokens import decode_tokens, encode_tokens

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 20 * 1024 * 1024
KINDS = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
}


@dataclass(frozen=True, slots=True)
class Section:
    text: str
    heading: str = ""
    page: int | None = None  # 1-based, PDFs only


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    text: str
    heading: str
    page: int | None
    tokens: int


def kind_of(name: str) -> str:
    kind = KINDS.get(PurePath(name).suffix.lower())
    if kind is None:
        known = ", ".join(sorted(KINDS))
        raise InvalidInput(f"{name}: this kind of file is not supported (use {known}).")
    return kind


def parse(name: str, data: bytes) -> list[Section]:
    """The file's text as sections, or `InvalidInput` with a sentence."""
    kind = kind_of(name)
    if len(data) > MAX_FILE_BYTES:
        raise InvalidInput(
            f"{name}: the file has {len(data) / 1_048_576:.1f} MB; "
            f"the limit is {MAX_FILE_BYTES // 1_048_576} MB."
        )
    if not data.strip():
        raise InvalidInput(f"{name}: the file is empty.")
    if kind == "pdf":
        sections = _pdf(name, data)
    elif kind == "docx":
        sections = _docx(name, data)
    else:
        text = _decode(name, data)
        sections = _html(text) if kind == "html" else _markdown(text)
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        raise InvalidInput(f"{name}: no text could be read from this file.")
    return sections


def _decode(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(f"{name}: the file is not UTF-8 text.") from None


_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.+?)\s*#*\s*$")


def _markdown(text: str) -> list[Section]:
    sections: list[Section] = []
    heading, lines = "", []  # type: str, list[str]
    for line in text.replace("\r\n", "\n").split("\n"):
        match = _HEADING.match(line)
        if match:
            sections.append(Section("\n".join(lines).strip(), heading))
            heading, lines = match.group(2).strip(), []
        else:
            lines.append(line)
    sections.append(Section("\n".join(lines).strip(), heading))
    return sections


class _HtmlText(HTMLParser):
    _SKIP = {"script", "style", "noscript", "template"}
    _BLOCK = {"p", "div", "br", "li", "tr", "section", "article", "pre", "blockquote"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = []
        self._heading = ""
        self._parts: list[str] = []
        self._skipping = 0
        self._in_heading: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        del attrs  # text only: no attribute is read (no src, no href)
        if tag in self._SKIP:
            self._skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self._in_heading = []
        elif tag in self._BLOCK:
            self._parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1
        elif re.fullmatch(r"h[1-6]", tag) and self._in_heading is not None:
            self._heading = " ".join("".join(self._in_heading).split())
            self._in_heading = None
        elif tag in self._BLOCK:
            self._parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skipping:
            return
        if self._in_heading is not None:
            self._in_heading.append(data)
        else:
            self._parts.append(data)

    def _flush(self) -> None:
        text = re.sub(r"[ \t]+", " ", "".join(self._parts))
        text = re.sub(r"\n\s*\n+", "\n\n", text).strip()
        self.sections.append(Section(text, self._heading))
        self._parts = []

    def close(self) -> None:
        super().close()
        self._flush()


def _html(text: str) -> list[Section]:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    return parser.sections


def _pdf(name: str, data: bytes) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise InvalidInput(f"{name}: the PDF is encrypted; upload an unlocked copy.")
        return [
            Section((page.extract_text() or "").strip(), "", number)
            for number, page in enumerate(reader.pages, start=1)
        ]
    except InvalidInput:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        log.info("%s: pypdf refused it: %s", name, type(exc).__name__)
        raise InvalidInput(
            f"{name}: the PDF cannot be read; it may be damaged or cut short. "
            "Save or export it again and upload the new copy."
        ) from exc


def _docx(name: str, data: bytes) -> list[Section]:
    import zipfile

    from docx import Document

    try:
        document = Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise InvalidInput(f"{name}: the Word file cannot be read.") from exc
    sections: list[Section] = []
    heading, lines = "", []  # type: str, list[str]
    for paragraph in document.paragraphs:
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        if style.lower().startswith(("heading", "title")) and paragraph.text.strip():
            sections.append(Section("\n".join(lines).strip(), heading))
            heading, lines = paragraph.text.strip(), []
        else:
            lines.append(paragraph.text)
    sections.append(Section("\n".join(lines).strip(), heading))
    return sections


def chunk(sections: list[Section], *, size: int = 300, overlap: int = 50) -> list[Chunk]:
    """Cut sections into chunks of at most `size` tokens, each overlapping the previous
    one of its section by `overlap` tokens; a chunk never spans two sections."""
    if not 0 <= overlap < size:
        raise ValueError("overlap must be below size")
    chunks: list[Chunk] = []
    for section in sections:
        tokens = encode_tokens(section.text)
        start = 0
        while start < len(tokens):
            piece = tokens[start : start + size]
            text = decode_tokens(piece).strip()
            if text:
                chunks.append(Chunk(len(chunks), text, section.heading, section.page, len(piece)))
            if start + size >= len(tokens):
                break
            start += size - overlap
    return chunks


__all__ = ["KINDS", "MAX_FILE_BYTES", "Chunk", "Section", "chunk", "kind_of", "parse"]
