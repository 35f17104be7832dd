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
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePath

from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError
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
    the PNG it is), or is too large."""
    if not is_image(name):
        raise InvalidInput(f"{name}: images must be {', '.join(sorted(IMAGE_SUFFIXES))}.")
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidInput(
            f"{name}: the image has {len(data) / 2**20:.1f} MB; "
            f"the limit is {MAX_IMAGE_BYTES // 2**20} MB."
        )
    try:
        with PILImage.open(io.BytesIO(data), formats=_FORMATS) as source:
            width, height = source.size
            if width * height > MAX_SOURCE_PIXELS:
                raise InvalidInput(
                    f"{name}: the image has {width:,} × {height:,} pixels; the limit is "
                    f"{MAX_SOURCE_PIXELS // 1_000_000} megapixels."
                )
            jpeg = source.format == "JPEG"
            source.seek(0)  # an animated image: its first frame
            picture = ImageOps.exif_transpose(source)
            picture.load()
    except InvalidInput:
        raise
    except PILImage.DecompressionBombError:
        raise InvalidInput(f"{name}: the image is too large to read.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput(
            f"{name}: this is not a PNG, JPEG, GIF or WebP image that can be read ({_reason(exc)})."
        ) from None
    scaled = _fit(picture, MAX_SIDE, MAX_PIXELS)
    return PreparedImage(
        name=name,
        media_type="image/jpeg" if jpeg else "image/png",
        width=scaled.width,
        height=scaled.height,
        data=_encode(scaled, jpeg),
        thumbnail=_encode(_fit(scaled, THUMBNAIL_SIDE, THUMBNAIL_SIDE**2), jpeg),
    )


def _reason(exc: BaseException) -> str:
    return str(exc).split("\n")[0][:120] or type(exc).__name__


def _fit(picture: PILImage.Image, side: int, pixels: int) -> PILImage.Image:
    width, height = picture.size
    scale = min(1.0, side / max(width, height), math.sqrt(pixels / (width * height)))
    if scale >= 1.0:
        return picture
    size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
    return picture.resize(size, PILImage.Resampling.LANCZOS)


def _encode(picture: PILImage.Image, jpeg: bool) -> bytes:
    out = io.BytesIO()
    if jpeg:
        picture.convert("RGB").save(out, "JPEG", quality=88, optimize=True)
    else:
        mode = "RGBA" if picture.mode in ("RGBA", "LA", "P", "PA") else "RGB"
        picture.convert(mode).save(out, "PNG", optimize=True)
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
    room = budget - context.total_tokens - sum(i.tokens for i in question)
    if conversation_id is not None and context.turn_ids:
        rows = session.execute(
            select(Message.id, Message.images)
            .where(
                Message.conversation_id == conversation_id,
                Message.id.in_(context.turn_ids),
                Message.images.is_not(None),
            )
            .order_by(Message.id.desc())
        ).all()
        for row in rows:
            for image in prompt_images(session, user_id, conversation_id, row.images or ()):
                if image.tokens <= room:
                    earlier.append(replace(image, earlier=True))
                    room -= image.tokens
        earlier.reverse()  # in the order they were sent
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
    "image_tokens",
    "is_image",
    "prepare_image",
    "prompt_images",
    "store_images",
    "stored_as",
    "thumbnail",
    "with_images",
]
