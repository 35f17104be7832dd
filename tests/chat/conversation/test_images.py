"""Images sent with a question: checked and scaled before anything is stored, sent to a
model that reads images as image blocks (again while their question is in the prompt),
refused with a sentence by one that does not, and erased with their conversation."""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path

import pytest
from PIL import Image as PILImage
from PIL import PngImagePlugin
from sqlalchemy import func, select

from parley.chat.conversation.images import (
    MAX_PIXELS,
    MAX_SIDE,
    image_tokens,
    prepare_image,
)
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.domain import Principal
from parley.core.errors import InvalidInput, NotFound
from parley.core.llm import PromptImage
from parley.store.models import Conversation, Image, Message, User
from parley.wiring.services import Services, build_services
from tests.chat.oversight.test_erasure import files_holding
from tests.support import ROOT


def picture(
    size: tuple[int, int], kind: str = "PNG", colour: str = "teal", **save: object
) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", size, colour).save(out, kind, **save)
    return out.getvalue()


def noise(size: tuple[int, int]) -> bytes:
    """A PNG that does not compress away (so its stored bytes can be searched for)."""
    out = io.BytesIO()
    PILImage.effect_noise(size, 90).convert("RGB").save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def vision(services: Services, scripted: ScriptedProvider) -> Services:
    scripted.takes_images = True
    return build_services(services.settings, provider=scripted, background=services.background)


def counts(services: Services) -> tuple[int, int, int]:
    with services._database.session() as session:
        return (
            int(session.scalar(select(func.count(Image.id))) or 0),
            int(session.scalar(select(func.count(Message.id))) or 0),
            int(session.scalar(select(func.count(Conversation.id))) or 0),
        )


def last_images(scripted: ScriptedProvider) -> tuple[PromptImage, ...]:
    request = scripted.requests[-1]
    assert all(not m.images for m in request.messages[:-1]), "images go in the question"
    return request.messages[-1].images


# --- checking and scaling -------------------------------------------------------------


def test_a_large_photo_is_scaled_to_what_the_model_reads_and_loses_its_metadata() -> None:
    exif = PILImage.Exif()
    exif[0x010E] = "GPS-SECRET-PLACE"  # ImageDescription: metadata the user did not mean
    exif[0x0112] = 6  # Orientation: rotate 90° to show upright
    photo = picture((4000, 3000), "JPEG", exif=exif.tobytes())
    assert b"GPS-SECRET-PLACE" in photo
    prepared = prepare_image("holiday.JPG", photo)
    assert prepared.media_type == "image/jpeg"
    # Turned upright (portrait), within 1,568 px a side and 1.15 megapixels.
    assert prepared.height > prepared.width
    assert max(prepared.width, prepared.height) <= MAX_SIDE
    assert prepared.width * prepared.height <= MAX_PIXELS
    assert prepared.tokens == image_tokens(prepared.width, prepared.height) <= 1534
    assert b"GPS-SECRET-PLACE" not in prepared.data
    assert b"GPS-SECRET-PLACE" not in prepared.thumbnail
    with PILImage.open(io.BytesIO(prepared.thumbnail)) as small:
        assert max(small.size) <= 320


def test_a_small_image_keeps_its_size_and_other_kinds_become_png() -> None:
    prepared = prepare_image("chart.webp", picture((300, 200), "WEBP"))
    assert (prepared.width, prepared.height, prepared.media_type) == (300, 200, "image/png")
    assert prepared.data.startswith(b"\x89PNG")
    # A PNG named .jpg is read as the PNG it is.
    assert prepare_image("misnamed.jpg", picture((40, 40))).media_type == "image/png"
    frames = [PILImage.new("P", (50, 50), c) for c in (1, 2, 3)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    assert prepare_image("wave.gif", out.getvalue()).media_type == "image/png"


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        (
            "cat.png",
            b"this is text, not a picture",
            "cat.png: this is not a PNG, JPEG, GIF or WebP",
        ),
        ("cat.png", picture((64, 64))[:60], "cat.png: this is not a PNG"),  # cut short
        ("cat.bmp", picture((8, 8), "BMP"), "cat.bmp: images must be"),
        ("cat.bmp.png", picture((8, 8), "BMP"), "cat.bmp.png: this is not a PNG"),
    ],
)
def test_what_is_not_a_readable_image_gets_a_sentence_naming_it(
    name: str, data: bytes, says: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        prepare_image(name, data)
    assert refused.value.user_message.startswith(says)


def test_a_decompression_bomb_is_refused_before_it_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.BytesIO()
    PILImage.new("1", (10_000, 6_000)).save(out, "PNG")  # 60 megapixels in a few kB
    assert len(out.getvalue()) < 100_000
    decoded: list[object] = []
    real_load = PILImage.Image.load
    monkeypatch.setattr(
        PILImage.Image, "load", lambda self: decoded.append(self) or real_load(self)
    )
    with pytest.raises(InvalidInput, match="bomb.png: the image has 10,000 × 6,000 pixels"):
        prepare_image("bomb.png", out.getvalue())
    assert not [d for d in decoded if getattr(d, "size", None) == (10_000, 6_000)]


def test_no_comment_or_metadata_of_the_file_goes_along() -> None:
    out = io.BytesIO()
    PILImage.new("RGB", (200, 100), "grey").save(
        out, "JPEG", comment=b"COMMENT-SECRET", icc_profile=b"ICC-SECRET" * 10
    )
    assert b"COMMENT-SECRET" in out.getvalue()
    prepared = prepare_image("scan.jpg", out.getvalue())
    for kept in (prepared.data, prepared.thumbnail):
        assert b"COMMENT-SECRET" not in kept and b"ICC-SECRET" not in kept
    png = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "TEXT-SECRET")
    PILImage.new("RGB", (20, 20)).save(png, "PNG", pnginfo=info)
    assert b"TEXT-SECRET" not in prepare_image("a.png", png.getvalue()).data


