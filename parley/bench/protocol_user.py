"""A load-test user that speaks Streamlit's own WebSocket protocol, as its page would.

A headless Chromium page per user costs the machine that runs the test more than the
server it measures (twelve pages took about 1.5 of this machine's two cores). This user
sends what the page's script sends and reads what the server sends back — the
protobuf `BackMsg` / `ForwardMsg` frames of `/_stcore/stream`, parsed with Streamlit's
own message classes — so nearly all the machine is left to the server.

It does what a person at the page does, through the same routes:
- opens the page and finds the sign-in form's widgets by their labels;
- submits the form; Parley answers with a redirect to `/session/start?ticket=…`, which
  this user follows (as a same-origin navigation) to receive the session cookie;
- opens the page again with the cookie, finds the chat box, and for each turn sends a
  message, then reads the answer's drawing updates until the page's next run shows the
  stored answer.

Times are taken when the frame arrives: the server's work and the network, not a
browser's drawing. Each turn also says where its first text waited: the page's run
before the message is read (everything above the chat box), and storing the question.
What it cannot see — the page's layout, scripts in the browser — the browser driver
(`--driver browser`) still covers.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from streamlit.proto.Alert_pb2 import Alert
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.Common_pb2 import ChatInputValue
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException
from websockets.typing import Subprotocol

from parley.auth.sessions import COOKIE_NAME

CURSOR = "▌"
CHAT_BOX = "Message Parley"


class ProtocolError(Exception):
    """The page did not show what a user needs (a widget, an answer) in time."""


# What can end a user's connection: the page not showing what it needs, the network,
# the server closing the WebSocket (a restart, the proxy's 503), a slow answer.
FAILURES = (ProtocolError, OSError, TimeoutError, WebSocketException, httpx.HTTPError)


def tls_context(cafile: Path | None = None) -> ssl.SSLContext:
    """Certificates checked as a browser would: against the system's authorities, or
    against `cafile` (the local cluster's own self-signed certificate)."""
    return ssl.create_default_context(cafile=str(cafile) if cafile else None)


@dataclass
class Run:
    """What a user looks for in one script run of the page: widget ids by label, error
    boxes, and the redirect Parley sends after a sign-in."""

    widgets: dict[tuple[str, str], str] = field(default_factory=dict)
    redirect: str | None = None
    errors: list[str] = field(default_factory=list)


class Page:
    """One browser tab's connection to the app: send reruns, read the frames."""

    def __init__(
        self, base_url: str, cookies: dict[str, str], tls: ssl.SSLContext | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cookies = cookies
        self.tls = tls
        self._ws: ClientConnection | None = None

    async def open(self) -> Run:
        parts = urlsplit(self.base_url)
        secure = parts.scheme == "https"
        headers = {"Origin": self.base_url}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        self._ws = await connect(
            f"{'wss' if secure else 'ws'}://{parts.netloc}/_stcore/stream",
            subprotocols=[Subprotocol("streamlit")],
            additional_headers=headers,
            ssl=(self.tls or tls_context()) if secure else None,
            max_size=None,
            open_timeout=60,
        )
        await self.rerun([])
        return await self.until_finished(timeout_s=60)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def rerun(self, widgets: Iterable[WidgetState]) -> None:
        assert self._ws is not None
        message = BackMsg()
        state = message.rerun_script
        state.query_string = ""
        state.page_script_hash = ""
        state.context_info.timezone = "UTC"
        state.context_info.url = f"{self.base_url}/"
        state.widget_states.widgets.extend(widgets)
        await self._ws.send(message.SerializeToString())

    async def drain(self) -> None:
        """Reads what already arrived (a run the page made on its own, between turns)."""
        while True:
            try:
                await self.receive(0.05)
            except TimeoutError:
                return

    async def receive(self, timeout_s: float) -> ForwardMsg:
        """The next frame; `TimeoutError` when none comes within `timeout_s` (≤ 0: at once)."""
        assert self._ws is not None
        if timeout_s <= 0:
            raise TimeoutError
        frame = await asyncio.wait_for(self._ws.recv(), timeout_s)
        message = ForwardMsg()
        message.ParseFromString(frame if isinstance(frame, bytes) else frame.encode())
        return message

    async def until_finished(self, *, timeout_s: float) -> Run:
        """Reads one whole script run (the last one, when a run reruns itself)."""
        run = Run()
        deadline = time.monotonic() + timeout_s
        while True:  # the deadline holds however busily the page sends
            message = await self.receive(deadline - time.monotonic())
            kind = message.WhichOneof("type")
            if kind == "delta":
                note_element(run, message)
            elif kind == "auth_redirect":
                run.redirect = message.auth_redirect.url
            elif kind == "script_finished":
                if message.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    run = Run(redirect=run.redirect)
                    continue
                return run


def note_element(run: Run, message: ForwardMsg) -> None:
    """Keeps what a user looks for: widget ids by label, and error boxes."""
    delta = message.delta
    if delta.WhichOneof("type") != "new_element":
        return
    element = delta.new_element
    kind = element.WhichOneof("type")
    if kind == "text_input":
        run.widgets[("text_input", element.text_input.label)] = element.text_input.id
    elif kind == "button":
        run.widgets[("button", element.button.label)] = element.button.id
    elif kind == "chat_input":
        run.widgets[("chat_input", element.chat_input.placeholder)] = element.chat_input.id
    elif kind == "alert" and element.alert.format == Alert.ERROR:
        run.errors.append(element.alert.body)


def widget(run: Run, kind: str, label: str) -> str:
    try:
        return run.widgets[(kind, label)]
    except KeyError:
        raise ProtocolError(f"no {kind} {label!r} on the page") from None


async def sign_in(
    base_url: str, name: str, password: str, tls: ssl.SSLContext | None = None
) -> dict[str, str]:
    """Signs in through the form and the ticket route; the session cookie."""
    page = Page(base_url, {}, tls)
    try:
        run = await page.open()
        await page.rerun(
            [
                WidgetState(id=widget(run, "text_input", "User name"), string_value=name),
                WidgetState(id=widget(run, "text_input", "Password"), string_value=password),
                WidgetState(id=widget(run, "button", "Log in"), trigger_value=True),
            ]
        )
        deadline = time.monotonic() + 60
        redirect = None
        while redirect is None:
            message = await page.receive(deadline - time.monotonic())
            if message.WhichOneof("type") == "auth_redirect":
                redirect = message.auth_redirect.url
            elif message.WhichOneof("type") == "delta":
                refused = Run()
                note_element(refused, message)
                if refused.errors:
                    raise ProtocolError(f"sign-in refused: {refused.errors[0][:80]}")
    finally:
        await page.close()
    async with httpx.AsyncClient(verify=tls or tls_context(), timeout=60) as http:
        answer = await http.get(
            f"{page.base_url}{redirect}",
            headers={"Sec-Fetch-Site": "same-origin", "Referer": f"{page.base_url}/"},
        )
    cookie = answer.cookies.get(COOKIE_NAME)
    if not cookie:
        raise ProtocolError(f"no session cookie from {urlsplit(redirect).path}")
    return {COOKIE_NAME: cookie}


@dataclass
class Turn:
    """One message's times from sending it (seconds), and its error, if any.

    `page_s`: the page's run drew the chat box, having read the message (everything
    above it: sidebar, history, checks); `stored_s`: the question was stored and shown;
    `first_s`: the first text of the answer; `full_s`: the stored answer shown.
    """

    page_s: float | None = None
    stored_s: float | None = None
    first_s: float | None = None
    full_s: float | None = None
    error: str | None = None


def plain(markdown: str) -> str:
    """Markdown as escaped by the page (`safe_markdown`), back to the text."""
    return re.sub(r"\\(.)", r"\1", markdown)


async def ask(page: Page, chat_id: str, text: str, *, timeout_s: float) -> Turn:
    """Sends one message and times its answer as the frames arrive.

    The run the message starts draws the question, then the answer with a cursor (▌) as
    it streams, then reruns once the answer is stored; that run draws the conversation
    from the database, the answer after the question. The run's own last drawing is
    dropped with the rerun (as Streamlit drops a run's unsent messages), and a short
    answer may reach the page whole in that rerun, never with a cursor: its first text
    is then the whole answer.
    """
    turn = Turn()
    await page.drain()
    sent_at = time.monotonic()
    await page.rerun([WidgetState(id=chat_id, chat_input_value=ChatInputValue(data=text))])
    deadline = sent_at + timeout_s
    started = False  # frames of a run the page started before this message are not its
    reran = False  # the answer's own run is over; this is the run after it
    asked = False  # in the run after, the question was drawn: the answer comes next
    while True:
        try:
            message = await page.receive(deadline - time.monotonic())
        except TimeoutError:
            turn.error = turn.error or "timed out"
            return turn
        now = time.monotonic() - sent_at
        kind = message.WhichOneof("type")
        if kind == "new_session":
            started = True
        if not started:
            continue
        if kind == "script_finished":
            if message.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                reran = True
                continue
            if turn.full_s is None and turn.error is None:
                turn.error = "the page finished with no answer"
            return turn
        if kind != "delta" or message.delta.WhichOneof("type") != "new_element":
            continue
        element = message.delta.new_element
        shown = element.WhichOneof("type")
        if shown == "alert" and element.alert.format == Alert.ERROR:
            turn.error = turn.error or element.alert.body[:80]
        elif shown == "chat_input" and not reran and turn.page_s is None:
            turn.page_s = now
        elif shown != "markdown":
            continue
        elif not reran:
            body = element.markdown.body
            if plain(body) == text and turn.stored_s is None:
                turn.stored_s = now
            elif body.endswith(CURSOR) and body.strip(f"{CURSOR} ") and turn.first_s is None:
                turn.first_s = now
        elif not asked:
            asked = plain(element.markdown.body) == text
        elif turn.full_s is None:  # the first drawing after the question: the answer
            turn.full_s = now
            turn.first_s = now if turn.first_s is None else turn.first_s


@dataclass
class UserResult:
    ttft_s: list[float] = field(default_factory=list)
    full_s: list[float] = field(default_factory=list)
    page_s: list[float] = field(default_factory=list)
    stored_s: list[float] = field(default_factory=list)
    sent: int = 0
    errors: list[str] = field(default_factory=list)


def reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def protocol_user(
    url: str, name: str, args: Any, tls: ssl.SSLContext | None = None
) -> UserResult:
    """Signs in, then chats for `args.seconds` (at least `args.min_messages` turns)."""
    result = UserResult()
    page = Page(url, {}, tls)
    try:
        page.cookies = await sign_in(url, name, args.password, tls)
        chat_id = widget(await page.open(), "chat_input", CHAT_BOX)
    except FAILURES as exc:
        result.errors.append(f"sign-in: {reason(exc)}")
        await page.close()
        return result
    stop_at = time.monotonic() + args.seconds
    number = 0
    try:
        while time.monotonic() < stop_at or number < args.min_messages:
            number += 1
            result.sent += 1
            question = f"Question {number} from {name}: how does the answer stream?"
            turn = await ask(page, chat_id, question, timeout_s=args.answer_timeout_s)
            if turn.error is not None or turn.first_s is None or turn.full_s is None:
                result.errors.append(f"answer {number}: {turn.error or 'no answer'}")
                await page.close()
                chat_id = widget(await page.open(), "chat_input", CHAT_BOX)
                continue
            result.ttft_s.append(turn.first_s)
            result.full_s.append(turn.full_s)
            if turn.page_s is not None and turn.stored_s is not None:
                result.page_s.append(turn.page_s)
                result.stored_s.append(turn.stored_s)
            await asyncio.sleep(args.think_s)  # and the next question, same conversation
    except FAILURES as exc:
        result.errors.append(f"connection: {reason(exc)}")
    finally:
        await page.close()
    return result
