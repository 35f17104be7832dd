"""A fake Anthropic Messages API server for tests (standard library only).

It listens on 127.0.0.1 and speaks the real wire format (JSON and server-sent events), so the
official ``anthropic`` SDK parses real bytes. The Message Batches API is there too
(``/v1/messages/batches``: create, retrieve, list, cancel, results as JSON lines;
``parley.fakes.anthropic_batches``): each request of a batch takes the next scripted item.
Script answers with :class:`Reply` and failures with :class:`Fault` via
:meth:`FakeAnthropic.enqueue`; every request is kept in ``requests``, and when a client
hung up mid-answer in ``hangups``.

Usage::

    with FakeAnthropic() as fake:
        fake.enqueue(Reply(text="Hi there"), Fault("rate_limit", retry_after=1))
        client = anthropic.Anthropic(api_key="k", base_url=fake.base_url, max_retries=0)

On its own, for watching the prompts a memory strategy builds (each request's system
prompt and messages are printed as they arrive; every answer is ``--reply``)::

    python -m parley.fakes.anthropic_server --port 8765 [--reply TEXT] [--quiet]
    ANTHROPIC_API_KEY=fake ANTHROPIC_BASE_URL=http://127.0.0.1:8765 parley chat ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO, cast

from parley.fakes.anthropic_batches import FakeBatches
from parley.fakes.anthropic_script import (
    DEFAULT_RANDOM_KINDS,
    FAULT_KINDS,
    HTTP_ERRORS,
    Cited,
    Fault,
    FaultKind,
    RecordedRequest,
    Reply,
    citation,
    citation_problem,
    image_problem,
    new_id,
    random_fault,
    rough_tokens,
    split_words,
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeAnthropic

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: clients hanging up (timeouts, drops) are expected here."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeAnthropic/1.0"

    @property
    def fake(self) -> FakeAnthropic:
        return cast(_Server, self.server).fake

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request logging."""

    # --- plumbing -------------------------------------------------------------------------

    def _send_head(self, status: int, content_type: str, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("request-id", self._request_id)
        self.send_header("connection", "close")
        for name, value in extra.items():
            self.send_header(name, value)
        self.close_connection = True

    def _send_json(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self._send_head(status, "application/json", extra or {})
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_error(self, kind: str, extra: dict[str, str] | None = None) -> None:
        extra = {**self.fake.error_headers, **(extra or {})}
        status, err_type, message = HTTP_ERRORS[kind]
        error = {"type": err_type, "message": message}
        self._send_json(
            status, {"type": "error", "error": error, "request_id": self._request_id}, extra
        )

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _event(self, name: str, payload: dict[str, Any]) -> None:
        self._chunk(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode())

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # --- dispatch -------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        self._request_id = new_id("req")
        try:
            self._dispatch()
        except OSError:  # the client went away (timeouts, drops, a stopped answer)
            self.close_connection = True
            self.fake._hung_up()

    def _dispatch(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        body: Any = None
        bad_json = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                bad_json = True
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake = self.fake
        request = RecordedRequest(self.command, path, headers, body)
        fake._record(request)

        if fake.api_keys is not None and request.api_key not in fake.api_keys:
            self._send_error("auth")
            return
        if path == "/v1/messages/batches" or path.startswith("/v1/messages/batches/"):
            self._batches(path, body, bad_json)
            return
        if self.command != "POST" or path not in ("/v1/messages", "/v1/messages/count_tokens"):
            self._send_error("not_found")
            return
        if bad_json or not isinstance(body, dict) or citation_problem(body) or image_problem(body):
            self._send_error("invalid_request")
            return
        if path == "/v1/messages/count_tokens":
            self._send_json(200, {"input_tokens": rough_tokens(body)})
            return
        self._messages(body, fake._next_item())

    def _batches(self, path: str, body: Any, bad_json: bool) -> None:
        """The Message Batches API (`parley.fakes.anthropic_batches`)."""
        fake, base = self.fake, self.fake.base_url
        parts = path.removeprefix("/v1/messages/batches").strip("/").split("/")
        batch_id, action = parts[0], "/".join(parts[1:])
        if self.command == "POST" and not batch_id:
            refusal = fake.batches.take_refusal()
            if refusal is not None:
                self._send_error(refusal)
                return
            problem = "invalid JSON" if bad_json else fake.batches.problem(body)
            if problem is None:
                problem = next(
                    (
                        "a request's citations or images are invalid"
                        for r in body["requests"]
                        if citation_problem(r["params"]) or image_problem(r["params"])
                    ),
                    None,
                )
            if problem is not None:
                error = {"type": "invalid_request_error", "message": problem}
                self._send_json(400, {"type": "error", "error": error})
                return
            self._send_json(
                200, fake.batches.create(body, next_item=fake._next_item, answer=self._answer)
            )
            return
        found: Any = None
        if self.command == "GET" and not batch_id:
            found = fake.batches.listing(base)
        elif self.command == "GET" and not action:
            found = fake.batches.retrieve(batch_id, base)
        elif self.command == "POST" and action == "cancel":
            found = fake.batches.cancel(batch_id, base)
        elif self.command == "GET" and action == "results":
            data = fake.batches.results(batch_id)
            if data is not None:
                self._send_head(200, "application/binary", {})
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                return
        if found is None:
            self._send_error("not_found")
            return
        self._send_json(200, found)

    def _answer(self, params: dict[str, Any], item: Reply | Fault) -> dict[str, Any]:
        """A whole (non-stream) message for a batch request."""
        assert isinstance(item, Reply)
        schema = _output_schema(params)
        if item is self.fake.default_reply and schema is not None:
            item = Reply(text=json.dumps(_example_of(schema)))
        return self._message(params, item, item.split(), final=True)

    def _messages(self, body: dict[str, Any], item: Reply | Fault) -> None:
        stream = bool(body.get("stream"))
        fake = self.fake
        if isinstance(item, Fault):
            kind = item.kind
            if kind == "timeout":
                if fake._stopping.wait(item.delay_s):
                    self._drop()
                    return
                item = fake.default_reply
            elif kind in HTTP_ERRORS:
                extra: dict[str, str] = {}
                if item.retry_after is not None and kind in ("rate_limit", "overloaded"):
                    extra["retry-after"] = f"{item.retry_after:g}"
                self._send_error(kind, extra)
                return
            elif not stream:  # mid-stream kinds on a non-stream request
                self._send_error("server_error")
                return
            else:
                self._stream(body, Reply(text=item.text), fault=item)
                return
        schema = _output_schema(body)
        if item is fake.default_reply and schema is not None:
            # Structured output (a title, say): what the API would send, an object of
            # the schema, at the reply's pace.
            item = Reply(text=json.dumps(_example_of(schema)), chunk_delay_s=item.chunk_delay_s)
        if item.delay_s > 0 and fake._stopping.wait(item.delay_s):
            self._drop()
            return
        if stream:
            self._stream(body, item, fault=None)
        else:
            self._send_json(200, self._message(body, item, item.split(), final=True), item.headers)

    def _message(
        self, body: dict[str, Any], reply: Reply, chunks: list[str], *, final: bool
    ) -> dict[str, Any]:
        input_tokens = reply.input_tokens if reply.input_tokens is not None else rough_tokens(body)
        output_tokens = reply.output_tokens if reply.output_tokens is not None else len(chunks)
        return {
            "id": new_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": reply.model or str(body.get("model") or "claude-fake"),
            "content": self._content(body, reply, chunks) if final else [],
            "stop_reason": reply.stop_reason if final else None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens if final else 1,
                "cache_creation_input_tokens": reply.cache_creation_input_tokens,
                "cache_read_input_tokens": reply.cache_read_input_tokens,
            },
        }

    @staticmethod
    def _content(body: dict[str, Any], reply: Reply, chunks: list[str]) -> list[dict[str, Any]]:
        if reply.segments is None:
            return [{"type": "text", "text": "".join(chunks)}]
        blocks: list[dict[str, Any]] = []
        for segment in reply.segments:
            if isinstance(segment, Cited):
                found = citation(body, segment)
                cites = [found] if found else []
                blocks.append({"type": "text", "text": segment.text, "citations": cites})
            else:
                blocks.append({"type": "text", "text": segment})
        return blocks

    def _stream_segments(self, body: dict[str, Any], reply: Reply) -> None:
        """A whole answer of several text blocks, cited ones opening with a citations_delta."""
        assert reply.segments is not None
        for index, segment in enumerate(reply.segments):
            cited = segment if isinstance(segment, Cited) else None
            text = cited.text if cited else str(segment)
            block: dict[str, Any] = {"type": "text", "text": ""}
            if cited:
                block["citations"] = []
            start = {"type": "content_block_start", "index": index, "content_block": block}
            self._event("content_block_start", start)
            found = citation(body, cited) if cited else None
            if found:
                delta = {"type": "citations_delta", "citation": found}
                self._event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            for chunk in split_words(text):
                delta = {"type": "text_delta", "text": chunk}
                self._event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            self._event("content_block_stop", {"type": "content_block_stop", "index": index})

    def _stream(self, body: dict[str, Any], reply: Reply, fault: Fault | None) -> None:
        chunks = reply.split()
        sent = chunks if fault is None else chunks[: max(0, fault.after_chunks)]
        extra = {"cache-control": "no-cache", "transfer-encoding": "chunked", **reply.headers}
        self._send_head(200, "text/event-stream; charset=utf-8", extra)
        self.end_headers()
        start = self._message(body, reply, chunks, final=False)
        self._event("message_start", {"type": "message_start", "message": start})
        if reply.segments is not None and fault is None:
            self._stream_segments(body, reply)
            self._finish(reply, len(chunks))
            return
        block = {"type": "content_block_start", "index": 0}
        self._event("content_block_start", {**block, "content_block": {"type": "text", "text": ""}})
        self._event("ping", {"type": "ping"})
        stopping = self.fake._stopping
        for i, chunk in enumerate(sent):
            if i and reply.chunk_delay_s > 0 and stopping.wait(reply.chunk_delay_s):
                self._drop()
                return
            delta = {"type": "text_delta", "text": chunk}
            self._event(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        if fault is not None and fault.kind == "drop_mid_stream":
            self._drop()
            return
        if fault is not None and fault.kind == "error_event":
            error = {"type": "overloaded_error", "message": "Overloaded"}
            self._event("error", {"type": "error", "error": error})
            self._end_chunks()
            return
        self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
        if fault is None:
            self._finish(reply, len(chunks))
            return
        self._end_chunks()

    def _finish(self, reply: Reply, chunks: int) -> None:
        output_tokens = reply.output_tokens if reply.output_tokens is not None else chunks
        self._event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
        self._event("message_stop", {"type": "message_stop"})
        self._end_chunks()


class FakeAnthropic:
    """A scripted Anthropic Messages API on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        fault_rate: float = 0.0,
        fault_kinds: Sequence[str] | None = None,
        seed: int = 0,
        default_reply: Reply | None = None,
        api_keys: set[str] | None = None,
        error_headers: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        log: TextIO | None = None,
        batch_polls: int = 1,
        batch_answered_on_cancel: int = 0,
    ) -> None:
        kinds = tuple(fault_kinds) if fault_kinds is not None else DEFAULT_RANDOM_KINDS
        for kind in kinds:
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        if not kinds and fault_rate > 0:
            raise ValueError("fault_rate > 0 needs at least one fault kind")
        self.fault_rate = fault_rate
        self.fault_kinds = kinds
        self.default_reply = default_reply if default_reply is not None else Reply()
        self.api_keys = api_keys
        # Sent with every error response, e.g. {"retry-after-ms": "5"} to keep SDK retries quick.
        self.error_headers = dict(error_headers or {})
        self.requests: list[RecordedRequest] = []
        # When (time.monotonic()) a client hung up while its answer was being sent.
        self.hangups: list[float] = []
        self.base_url = ""
        self.address = (host, port)  # port 0: any free one
        self.log = log  # each request's prompt is written here as it arrives
        # The Message Batches API's batches; each stays in progress this many retrievals.
        self.batches = FakeBatches(polls=batch_polls, answered_on_cancel=batch_answered_on_cancel)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._queue: deque[Reply | Fault] = deque()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def enqueue(self, *items: Reply | Fault) -> None:
        """Append scripted answers, served first in, first out."""
        with self._lock:
            self._queue.extend(items)

    def _next_item(self) -> Reply | Fault:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
                return random_fault(self._rng.choice(self.fault_kinds))
            return self.default_reply

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)
            if self.log is not None:
                self.log.write(describe_request(request))
                self.log.flush()

    def _hung_up(self) -> None:
        with self._lock:
            self.hangups.append(time.monotonic())

    @property
    def pending(self) -> int:
        """How many scripted items are still queued."""
        with self._lock:
            return len(self._queue)

    def start(self) -> FakeAnthropic:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(self.address, _Handler)
        server.fake = self
        self._server = server
        self.base_url = f"http://{self.address[0]}:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_fake(**kw: Any) -> Iterator[FakeAnthropic]:
    """Start a :class:`FakeAnthropic` built with ``kw`` and stop it afterwards."""
    with FakeAnthropic(**kw) as fake:
        yield fake


def _block_text(block: Any) -> str:
    if not isinstance(block, dict):
        return str(block)
    cached = " [cache_control]" if block.get("cache_control") else ""
    if block.get("type") == "text":
        return f"{block.get('text', '')}{cached}"
    title = f" {block['title']!r}" if isinstance(block.get("title"), str) else ""
    return f"<{block.get('type')} block{title}>{cached}"


def _content_text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(_block_text(block) for block in content)
    return str(content)


def describe_request(request: RecordedRequest) -> str:
    """One request as a person reads it: the call, the system prompt and each message."""
    body = request.body if isinstance(request.body, dict) else {}
    lines = [f"=== {request.method} {request.path}"]
    if body:
        lines[0] += (
            f"  model={body.get('model')} max_tokens={body.get('max_tokens')}"
            f" stream={bool(body.get('stream'))}"
        )
    if "system" in body:
        lines += ["--- system", _content_text(body["system"])]
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            lines += [f"--- {message.get('role')}", _content_text(message.get("content"))]
    return "\n".join(lines) + "\n\n"


def _output_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    config = body.get("output_config")
    if not isinstance(config, dict):
        return None
    found = config.get("format")
    if isinstance(found, dict) and found.get("type") == "json_schema":
        schema = found.get("schema")
        return schema if isinstance(schema, dict) else None
    return None


def _example_of(schema: dict[str, Any]) -> Any:
    """A small value that satisfies a simple JSON schema (objects of strings, numbers,
    booleans and arrays): what a model asked for structured output returns."""
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        return {name: _example_of(sub) for name, sub in properties.items()}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    return "A fake title"


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted, printing the base URL, then each request's prompt."""
    parser = argparse.ArgumentParser(
        prog="python -m parley.fakes.anthropic_server",
        description="A fake Anthropic Messages API that prints each prompt it receives.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0: any free port")
    parser.add_argument("--reply", default=Reply().text, help="the text of every answer")
    parser.add_argument("--quiet", action="store_true", help="do not print the requests")
    parser.add_argument(
        "--words", type=int, default=0, help="answer with this many words instead of --reply"
    )
    parser.add_argument(
        "--word-delay-ms", type=float, default=0.0, help="wait between streamed words (pace)"
    )
    args = parser.parse_args(argv)
    out = sys.stdout
    text = args.reply
    if args.words > 0:
        vocabulary = [
            "the",
            "answer",
            "takes",
            "its",
            "time",
            "and",
            "streams",
            "one",
            "word",
            "after",
            "another",
        ]
        text = " ".join(vocabulary[i % len(vocabulary)] for i in range(args.words)) + "."
    fake = FakeAnthropic(
        default_reply=Reply(text=text, chunk_delay_s=args.word_delay_ms / 1000),
        host=args.host,
        port=args.port,
        log=None if args.quiet else out,
    )
    try:
        fake.start()
    except OSError as exc:
        sys.stderr.write(f"Cannot listen on {args.host}:{args.port}: {exc.strerror or exc}\n")
        return 1
    out.write(f"Fake Anthropic API at {fake.base_url}\n")
    out.write(f"  ANTHROPIC_API_KEY=fake ANTHROPIC_BASE_URL={fake.base_url}\n\n")
    out.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


__all__ = [
    "DEFAULT_RANDOM_KINDS",
    "FAULT_KINDS",
    "Cited",
    "FakeAnthropic",
    "Fault",
    "FaultKind",
    "RecordedRequest",
    "Reply",
    "describe_request",
    "main",
    "rough_tokens",
    "running_fake",
    "split_words",
]


if __name__ == "__main__":
    raise SystemExit(main())
