"""Files in the message box: a refused file gets a sentence and the words stay; a taken
one is shown with the question and read for the answer."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image as PILImage

from parley.fakes.anthropic_server import FakeAnthropic, Reply
from tests.app_pages.support import add_user, app, log_in


def test_a_file_in_the_message_box_is_refused_or_read(claude_env: FakeAnthropic) -> None:
    add_user("alice", "alice-password")
    at = app()
    log_in(at, "alice", "alice-password")

    at.chat_input[0].upload("tool.exe", b"MZ\x90\x00")
    at.chat_input[0].set_value("What is in this?").run()
    errors = [e.value for e in at.error]
    assert any("tool.exe: this kind of file is not supported" in e for e in errors), (
        errors,
        at.exception,
        [m.markdown[0].value for m in at.chat_message if m.markdown],
    )
    kept = [t.value for t in at.text_area]
    assert "What is in this?" in kept  # the words are not lost
    assert not at.chat_message  # nothing was sent

    claude_env.enqueue(Reply(text="It lists 41 storms."))
    notes = b"# Log\n\nThe keeper logged 41 storms in the winter of 1911.\n"
    at.chat_input[0].upload("log.md", notes)
    at.chat_input[0].set_value("What does this say?").run()
    at.run()
    question, answer = at.chat_message
    assert question.markdown[0].value == "What does this say?"
    # The name as plain text: its punctuation escaped for Markdown.
    assert any("attach_file" in c.value and r"log\.md" in c.value for c in question.caption)
    assert answer.markdown[0].value == "It lists 41 storms."
    chats = [r for r in claude_env.requests if r.path == "/v1/messages" and r.json.get("stream")]
    assert "41 storms" in json.dumps(chats[-1].json["messages"])
    assert not at.exception


def png(size: tuple[int, int] = (48, 32)) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", size, "purple").save(out, "PNG")
    return out.getvalue()


def test_an_image_in_the_message_box_is_shown_and_sent_as_an_image(
    claude_env: FakeAnthropic,
) -> None:
    add_user("alice", "alice-password")
    at = app()
    log_in(at, "alice", "alice-password")
    claude_env.enqueue(Reply(text="A purple rectangle."))
    at.chat_input[0].upload("shape.png", png())
    at.chat_input[0].set_value("What is this?").run()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    question, answer = at.chat_message
    assert question.markdown[0].value == "What is this?"
    shown = question.get("image")
    assert len(shown) == 1, "the question shows the image it was sent with"
    assert answer.markdown[0].value == "A purple rectangle."
    chats = [r for r in claude_env.requests if r.path == "/v1/messages" and r.json.get("stream")]
    blocks = chats[-1].json["messages"][-1]["content"]
    assert [b["type"] for b in blocks] == ["text", "image", "text"]
    assert blocks[0]["text"] == "Image 1: shape.png"


def test_the_local_model_refuses_an_image_and_keeps_the_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PARLEY_PROVIDER", "local")
    add_user("alice", "alice-password")
    at = app()
    log_in(at, "alice", "alice-password")
    at.chat_input[0].upload("shape.png", png())
    at.chat_input[0].set_value("What is this?").run()
    errors = [e.value for e in at.error]
    assert any("shape.png: the model here" in e and "reads no images" in e for e in errors), errors
    assert "What is this?" in [t.value for t in at.text_area]
    assert not at.chat_message and not at.exception