@pytest.mark.parametrize("kind", ["JPEG", "WEBP"])
def test_a_damaged_file_gets_a_sentence_never_a_crash(kind: str) -> None:
    """Bytes flipped all over a photo with EXIF (Pillow raises many kinds of error, some
    from the EXIF alone): every variant is an image or a sentence."""
    exif = PILImage.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "a description long enough to have its own offset"
    out = io.BytesIO()
    PILImage.effect_noise((64, 48), 60).convert("RGB").save(out, kind, exif=exif.tobytes())
    original = out.getvalue()
    rng = random.Random(20261204)
    outcomes = {"image": 0, "sentence": 0}
    for _ in range(400):
        damaged = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(min(len(damaged), 400))  # the headers and the EXIF
            damaged[at] = rng.randrange(256)
        try:
            prepare_image(f"photo.{kind.lower()}", bytes(damaged))
        except InvalidInput as refused:
            assert refused.user_message.startswith(f"photo.{kind.lower()}: ")
            outcomes["sentence"] += 1
        else:
            outcomes["image"] += 1
    assert outcomes["image"] and outcomes["sentence"], outcomes


def test_what_is_sent_fits_the_apis_five_megabytes() -> None:
    noisy = PILImage.merge(
        "RGBA", [PILImage.effect_noise((1072, 1072), 120) for _ in range(4)]
    )  # a PNG of about 4.6 MB: 6 MB once in base64
    out = io.BytesIO()
    noisy.save(out, "PNG")
    assert len(base64.b64encode(out.getvalue())) > 5 * 2**20
    prepared = prepare_image("noise.png", out.getvalue())
    assert len(base64.b64encode(prepared.data)) <= 5 * 2**20
    assert prepared.media_type == "image/jpeg"  # what fits


# --- sending ---------------------------------------------------------------------------


