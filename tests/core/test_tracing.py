"""Traces of a chat turn: the spans and their parents, no user text or name in them, and
export by OTLP/HTTP to a collector when the environment names one."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core import tracing
from parley.core.domain import Principal
from parley.core.errors import StreamInterrupted
from parley.wiring.services import Services

QUESTION = "What is the capital of Zembla-7731?"
ANSWER = ["Onhava-5520 ", "is its capital."]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in finished}


def every_value(span: ReadableSpan) -> list[str]:
    values = [str(v) for v in (span.attributes or {}).values()]
    values += [str(v) for e in span.events for v in (e.attributes or {}).values()]
    return [*values, span.status.description or ""]


def test_a_turn_is_one_trace_with_retrieval_assembly_the_call_and_storing(
    services: Services,
    scripted: ScriptedProvider,
    alice: Principal,
    spans: InMemorySpanExporter,
) -> None:
    scripted.enqueue(*ANSWER)
    reply = services.chat.send(alice, None, QUESTION)
    assert "".join(reply) == "".join(ANSWER)
    found = by_name(spans.get_finished_spans())
    assert set(found) == {
        "parley.chat.turn",
        "parley.chat.retrieve",
        "parley.chat.assemble",
        "parley.provider.call",
        "parley.answer.store",
    }
    turn = found["parley.chat.turn"]
    assert turn.parent is None and turn.context is not None
    for name, span in found.items():
        assert span.context is not None
        assert span.context.trace_id == turn.context.trace_id, name
        if span is not turn:
            assert span.parent is not None and span.parent.span_id == turn.context.span_id
    call = found["parley.provider.call"]
    assert [e.name for e in call.events] == ["first_token"]
    assert call.attributes is not None and call.attributes["parley.purpose"] == "chat"
    assert call.attributes["parley.output_tokens"] == 2
    assert turn.attributes is not None and turn.attributes["parley.status"] == "complete"
    assert turn.attributes["parley.conversation_id"] == reply.conversation_id
    for span in found.values():  # ids and counts only: no words of the user, no name
        for value in every_value(span):
            for secret in ("Zembla", "Onhava", "capital", alice.name):
                assert secret not in value, (span.name, value)


def test_a_broken_call_is_a_failed_span_and_the_turn_still_ends(
    services: Services,
    scripted: ScriptedProvider,
    alice: Principal,
    spans: InMemorySpanExporter,
) -> None:
    scripted.enqueue_error(StreamInterrupted(partial_text="Half"), chunks=["Half"])
    scripted.enqueue_error(StreamInterrupted(partial_text=""), chunks=[])  # the continuation
    reply = services.chat.send(alice, None, QUESTION)
    assert "".join(reply) == "Half"
    finished = spans.get_finished_spans()
    calls = [s for s in finished if s.name == "parley.provider.call"]
    assert len(calls) == 2 and all(c.status.status_code is StatusCode.ERROR for c in calls)
    assert calls[1].attributes is not None
    assert calls[1].attributes["parley.purpose"] == "continuation"
    turn = by_name(finished)["parley.chat.turn"]
    assert turn.attributes is not None and turn.attributes["parley.status"] == "interrupted"


def test_nothing_is_recorded_when_traces_are_off(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    assert not tracing.enabled()
    scripted.enqueue("Fine.")
    reply = services.chat.send(alice, None, QUESTION)
    assert "".join(reply) == "Fine."
    assert reply.trace is not None and not reply.trace.is_recording()


class Collector(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Collector.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_spans_go_to_an_otlp_collector_when_one_is_configured(
    services: Services,
    scripted: ScriptedProvider,
    alice: Principal,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Collector.received = []
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "parley-test")
    try:
        assert tracing.configure_from_env()
        scripted.enqueue(*ANSWER)
        assert "".join(services.chat.send(alice, None, QUESTION)) == "".join(ANSWER)
        assert tracing.flush()
        assert [path for path, _ in Collector.received] == ["/v1/traces"]
        export = ExportTraceServiceRequest()
        export.ParseFromString(Collector.received[0][1])
        (resource,) = export.resource_spans
        service = {a.key: a.value.string_value for a in resource.resource.attributes}
        assert service["service.name"] == "parley-test"
        names = {s.name for scope in resource.scope_spans for s in scope.spans}
        assert {"parley.chat.turn", "parley.provider.call", "parley.answer.store"} <= names
        assert b"Zembla" not in Collector.received[0][1]
    finally:
        tracing.flush()
        if tracing._provider is not None:
            tracing._provider.shutdown()
        tracing.use_provider(None)
        server.shutdown()
        server.server_close()
