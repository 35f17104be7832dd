"""Take a conversation along: export it as Markdown or JSON, import Parley's JSON back.

Only the owner exports (anyone else's is `NotFound`). The JSON holds every message in
order, of every branch, failed attempts a retry replaced included (`superseded`), with
its status, model, usage, cost and citations, the message it follows (`parent`, its
place in the list), and a question's images (base64, as the model got them); `shown` is
the place of the branch's newest message the conversation shows. Then the
conversation's title and times; `parley` and `version` say what it is. The Markdown is
the branch shown, to read. Import reads that JSON as a new conversation of the
importing user, with its branches: the file is checked whole first (its shape, its
sizes, that it is Parley's, that each message follows an earlier one, that each image
is one), and a file that fails gets one sentence and writes nothing. Imported messages
keep their text, roles, statuses, models, token counts and images (checked and
re-encoded as if sent anew); not their ids, not their costs (the calls were not made
here, and nothing imported counts in the usage ledger or the admins' costs), and not
their citations (they name documents by the ids of the server that exported them).
Times are moved to UTC and never later than now.
Parsing is bounded before any model sees the data: at most `MAX_OBJECTS` JSON objects,
no NUL character in any string, no NaN or Infinity.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from sqlalchemy import select

from parley.chat.conversation.branches import Node, Tree
from parley.chat.conversation.conversations import (
    ConversationInfo,
    clean_title,
    owned_conversation,
    to_info,
)
from parley.chat.conversation.images import PreparedImage, prepare_image, store_images
from parley.chat.documents.library import MAX_FILES_PER_MESSAGE
from parley.core.audit_events import ConversationImported
from parley.core.counts import count
from parley.core.domain import MessageRole, MessageStatus, Principal
from parley.core.errors import InvalidInput
from parley.core.records import CitedPassage, SentImage
from parley.memory import message_tokens
from parley.store.audit import actor_of, append_in
from parley.store.db import Database
from parley.store.models import Conversation, Image, Message, utcnow

FORMAT = "parley.conversation"
VERSION = 3  # 3: images; 2: branches (`parent`, `shown`); 1 is read as one branch
MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_MESSAGES = 20_000
MAX_MESSAGE_CHARS = 200_000
MAX_OBJECTS = 4 * MAX_MESSAGES + 100  # a message is two objects, its usage one more
MAX_TOKENS = 10_000_000  # a count no single call comes near
CONVERSATION_KEYS = {"parley", "version", "title", "created_at", "updated_at", "messages"}
CONVERSATION_KEYS |= {"shown"}
MESSAGE_KEYS = {"role", "content", "status", "model", "usage", "cost_usd", "citations"}
MESSAGE_KEYS |= {"error", "created_at", "parent", "images"}
MAX_IMAGES = 100  # different images in one import (each is decoded and scaled)


class _TooBig(ValueError):
    """The JSON holds more objects than an export of the largest conversation would."""


class ExportedUsage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    output_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    cache_creation_input_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    cache_read_input_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)


class ExportedMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: MessageRole
    content: str = Field(max_length=MAX_MESSAGE_CHARS)
    status: MessageStatus
    model: str | None = Field(default=None, max_length=100)
    usage: ExportedUsage = Field(default_factory=ExportedUsage)
    cost_usd: float | None = Field(default=None, ge=0, le=1_000_000, allow_inf_nan=False)
    citations: list[CitedPassage] = Field(default_factory=list, max_length=1000)
    error: str | None = Field(default=None, max_length=2000)
    created_at: AwareDatetime
    # The place in the list of the message this one follows (None: a first message). An
    # export from before branches has none: each message follows the one shown before it.
    parent: int | None = Field(default=None, ge=0, lt=MAX_MESSAGES)
    images: list[ExportedImage] = Field(default_factory=list, max_length=MAX_FILES_PER_MESSAGE)


class ExportedImage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255)
    media_type: str = Field(max_length=40)
    data: str  # base64, bounded by the file's size


class ExportedConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parley: Literal["parley.conversation"]
    version: Literal[1, 2, 3]
    title: str = Field(max_length=200)
    created_at: AwareDatetime
    updated_at: AwareDatetime
    messages: list[ExportedMessage] = Field(max_length=MAX_MESSAGES)
    shown: int | None = Field(default=None, ge=0, lt=MAX_MESSAGES)  # the branch shown's end

    @model_validator(mode="after")
    def _a_tree(self) -> ExportedConversation:
        """Each message follows an earlier one, so the messages form a tree."""
        for place, message in enumerate(self.messages):
            if message.parent is not None and message.parent >= place:
                raise ValueError(f"message {place} follows a later one")
        if self.shown is not None and self.shown >= len(self.messages):
            raise ValueError("the branch shown ends at no message")
        return self

    def parents(self) -> list[int | None]:
        """Each message's parent's place; an export without any (from before branches)
        is one branch: each message follows the newest earlier one a retry kept."""
        if self.shown is not None or any(m.parent is not None for m in self.messages):
            return [m.parent for m in self.messages]
        parents: list[int | None] = []
        last: int | None = None
        for place, message in enumerate(self.messages):
            parents.append(last)
            if message.status is not MessageStatus.SUPERSEDED:
                last = place
        return parents

    def shown_path(self) -> list[int]:
        """The places of the branch shown, oldest first."""
        parents = self.parents()
        end = self.shown
        if end is None:
            kept = [
                p for p, m in enumerate(self.messages) if m.status is not MessageStatus.SUPERSEDED
            ]
            end = kept[-1] if kept else None
        path: list[int] = []
        while end is not None:
            path.append(end)
            end = parents[end]
        return path[::-1]


class ConversationTransfer:
    def __init__(self, database: Database) -> None:
        self._db = database

    def export(
        self, principal: Principal, conversation_id: int, fmt: Literal["json", "markdown"]
    ) -> str:
        """One of the principal's conversations, whole, as JSON or Markdown."""
        exported = self._exported(principal, conversation_id)
        if fmt == "json":
            return exported.model_dump_json(indent=2) + "\n"
        return as_markdown(exported)

    def _exported(self, principal: Principal, conversation_id: int) -> ExportedConversation:
        with self._db.session() as session:
            conversation = owned_conversation(session, principal, conversation_id)
            rows = session.scalars(
                select(Message)
                .where(Message.conversation_id == conversation.id)
                .order_by(Message.id)
            ).all()
            place = {m.id: i for i, m in enumerate(rows)}
            pictures: dict[int, bytes] = {
                row.id: row.data
                for row in session.execute(
                    select(Image.id, Image.data).where(Image.conversation_id == conversation.id)
                )
            }
            return ExportedConversation(
                parley=FORMAT,
                version=VERSION,
                title=conversation.title,
                created_at=_utc(conversation.created_at),
                updated_at=_utc(conversation.updated_at),
                messages=[
                    ExportedMessage(
                        role=m.role,
                        content=m.content,
                        status=m.status,
                        model=m.model,
                        usage=ExportedUsage(
                            input_tokens=m.input_tokens,
                            output_tokens=m.output_tokens,
                            cache_creation_input_tokens=m.cache_creation_input_tokens,
                            cache_read_input_tokens=m.cache_read_input_tokens,
                        ),
                        cost_usd=m.cost_usd,
                        citations=list(m.citations or ()),
                        error=m.error,
                        created_at=_utc(m.created_at),
                        parent=place.get(m.parent_id) if m.parent_id is not None else None,
                        images=[
                            ExportedImage(
                                name=i.name,
                                media_type=i.media_type,
                                data=base64.b64encode(pictures[i.image_id]).decode("ascii"),
                            )
                            for i in m.images or ()
                            if i.image_id in pictures
                        ],
                    )
                    for m in rows
                ],
                shown=place.get(conversation.active_leaf_id)
                if conversation.active_leaf_id is not None
                else None,
            )

    def import_(self, principal: Principal, data: bytes | str) -> ConversationInfo:
        """Parley's JSON of a conversation, as a new conversation of the principal.
        `InvalidInput` with a sentence, and nothing written, for any other file."""
        exported = read_export(data)
        now = utcnow()
        pictures = _images(exported)

        def when(moment: datetime) -> datetime:
            return min(moment.astimezone(UTC), now)

        # The messages are made before the write lock is taken: counting tokens of 20 MB
        # takes seconds, which no other writer should wait for.
        messages = [
            Message(
                role=m.role,
                content=m.content,
                status=m.status,
                model=m.model,
                input_tokens=m.usage.input_tokens,
                output_tokens=m.usage.output_tokens,
                cache_creation_input_tokens=m.usage.cache_creation_input_tokens,
                cache_read_input_tokens=m.usage.cache_read_input_tokens,
                tokens=message_tokens(m.content) if m.content else 0,
                error=m.error,
                created_at=when(m.created_at),
                completed_at=when(m.created_at),
            )
            for m in exported.messages
        ]
        with self._db.session(write_lock=True) as session:
            conversation = Conversation(
                user_id=principal.user_id,
                title=clean_title(exported.title),
                created_at=when(exported.created_at),
                updated_at=now,
            )
            session.add(conversation)
            session.flush()
            for message in messages:
                message.conversation_id = conversation.id
            session.add_all(messages)
            session.flush()
            kept: dict[int, SentImage] = {}  # an edited question shares its question's
            for message, images in zip(messages, pictures, strict=True):
                if images and message.role is MessageRole.USER:
                    new = [i for i in images if id(i) not in kept]
                    stored = store_images(session, principal.user_id, conversation.id, new)
                    kept.update(zip((id(i) for i in new), stored, strict=True))
                    message.images = [kept[id(i)] for i in images]
            for message, parent in zip(messages, exported.parents(), strict=True):
                message.parent_id = messages[parent].id if parent is not None else None
            path = exported.shown_path()
            tree = Tree(  # the branch shown ends at a shown message with nothing after it
                Node(m.id, m.parent_id, m.role, m.status) for m in messages
            )
            end = messages[path[-1]].id if path else None
            conversation.active_leaf_id = (
                tree.newest_under(end) if tree.shown(end) else tree.leaf(None)
            )
            session.flush()
            append_in(
                session,
                ConversationImported(
                    conversation_id=conversation.id,
                    message_count=len(messages),
                    size_bytes=len(data),
                ),
                **actor_of(principal),
                about_id=principal.user_id,
            )
            return to_info(conversation)


