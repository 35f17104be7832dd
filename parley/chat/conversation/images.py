"""Images sent with a question: checked, scaled and stored, and sent to the model as
native image blocks.

Why native blocks and not documents: an image has no text to index and quote from;
Claude reads the picture itself. The local model reads no images, so a question with
one is refused there with a sentence, before anything is stored.

Pillow does the reading (it parses what the browser and the API parse, and refuses what
it cannot decode). Every image is decoded, turned upright by its EXIF orientation,
scaled down to what Claude reads without scaling it again (at most 1,568 px a side and
1.15 megapixels: about 1,600 tokens) and re-encoded: no metadata of the original (a
phone's location) is kept or sent, and a file that only claims to be an image never
reaches the model. JPEGs stay JPEG; the other kinds become PNG (an animated GIF its first
frame). A small copy is kept for the page.

An image goes with its question and again with each later question while that question
is in the prompt the memory strategy builds (its id in `ContextWindow.turn_ids`), newest
first, as far as the token budget leaves room; a folded question's image is gone from
the prompt with its text.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePath

from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from parley.core.errors import InvalidInput, NotFound
from parley.core.llm import PromptImage
from parley.core.records import SentImage
from parley.memory import ContextWindow
from parley.store.models import Image, Message

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")
_FORMATS = ("PNG", "JPEG", "GIF", "WEBP")  # what Pillow may read them as
MAX_IMAGE_BYTES = 20 * 2**20  # as a document: a phone's photo is 3–12 MB
MAX_SOURCE_PIXELS = 50_000_000  # refused before decoding (a decompression bomb)
MAX_SIDE = 1568  # what Claude reads without scaling again
MAX_PIXELS = 1_150_000
THUMBNAIL_SIDE = 320
PIXELS_PER_TOKEN = 750  # the API's rule: tokens = width × height / 750
MAX_ENCODED_BYTES = 3_700_000  # 5 MB once in base64, the API's limit for one image
MAX_NAME_CHARS = 255
DECODERS = 2  # images decoded at once in a process

log = logging.getLogger(__name__)
_decoding = threading.BoundedSemaphore(DECODERS)
_ORIENTATION = 0x0112
_TURNS = {  # EXIF orientation: the turn that shows the picture upright
    2: PILImage.Transpose.FLIP_LEFT_RIGHT,
    3: PILImage.Transpose.ROTATE_180,
    4: PILImage.Transpose.FLIP_TOP_BOTTOM,
    5: PILImage.Transpose.TRANSPOSE,
    6: PILImage.Transpose.ROTATE_270,
    7: PILImage.Transpose.TRANSVERSE,
    8: PILImage.Transpose.ROTATE_90,
}


def is_image(name: str) -> bool:
    return PurePath(name).suffix.lower() in IMAGE_SUFFIXES


def image_tokens(width: int, height: int) -> int:
    return math.ceil(width * height / PIXELS_PER_TOKEN)


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """An image ready to store and send: decoded, scaled and re-encoded."""

    name: str
    media_type: str
    width: int
    height: int
    data: bytes = field(repr=False)
    thumbnail: bytes = field(repr=False)

    @property
    def tokens(self) -> int:
        return image_tokens(self.width, self.height)

    def prompt(self, image_id: int | None = None) -> PromptImage:
        return PromptImage(image_id, self.name, self.media_type, self.data, self.tokens)


def prepare_image(name: str, data: bytes) -> PreparedImage:
    """`InvalidInput`, with a sentence naming the file, for anything that is not an image
    of the kinds the model reads (whatever its name says: a PNG named `.jpg` is read as
    the PNG it is), or is too large. At most `DECODERS` images are decoded at once (each
    may hold a few hundred MB while it is)."""
    if not is_image(name):
        raise InvalidInput(f"{name}: images must be {', '.join(sorted(IMAGE_SUFFIXES))}.")
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidInput(
            f"{name}: the image has {len(data) / 2**20:.1f} MB; "
            f"the limit is {MAX_IMAGE_BYTES // 2**20} MB."
        )
    with _decoding:
        try:
            return _prepared(name[:MAX_NAME_CHARS], data)
        except InvalidInput:
            raise
        except PILImage.DecompressionBombError:
            raise InvalidInput(f"{name}: the image is too large to read.") from None
        except Exception as exc:  # Pillow raises many kinds for a damaged file
            log.info("Image %r refused: %s: %s", name, type(exc).__name__, exc)
            raise InvalidInput(
                f"{name}: this is not a PNG, JPEG, GIF or WebP image that can be read."
            ) from None


def _prepared(name: str, data: bytes) -> PreparedImage:
    with PILImage.open(io.BytesIO(data), formats=_FORMATS) as source:
        width, height = source.size
        if width * height > MAX_SOURCE_PIXELS:  # read from the header: nothing decoded yet
            raise InvalidInput(
                f"{name}: the image has {width:,} × {height:,} pixels; the limit is "
                f"{MAX_SOURCE_PIXELS // 1_000_000} megapixels."
            )
        jpeg = source.format == "JPEG"
        turn = _TURNS.get(_orientation(source))
        if jpeg:  # decode at a fraction of the size when that is still large enough
            source.draft("RGB", (MAX_SIDE * 2, MAX_SIDE * 2))
        source.seek(0)  # an animated image: its first frame
        source.load()
        picture: PILImage.Image = source
        if turn is not None:
            picture = picture.transpose(turn)
        scaled = _fit(picture, MAX_SIDE, MAX_PIXELS)
        encoded, jpeg, data = _encode_within(scaled, jpeg)
        return PreparedImage(
            name=name,
            media_type="image/jpeg" if jpeg else "image/png",
            width=encoded.width,
            height=encoded.height,
            data=data,
            thumbnail=_encode(_fit(encoded, THUMBNAIL_SIDE, THUMBNAIL_SIDE**2), jpeg),
        )


def _orientation(source: PILImage.Image) -> int:
    """The EXIF orientation (1: upright), or 1 when the EXIF cannot be read."""
    try:
        value = source.getexif().get(_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: the picture as it is stored
        return 1
    return value if isinstance(value, int) else 1


def _encode_within(picture: PILImage.Image, jpeg: bool) -> tuple[PILImage.Image, bool, bytes]:
    """The picture (and whether as JPEG) so that its encoding fits the API's 5 MB of
    base64: a PNG that does not (a noisy photo with transparency) becomes a JPEG, and a
    JPEG that does not is scaled down."""
    while True:
        data = _encode(picture, jpeg)
        if len(data) <= MAX_ENCODED_BYTES:
            return picture, jpeg, data
        if not jpeg:
            jpeg = True
            continue
        picture = _fit(picture, int(max(picture.size) * 0.75), picture.width * picture.height)


def _fit(picture: PILImage.Image, side: int, pixels: int) -> PILImage.Image:
    width, height = picture.size
    scale = min(1.0, side / max(width, height), math.sqrt(pixels / (width * height)))
    if scale >= 1.0:
        return picture
    size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
    return picture.resize(size, PILImage.Resampling.LANCZOS)


def _encode(picture: PILImage.Image, jpeg: bool) -> bytes:
    """Pixels only: no EXIF, XMP, ICC profile, text chunk or JPEG comment goes along."""
    out = io.BytesIO()
    if jpeg:
        flat = picture.convert("RGB")
        flat.info = {}
        flat.save(out, "JPEG", quality=88, optimize=True)
    else:
        mode = "RGBA" if picture.mode in ("RGBA", "LA", "P", "PA") else "RGB"
        flat = picture.convert(mode)
        flat.info = {}
        flat.save(out, "PNG", optimize=True)
    return out.getvalue()


def store_images(
    session: Session, user_id: int, conversation_id: int, images: Sequence[PreparedImage]
) -> list[SentImage]:
    """Keep the images of a question being stored (in its transaction)."""
    sent: list[SentImage] = []
    for image in images:
        row = Image(
            user_id=user_id,
            conversation_id=conversation_id,
            name=image.name,
            media_type=image.media_type,
            width=image.width,
            height=image.height,
            data=image.data,
            thumbnail=image.thumbnail,
        )
        session.add(row)
        session.flush()
        sent.append(
            SentImage(
                image_id=row.id,
                name=image.name,
                media_type=image.media_type,
                width=image.width,
                height=image.height,
                tokens=image.tokens,
            )
        )
    return sent


def prompt_images(
    session: Session, user_id: int, conversation_id: int, sent: Iterable[SentImage]
) -> list[PromptImage]:
    """The stored images of a question, to send again (only the user's own, of this
    conversation: anything else is not found)."""
    wanted = {s.image_id: s for s in sent}
    if not wanted:
        return []
    rows = session.execute(
        select(Image.id, Image.data).where(
            Image.id.in_(wanted),
            Image.user_id == user_id,
            Image.conversation_id == conversation_id,
        )
    ).all()
    found = {row.id: row.data for row in rows}
    return [
        PromptImage(s.image_id, s.name, s.media_type, found[s.image_id], s.tokens)
        for s in wanted.values()
        if s.image_id in found
    ]


def thumbnail(session: Session, user_id: int, image_id: int) -> tuple[str, bytes]:
    """The small copy of one of the user's images: (media type, bytes)."""
    row = session.execute(
        select(Image.media_type, Image.thumbnail).where(
            Image.id == image_id, Image.user_id == user_id
        )
    ).first()
    if row is None:
        raise NotFound(f"image {image_id} not found for user {user_id}")
    return row.media_type, row.thumbnail


