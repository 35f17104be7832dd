"""How the protocol user reads a turn from the frames Streamlit sends, on a clock the test
sets: the page's run up to the chat box, the question stored, the first drawing with the
streaming cursor, and the stored answer drawn after the question by the page's next run.
Frames of a run begun before the message are not its, the first error box is the error,
and the deadline holds however busily the page sends. (Against a real server:
tests/bench/test_load.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest
from streamlit.proto.Alert_pb2 import Alert
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

from parley.bench import protocol_user
from parley.bench.protocol_user import Page, Turn, ask

QUESTION = "Question 1 from load-user-0: how?"
SHOWN_QUESTION = "Question 1 from load\\-user\\-0: how?"  # as safe_markdown escapes it


def started() -> ForwardMsg:
    message = ForwardMsg()
    message.new_session.main_script_path = "app.py"
    return message


def finished(status: int = ForwardMsg.FINISHED_SUCCESSFULLY) -> ForwardMsg:
    message = ForwardMsg()
    message.script_finished = status  # type: ignore[assignment]
    return message


def markdown(body: str) -> ForwardMsg:
    message = ForwardMsg()
    message.delta.new_element.markdown.body = body
    return message


def chat_box() -> ForwardMsg:
    message = ForwardMsg()
    message.delta.new_element.chat_input.placeholder = "Message Parley"
    return message


def error_box(body: str) -> ForwardMsg:
    message = ForwardMsg()
    message.delta.new_element.alert.body = body
    message.delta.new_element.alert.format = Alert.ERROR
    return message


class ScriptedPage(Page):
    """Frames as a server would send them, each at its time on the test's clock."""

    def __init__(self, frames: Iterable[tuple[float, ForwardMsg]]) -> None:
        super().__init__("http://127.0.0.1:1", {})
        self.frames = list(frames)
        self.clock = 0.0
        self.sent: list[list[WidgetState]] = []

    async def drain(self) -> None:
        pass

    async def rerun(self, widgets: Iterable[WidgetState]) -> None:
        self.sent.append(list(widgets))

    async def receive(self, timeout_s: float) -> ForwardMsg:
        if timeout_s <= 0 or not self.frames or self.frames[0][0] > self.clock + timeout_s:
            self.clock += max(0.0, timeout_s)
            raise TimeoutError
        at, frame = self.frames.pop(0)
        self.clock = max(self.clock, at)
        return frame


def run(page: ScriptedPage, monkeypatch: pytest.MonkeyPatch, timeout_s: float = 5.0) -> Turn:
    monkeypatch.setattr(protocol_user.time, "monotonic", lambda: page.clock)
    return asyncio.run(ask(page, "chat-id", QUESTION, timeout_s=timeout_s))


def a_turn(*, answer: str = "The answer grows.") -> list[tuple[float, ForwardMsg]]:
    return [
        (0.01, started()),
        (0.02, markdown("The answer of an earlier turn.")),  # the history, drawn again
        (0.05, chat_box()),  # the page's run reached the box that reads the message
        (0.08, markdown(SHOWN_QUESTION)),  # stored, and drawn in the user's bubble
        (0.10, markdown("The ▌")),
        (0.12, markdown("The answer ▌")),
        (0.30, finished(ForwardMsg.FINISHED_EARLY_FOR_RERUN)),
        (0.31, started()),
        (0.32, markdown("The answer of an earlier turn.")),
        (0.33, markdown(SHOWN_QUESTION)),
        (0.35, markdown(answer)),
        (0.36, markdown("10 in · 3 out")),
        (0.40, finished()),
    ]


def test_each_time_is_read_from_its_own_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    page = ScriptedPage(a_turn())
    turn = run(page, monkeypatch)
    assert (turn.page_s, turn.stored_s, turn.first_s, turn.full_s, turn.error) == (
        0.05,
        0.08,
        0.10,
        0.35,
        None,
    )
    (sent,) = page.sent
    assert sent[0].id == "chat-id" and sent[0].chat_input_value.data == QUESTION


def test_frames_of_a_run_begun_before_the_message_are_not_its(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stale = [(0.001, markdown("An old ▌")), (0.002, finished())]
    turn = run(ScriptedPage([*stale, *a_turn()]), monkeypatch)
    assert (turn.first_s, turn.full_s, turn.error) == (0.10, 0.35, None)


def test_an_answer_that_arrives_whole_in_the_next_run_is_its_own_first_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A short answer: its drawings were merged and dropped with the rerun; the page
    # never showed a cursor. A cursor drawn in the next run is no first text either.
    frames = [
        (0.01, started()),
        (0.05, chat_box()),
        (0.08, markdown(SHOWN_QUESTION)),
        (0.20, finished(ForwardMsg.FINISHED_EARLY_FOR_RERUN)),
        (0.21, started()),
        (0.22, markdown("Not this ▌")),
        (0.23, markdown(SHOWN_QUESTION)),
        (0.25, markdown("Yes.")),
        (0.26, markdown("Yes. Still not the answer.")),
        (0.30, finished()),
    ]
    turn = run(ScriptedPage(frames), monkeypatch)
    assert (turn.first_s, turn.full_s, turn.error) == (0.25, 0.25, None)


def test_a_run_that_never_shows_the_question_again_has_no_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frames = [f for f in a_turn() if f[0] != 0.33]
    turn = run(ScriptedPage(frames), monkeypatch)
    assert turn.first_s == 0.10 and turn.full_s is None
    assert turn.error == "the page finished with no answer"


def test_the_first_error_box_is_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    frames = [
        (0.01, started()),
        (0.02, finished(ForwardMsg.FINISHED_EARLY_FOR_RERUN)),
        (0.03, started()),
        (0.04, error_box("The model service is at its request limit.")),
        (0.05, error_box("Something else.")),
        (0.06, finished()),
    ]
    turn = run(ScriptedPage(frames), monkeypatch)
    assert turn.first_s is None
    assert turn.error == "The model service is at its request limit."


def test_the_deadline_holds_however_busily_the_page_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    busy = [(0.01, started())] + [(0.01 * i, markdown("draw")) for i in range(2, 10_000)]
    turn = run(ScriptedPage(busy), monkeypatch, timeout_s=0.5)
    assert turn.error == "timed out" and turn.full_s is None


def test_silence_is_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    turn = run(ScriptedPage(a_turn()[:6]), monkeypatch, timeout_s=0.3)
    assert turn.first_s == 0.10 and turn.error == "timed out"