def test_an_image_goes_with_its_question_and_again_while_that_question_is_in_the_prompt(
    vision: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    cat = picture((120, 80), colour="orange")
    reply = vision.chat.send(alice, None, "What is this?", files=[("cat.png", cat)])
    list(reply)
    (sent,) = last_images(scripted)
    assert (sent.name, sent.media_type, sent.earlier) == ("cat.png", "image/png", False)
    with PILImage.open(io.BytesIO(sent.data)) as seen:
        assert seen.size == (120, 80) and seen.getpixel((5, 5)) == (255, 165, 0)
    cid = reply.conversation_id
    question, answer = vision.conversations.thread(alice, cid).messages
    assert [(i.name, i.width, i.height) for i in question.images] == [("cat.png", 120, 80)]
    assert sent.image_id == question.images[0].image_id  # stored, and named so
    assert reply.provenance is not None and reply.provenance.images == [sent.image_id]
    assert reply.context.section_tokens["images"] == sent.tokens == image_tokens(120, 80)
    # The next question: the image goes again, marked as sent earlier.
    list(vision.chat.send(alice, cid, "And its colour?"))
    (again,) = last_images(scripted)
    assert again.earlier and again.data == sent.data
    # Answer again and edit read the question's image too.
    list(vision.chat.regenerate(alice, cid, answer.id))
    assert [i.earlier for i in last_images(scripted)] == [False]
    list(vision.chat.edit(alice, cid, question.id, "Describe it."))
    assert [i.image_id for i in last_images(scripted)] == [sent.image_id]
    edited = vision.conversations.thread(alice, cid).messages[0]
    assert edited.content == "Describe it." and edited.images == question.images


def test_earlier_images_give_way_to_the_budget_newest_first(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.takes_images = True
    scripted.context_window = 5000  # room for the text and two of these images, not three
    small = build_services(services.settings, provider=scripted, background=services.background)
    reply = small.chat.send(alice, None, "One", files=[("one.png", picture((1200, 900)))])
    list(reply)
    cid = reply.conversation_id
    list(
        small.chat.send(alice, cid, "Two", files=[("two.png", picture((1200, 900), colour="red"))])
    )
    assert [(i.name, i.earlier) for i in last_images(scripted)] == [
        ("one.png", True),
        ("two.png", False),
    ]
    list(small.chat.send(alice, cid, "Three", files=[("three.png", picture((1200, 900)))]))
    # The oldest gave way.
    assert [(i.name, i.earlier) for i in last_images(scripted)] == [
        ("two.png", True),
        ("three.png", False),
    ]
    request = scripted.requests[-1]
    assert request.estimated_input_tokens is not None
    assert request.estimated_input_tokens <= small.chat._context.budget()


def test_two_images_of_one_question_go_again_in_their_order(
    vision: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    files = [("a.png", picture((30, 30), colour="red")), ("b.png", picture((30, 30)))]
    reply = vision.chat.send(alice, None, "Compare these", files=files)
    list(reply)
    assert [i.name for i in last_images(scripted)] == ["a.png", "b.png"]
    list(vision.chat.send(alice, reply.conversation_id, "Which is red?"))
    assert [(i.name, i.earlier) for i in last_images(scripted)] == [
        ("a.png", True),
        ("b.png", True),
    ]


def test_images_too_large_for_the_prompt_are_refused_and_no_file_is_kept(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    scripted.takes_images = True
    scripted.context_window = 3000  # a budget of about 1,800 tokens: not two images
    small = build_services(services.settings, provider=scripted, background=services.background)
    before = counts(small)
    files = [
        ("n.md", b"# Notes\n\nText.\n"),
        ("one.png", picture((1200, 900))),
        ("two.png", picture((1200, 900), colour="red")),
    ]
    with pytest.raises(InvalidInput, match="The images take about 2,880 tokens"):
        small.chat.send(alice, None, "Compare", files=files)
    assert counts(small) == before and small.documents.list_for(alice) == []


def test_the_local_model_refuses_an_image_with_a_sentence_and_stores_nothing(
    services: Services, alice: Principal
) -> None:
    assert "png" not in services.chat.file_types() and "pdf" in services.chat.file_types()
    before = counts(services)
    with pytest.raises(InvalidInput, match="cat.png: the model here .* reads no images"):
        services.chat.send(alice, None, "What is this?", files=[("cat.png", picture((8, 8)))])
    assert counts(services) == before


def test_a_question_sent_with_images_is_not_asked_again_of_a_model_that_reads_none(
    vision: Services, services: Services, alice: Principal
) -> None:
    reply = vision.chat.send(alice, None, "What is this?", files=[("cat.png", picture((8, 8)))])
    list(reply)
    question = vision.conversations.thread(alice, reply.conversation_id).messages[0]
    # The operator changed to a model that reads no images.
    text_only = build_services(
        services.settings, provider=ScriptedProvider(), background=services.background
    )
    with pytest.raises(InvalidInput, match="sent with images"):
        text_only.chat.edit(alice, reply.conversation_id, question.id, "Again?")


def test_a_bad_image_among_good_files_stores_nothing(vision: Services, alice: Principal) -> None:
    before = counts(vision)
    with pytest.raises(InvalidInput, match="b.png"):
        vision.chat.send(
            alice,
            None,
            "Compare",
            files=[("a.png", picture((8, 8))), ("n.md", b"# Notes\n\nText.\n"), ("b.png", b"x")],
        )
    assert counts(vision) == before
    assert vision.documents.list_for(alice) == []


# --- who sees them, and erasure ---------------------------------------------------------


def test_only_the_sender_sees_an_image_and_it_goes_with_its_conversation(
    vision: Services, alice: Principal, bob: Principal, settings_dir: Path
) -> None:
    reply = vision.chat.send(alice, None, "Look", files=[("noise.png", noise((300, 300)))])
    list(reply)
    (image,) = vision.conversations.thread(alice, reply.conversation_id).messages[0].images
    media_type, small = vision.conversations.thumbnail(alice, image.image_id)
    assert media_type == "image/png" and small.startswith(b"\x89PNG")
    with pytest.raises(NotFound):
        vision.conversations.thumbnail(bob, image.image_id)
    with vision._database.session() as session:
        stored = session.scalar(select(Image.data).where(Image.id == image.image_id))
    assert stored is not None
    needle = stored[len(stored) // 2 : len(stored) // 2 + 48]
    assert any(needle in p.read_bytes() for p in settings_dir.rglob("*") if p.is_file())
    vision.conversations.delete(alice, reply.conversation_id)
    assert counts(vision)[0] == 0
    assert not [p for p in settings_dir.rglob("*") if p.is_file() and needle in p.read_bytes()]
    with pytest.raises(NotFound):
        vision.conversations.thumbnail(alice, image.image_id)
    assert files_holding(settings_dir, "noise.png") == []  # the name went too


def test_an_erased_user_leaves_no_image(vision: Services, alice: Principal) -> None:
    list(vision.chat.send(alice, None, "Look", files=[("x.png", picture((20, 20)))]))
    assert counts(vision)[0] == 1
    vision.erasure.erase_user(ROOT, "alice")
    assert counts(vision)[0] == 0
    with vision._database.session() as session:
        assert session.scalar(select(User.id).where(User.name == "alice")) is None


@pytest.fixture
def settings_dir(services: Services) -> Path:
    return services.settings.data_dir