def read_export(data: bytes | str) -> ExportedConversation:
    """The file as Parley's export, or `InvalidInput` saying what is wrong with it."""
    size = len(data)
    if size > MAX_FILE_BYTES:
        raise InvalidInput(
            f"The file has {size:,} bytes; a conversation to import may have "
            f"{MAX_FILE_BYTES // (1024 * 1024)} MB."
        )
    objects = 0

    def bounded(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal objects
        objects += 1
        if objects > MAX_OBJECTS or len(pairs) > 20:  # no object of Parley's has more keys
            raise _TooBig("too many objects")
        for _, value in pairs:
            if isinstance(value, str) and "\x00" in value:
                raise InvalidInput("That export is damaged: it holds a NUL character.")
        return dict(pairs)

    try:
        # Nesting deeper than the interpreter's recursion limit is a RecursionError.
        raw = json.loads(data, object_pairs_hook=bounded, parse_constant=_no_constant)
    except _TooBig:
        raise InvalidInput("That file is not a conversation exported from Parley.") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput("That file is not JSON; import takes Parley's JSON export.") from None
    if not isinstance(raw, dict) or raw.get("parley") != FORMAT:
        raise InvalidInput("That file is not a conversation exported from Parley (as JSON).")
    if raw.get("version") not in (1, 2, VERSION):
        raise InvalidInput(f"That export is of another version; this Parley reads 1 to {VERSION}.")
    messages = raw.get("messages")
    if not set(raw) <= CONVERSATION_KEYS or not isinstance(messages, list):
        raise InvalidInput("That export is damaged: its fields are not Parley's.")
    if len(messages) > MAX_MESSAGES:
        raise InvalidInput(f"That export has more than {MAX_MESSAGES:,} messages.")
    if any(not isinstance(m, dict) or not set(m) <= MESSAGE_KEYS for m in messages):
        raise InvalidInput("That export is damaged: a message's fields are not Parley's.")
    try:
        return ExportedConversation.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"] if isinstance(p, int | str))
        where = re.sub(r"[^\w.]", "", where)[:60]  # named by the file: kept plain and short
        if not where:  # the whole conversation's check (`ExportedConversation._a_tree`)
            reason = str(first["msg"]).removeprefix("Value error, ")
            raise InvalidInput(f"That export is damaged: {reason}. Nothing was imported.") from None
        raise InvalidInput(f"That export is damaged at {where}. Nothing was imported.") from None


def _images(exported: ExportedConversation) -> list[list[PreparedImage]]:
    """Each message's images, checked and re-encoded; the same image (an edited question
    shares its question's) once. `InvalidInput` past `MAX_IMAGES` different ones."""
    prepared: dict[str, PreparedImage] = {}
    pictures: list[list[PreparedImage]] = []
    for place, message in enumerate(exported.messages):
        mine = []
        for image in message.images:
            if image.data not in prepared:
                if len(prepared) == MAX_IMAGES:
                    raise InvalidInput(
                        f"That export has more than {MAX_IMAGES} images; "
                        "Parley imports at most that many. Nothing was imported."
                    )
                prepared[image.data] = _image(place, image)
            mine.append(prepared[image.data])
        pictures.append(mine)
    return pictures


def _image(place: int, image: ExportedImage) -> PreparedImage:
    """An exported image, checked and re-encoded as one sent anew would be."""
    try:
        data = base64.b64decode(image.data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            f"That export is damaged: an image of message {place} is not base64. "
            "Nothing was imported."
        ) from None
    try:
        return prepare_image(image.name, data)
    except InvalidInput as exc:
        raise InvalidInput(
            f"That export is damaged: message {place}: {exc.user_message} Nothing was imported."
        ) from None


def _utc(moment: datetime) -> datetime:
    """A stored time as UTC (SQLite gives them back without a zone)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def as_markdown(exported: ExportedConversation) -> str:
    """The branch shown, to read: the title, then each message under who said it, with
    models, costs and cited documents (other branches, and failed attempts a retry
    replaced, are in the JSON)."""
    shown = [exported.messages[p] for p in exported.shown_path()]
    others = sum(1 for m in exported.messages if m.status is not MessageStatus.SUPERSEDED)
    others -= len(shown)
    note = f" (and {count(others, 'message')} on other branches)" if others else ""
    lines = [
        f"# {one_line(exported.title)}",
        "",
        f"Exported from Parley · {count(len(shown), 'message')}{note}",
        "",
    ]
    for m in shown:
        who = "You" if m.role is MessageRole.USER else "Assistant"
        when = m.created_at.strftime("%Y-%m-%d %H:%M UTC")
        lines += [f"## {who} · {when}", "", m.content, ""]
        if m.images:
            lines += [*(f"- image: {one_line(i.name)}" for i in m.images), ""]
        notes = []
        if m.status is not MessageStatus.COMPLETE:
            notes.append(f"status: {m.status.value}")
        if m.model and m.role is MessageRole.ASSISTANT:
            notes.append(f"model: {m.model}")
        if m.cost_usd:
            notes.append(f"cost: ${m.cost_usd:.4f}")
        if notes:
            lines += [f"*{' · '.join(notes)}*", ""]
        for c in {c.n: c for c in m.citations}.values():
            lines.append(f"- [{c.n}] {one_line(c.name)}" + (f", page {c.page}" if c.page else ""))
        if m.citations:
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def one_line(text: str) -> str:
    return " ".join(text.split())


__all__ = [
    "FORMAT",
    "MAX_FILE_BYTES",
    "VERSION",
    "ConversationTransfer",
    "ExportedConversation",
    "as_markdown",
    "read_export",
]