def earlier_images(
    session: Session, context: ContextWindow, conversation_id: int, room: int
) -> list[SentImage]:
    """The images of earlier questions still in the prompt (`turn_ids`) that fit in
    `room` tokens, the newest question's first; in the order they were sent. Chosen by
    their recorded tokens: no image's bytes are read to choose."""
    if not context.turn_ids:
        return []
    # Most conversations hold no image: one indexed probe spares them the query below
    # (on the first token's path, over every turn in the prompt).
    if (
        session.scalar(select(Image.id).where(Image.conversation_id == conversation_id).limit(1))
        is None
    ):
        return []
    rows = session.execute(
        select(Message.images)
        .where(
            Message.conversation_id == conversation_id,
            Message.id.in_(context.turn_ids),
            Message.images.is_not(None),
        )
        .order_by(Message.id.desc())
    ).all()
    chosen: list[list[SentImage]] = []
    for row in rows:  # the newest question first
        kept = []
        for image in row.images or ():
            if image.tokens <= room:
                kept.append(image)
                room -= image.tokens
        chosen.append(kept)
    return [image for kept in reversed(chosen) for image in kept]


def with_images(
    session: Session,
    context: ContextWindow,
    *,
    user_id: int,
    conversation_id: int | None,
    question: Sequence[PromptImage],
    budget: int,
) -> ContextWindow:
    """The context with the question's images, and the images of earlier questions still
    in it (newest first, while `budget` leaves room), in the question's message."""
    earlier: list[PromptImage] = []
    if conversation_id is not None:
        room = budget - context.total_tokens - sum(i.tokens for i in question)
        chosen = earlier_images(session, context, conversation_id, room)
        earlier = [
            replace(image, earlier=True)
            for image in prompt_images(session, user_id, conversation_id, chosen)
        ]
    images = (*earlier, *question)
    if not images:
        return context
    last = replace(context.messages[-1], images=images)
    return replace(
        context,
        messages=(*context.messages[:-1], last),
        section_tokens={**context.section_tokens, "images": sum(i.tokens for i in images)},
    )


def stored_as(context: ContextWindow, sent: Sequence[SentImage]) -> ContextWindow:
    """The context with the question's new images named by the ids they were stored
    under (in order), so its provenance lists them."""
    last = context.messages[-1]
    ids = iter(s.image_id for s in sent)
    images = tuple(
        replace(i, image_id=next(ids, None)) if i.image_id is None else i for i in last.images
    )
    return replace(context, messages=(*context.messages[:-1], replace(last, images=images)))


__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_BYTES",
    "PreparedImage",
    "earlier_images",
    "image_tokens",
    "is_image",
    "prepare_image",
    "prompt_images",
    "store_images",
    "stored_as",
    "thumbnail",
    "with_images",
]
