"""How the protocol user reads a turn from the frames Streamlit sends: the first text is
the first drawing with the streaming cursor, the whole answer is the stored answer the
page's next run shows, frames of a run started before the message are not its, and an
error box or a run with no answer is an error. (Against a real server:
tests/bench/test_load.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest
from streamlit.proto.Alert_pb2 import Alert
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

from parley.bench.protocol_user import Page, Turn, ask


def started() -> ForwardMsg:
    message = ForwardMsg()
    message.new_session.main_script_path = "app.py"
    return message


def finished(status: int = ForwardMsg.FINISHED_SUCCESSFULLY) -> ForwardMsg:
    message = ForwardMsg()
    message.script_finished = status  # type: ignore[assignment]
    return message


def markdown(body: str, *path: int) -> ForwardMsg:
    message = ForwardMsg()
    message.delta.new_element.markdown.body = body
    message.metadata.delta_path.extend(path)
    return message


def error_box(body: str) -> ForwardMsg:
    message = ForwardMsg()
    message.delta.new_element.alert.body = body
    message.delta.new_element.alert.format = Alert.ERROR
    return message


class ScriptedPage(Page):
    """Frames as a server would send them, `gap_s` apart; records what was sent."""

    def __init__(self, frames: Iterable[ForwardMsg], gap_s: float = 0.01) -> None:
        super().__init__("http://127.0.0.1:1", {})
        self.frames = list(frames)
        self.gap_s = gap_s
        self.sent: list[list[WidgetState]] = []

    async def drain(self) -> None:
        pass

    async def rerun(self, widgets: Iterable[WidgetState]) -> None:
        self.sent.append(list(widgets))

    async def receive(self, timeout_s: float) -> ForwardMsg:
        if not self.frames:
            await asyncio.sleep(timeout_s)
            raise TimeoutError
        await asyncio.sleep(self.gap_s)
        return self.frames.pop(0)


def run(page: ScriptedPage, timeout_s: float = 5.0) -> Turn:
    return asyncio.run(ask(page, "chat-id", "Hello?", timeout_s=timeout_s))


def a_turn(*, answer: str = "The answer grows.") -> list[ForwardMsg]:
    return [
        started(),
        markdown("Hello?", 0, 3, 0),
        markdown("The ▌", 0, 4, 1),
        markdown("The answer ▌", 0, 4, 1),
        finished(ForwardMsg.FINISHED_EARLY_FOR_RERUN),
        started(),
        markdown("The answer of an earlier turn.", 0, 2, 0),
        markdown("Hello?", 0, 3, 0),
        markdown(answer, 0, 4, 0),
        markdown("10 in · 3 out", 0, 4, 1),
        finished(),
    ]


def test_first_text_is_the_first_drawing_with_the_cursor_and_whole_is_the_stored_one() -> None:
    page = ScriptedPage(a_turn(), gap_s=0.02)
    turn = run(page)
    assert turn.error is None
    # Three frames in: the first drawing; nine frames in: the stored answer.
    assert turn.first_s == pytest.approx(0.06, abs=0.05)
    assert turn.full_s == pytest.approx(0.18, abs=0.08)
    assert turn.full_s is not None and turn.first_s is not None
    assert turn.full_s > turn.first_s + 0.08
    (sent,) = page.sent
    assert sent[0].id == "chat-id" and sent[0].chat_input_value.data == "Hello?"


def test_frames_of_a_run_begun_before_the_message_are_not_its() -> None:
    stale = [finished(), markdown("An old ▌", 0, 4, 1)]
    turn = run(ScriptedPage([*stale, *a_turn()]))
    assert turn.error is None and turn.first_s is not None
    assert turn.full_s is not None


def test_an_answer_the_next_run_does_not_show_is_not_whole() -> None:
    turn = run(ScriptedPage(a_turn(answer="Something else entirely.")))
    assert turn.first_s is not None and turn.full_s is None
    assert turn.error == "the page finished with no answer"


def test_an_error_box_is_an_error() -> None:
    frames = [
        started(),
        finished(ForwardMsg.FINISHED_EARLY_FOR_RERUN),
        started(),
        error_box("The model service is at its request limit."),
        finished(),
    ]
    turn = run(ScriptedPage(frames))
    assert turn.first_s is None
    assert turn.error == "The model service is at its request limit."


def test_silence_is_a_timeout() -> None:
    turn = run(ScriptedPage([started(), markdown("The ▌", 0, 4, 1)]), timeout_s=0.3)
    assert turn.first_s is not None and turn.error == "timed out"
