"""parley/retrieval/documents.py: parsing every supported kind of file, and chunking by tokens."""

from __future__ import annotations

import io

import pytest

from parley.core.errors import InvalidInput
from parley.core.tokens import count_tokens
from parley.retrieval.documents import MAX_FILE_BYTES, Section, chunk, parse
from tests.support import pdf_with_pages


def test_pdf_pages_keep_their_numbers() -> None:
    sections = parse("report.pdf", pdf_with_pages("Revenue grew in March", "Costs fell in May"))
    assert [(s.page, s.text) for s in sections] == [
        (1, "Revenue grew in March"),
        (2, "Costs fell in May"),
    ]


def test_an_encrypted_or_broken_pdf_is_a_sentence() -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_with_pages("secret plan"))))
    writer.encrypt("pw")
    locked = io.BytesIO()
    writer.write(locked)
    with pytest.raises(InvalidInput, match="locked.pdf: the PDF is encrypted"):
        parse("locked.pdf", locked.getvalue())
    with pytest.raises(InvalidInput, match="broken.pdf: the PDF cannot be read"):
        parse("broken.pdf", b"%PDF-1.4\nthis is not a pdf at all")
    whole = pdf_with_pages("a page cut short")
    for cut in (whole[: len(whole) // 2], whole[: len(whole) - 40]):  # a stream cut short
        with pytest.raises(InvalidInput) as refused:
            parse("cut.pdf", cut)
        sentence = str(refused.value.user_message)
        assert sentence.startswith("cut.pdf: the PDF cannot be read;")
        assert "Error" not in sentence  # no library's class name (PdfStreamError, …)


def test_docx_headings_become_section_headings() -> None:
    from docx import Document

    document = Document()
    document.add_heading("Holidays", level=1)
    document.add_paragraph("Staff get 25 days a year.")
    document.add_heading("Sick leave", level=1)
    document.add_paragraph("Tell your manager on the first day.")
    data = io.BytesIO()
    document.save(data)
    sections = parse("policy.docx", data.getvalue())
    assert [(s.heading, s.text) for s in sections] == [
        ("Holidays", "Staff get 25 days a year."),
        ("Sick leave", "Tell your manager on the first day."),
    ]
    with pytest.raises(InvalidInput, match="bad.docx: the Word file cannot be read"):
        parse("bad.docx", b"PK\x03\x04 not really a zip")


def test_markdown_and_html_keep_headings_and_drop_scripts() -> None:
    md = parse("notes.md", b"# Intro\nHello there.\n\n## Details\nThe lake is cold.\n")
    assert [(s.heading, s.text) for s in md] == [
        ("Intro", "Hello there."),
        ("Details", "The lake is cold."),
    ]
    html = parse(
        "page.html",
        b"<html><head><style>p{}</style><script>alert(1)</script></head><body>"
        b"<h1>Menu</h1><p>Soup &amp; bread.</p><h2>Prices</h2><p>Cheap.</p></body></html>",
    )
    assert [(s.heading, s.text) for s in html] == [("Menu", "Soup & bread."), ("Prices", "Cheap.")]


@pytest.mark.parametrize(
    ("name", "data", "sentence"),
    [
        ("empty.txt", b"   \n", "empty.txt: the file is empty."),
        ("latin.txt", "café".encode("latin-1"), "latin.txt: the file is not UTF-8 text."),
        ("tool.exe", b"MZ...", "tool.exe: this kind of file is not supported"),
        ("huge.txt", b"a" * (MAX_FILE_BYTES + 1), "huge.txt: the file has 20.0 MB"),
        ("blank.pdf", pdf_with_pages(""), "blank.pdf: no text could be read"),
    ],
)
def test_bad_files_get_a_sentence(name: str, data: bytes, sentence: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse(name, data)
    assert caught.value.user_message.startswith(sentence)


def test_chunks_respect_the_size_overlap_and_sections() -> None:
    words = " ".join(f"word{i}" for i in range(400))
    sections = [Section(words, "Long", 3), Section("short text", "Short", 4)]
    chunks = chunk(sections, size=100, overlap=20)
    assert all(c.tokens <= 100 and count_tokens(c.text) <= 101 for c in chunks)
    long = [c for c in chunks if c.heading == "Long"]
    assert len(long) >= 4 and all(c.page == 3 for c in long)
    assert long[0].text.split()[-1] in long[1].text  # the overlap carries context over
    assert chunks[-1].heading == "Short" and chunks[-1].text == "short text"
    assert [c.index for c in chunks] == list(range(len(chunks)))
    rebuilt = " ".join(c.text for c in long)
    assert all(f"word{i}" in rebuilt for i in range(400))  # nothing is lost


# ---------------------------------------------------------------- hybrid ranking


def test_hybrid_rank_lets_an_exact_rare_word_win_over_a_closer_vector() -> None:
    from parley.retrieval.document_index import Candidate, hybrid_rank

    candidates = [
        Candidate(1, 0, 0.62, "Our travel policy covers flights and hotels."),
        Candidate(2, 0, 0.55, "Form TX-4471 is filed for every hotel stay abroad."),
        Candidate(3, 0, 0.50, "Meals are paid per diem."),
        # the rest of the vector search's candidate pool, further away
        *(Candidate(10 + i, 0, 0.30 + i / 100, f"Unrelated note number {i}.") for i in range(8)),
    ]
    ranked = hybrid_rank("Which hotel stays need form TX-4471?", candidates)
    assert [c.document_id for c, _ in ranked][:2] == [2, 1]
    cosine_only = hybrid_rank("zzz", candidates)  # no word in common: cosine decides
    assert [c.document_id for c, _ in cosine_only][:3] == [1, 2, 3]


def test_hybrid_rank_lifts_a_chunk_whose_neighbour_matches() -> None:
    from parley.retrieval.document_index import Candidate, hybrid_rank

    candidates = [
        Candidate(1, 4, 0.9, "The refund rules, part one: the request."),
        Candidate(1, 5, 0.3, "It is paid within thirty days."),
        Candidate(2, 0, 0.3, "It is paid within thirty days."),  # same text, no neighbour
    ]
    ranked = {(c.document_id, c.index): s for c, s in hybrid_rank("refund rules", candidates)}
    assert ranked[(1, 5)] > ranked[(2, 0)]
