"""Records kept with an answer, typed: what went into its prompt, and what it cites.

They are stored as JSON (`messages.context`, `messages.citations`) and validated by the
store on the way in and on the way out (`parley.store.models.TypedJSON`), so every layer
above reads attributes, never the keys of a raw dict.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    # Frozen; unknown keys of older rows are ignored rather than refused.
    model_config = ConfigDict(frozen=True, extra="ignore")


class RecalledTurn(_Record):
    """A turn a strategy brought back by relevance, with its score."""

    turn_id: int
    score: float
    suspect: str | None = None  # why the injection detector's rules flagged it, if they did


class DocumentSource(_Record):
    """A passage of a document put before the question, and why the user may see it."""

    n: int  # its number in the prompt, [n] in the answer
    document_id: int
    name: str | None = None  # None where names are not kept (the audit trail)
    chunks: list[int] = Field(default_factory=list)
    page: int | None = None
    score: float = 0.0
    allowed_as: str = ""  # "owner", "group finance", "public", "admin"
    suspect: str | None = None  # why the injection detector flagged it, if it did


class Provenance(_Record):
    """What went into an answer's prompt: the memory strategy, the stored turns in it,
    the summary, recalled turns, document passages, and the tokens of each section."""

    strategy: str
    turn_ids: list[int] = Field(default_factory=list)
    summary_version: int | None = None
    summary_covers: tuple[int, int] | None = None  # first and last turn folded into it
    recalled: list[RecalledTurn] = Field(default_factory=list)
    sources: list[DocumentSource] = Field(default_factory=list)
    section_tokens: dict[str, int] = Field(default_factory=dict)
    total_tokens: int = 0
    images: list[int] = Field(default_factory=list)  # the stored images sent, by id

    def without_names(self) -> Provenance:
        """As the audit trail keeps it: documents by id, not by name (a name is the
        owner's text, and goes when the document is erased)."""
        return self.model_copy(
            update={"sources": [s.model_copy(update={"name": None}) for s in self.sources]}
        )


class CitedPassage(_Record):
    """A passage an answer cites: its number, document, chunks and the quoted text."""

    n: int
    document_id: int
    name: str
    chunks: list[int] = Field(default_factory=list)
    page: int | None = None
    cited_text: str = ""
    offset: int = 0  # where in the answer it stands
    marker: bool = False  # the model wrote the [n] itself (no native citations)
    suspect: str | None = None  # why the injection detector flagged the passage, if it did


class Attachment(_Record):
    """A file sent with a question: the private document it became, by id and name."""

    document_id: int
    name: str


class SentImage(_Record):
    """An image sent with a question: the stored image (`images` table), as the page
    shows it and the prompt sends it again."""

    image_id: int
    name: str
    media_type: str
    width: int
    height: int
    tokens: int  # what it costs a prompt


__all__ = [
    "Attachment",
    "CitedPassage",
    "DocumentSource",
    "Provenance",
    "RecalledTurn",
    "SentImage",
]
