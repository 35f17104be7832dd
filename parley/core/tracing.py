"""Optional OpenTelemetry traces of a chat turn, exported by OTLP when configured.

Off unless the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: then each process sends its spans over
OTLP in batches (HTTP/protobuf, or gRPC when `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`), named
by `OTEL_SERVICE_NAME` (default `parley`). `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none` keep them off. Off, every span is the API's non-recording
span: a function call, no allocation of note. A collector that is down costs the
request path nothing (the batch is sent from the SDK's own thread) and a process's
shutdown at most `FLUSH_DEADLINE_S`.

A turn is one span (`parley.chat.turn`) with children for retrieval, context
assembly, each provider call (with a `first_token` event) and storing the answer with
its audit record. Spans carry ids, models, purposes, token counts and outcomes: never
user text and never user names (a test reads every attribute). Parents are passed
explicitly, not through the current context: a turn's answer is a generator read by
the page between yields, and a context attached there would leak into the page.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import NoOpTracer, Span, Status, StatusCode

Attribute = str | int | float | bool

_lock = threading.Lock()
_tracer: trace.Tracer = NoOpTracer()
_provider: Any = None  # the SDK's TracerProvider, when traces are exported


def enabled() -> bool:
    return _provider is not None


def configure_from_env() -> bool:
    """Export spans by OTLP/HTTP if the environment names an endpoint; once per process.
    True when traces are exported."""
    global _tracer, _provider
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    exporters = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if not endpoint or disabled or exporters == "none":
        return False
    with _lock:
        if _provider is not None:
            return True
        from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create(
            {
                SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", "parley"),
                SERVICE_INSTANCE_ID: f"{os.uname().nodename}:{os.getpid()}",
            }
        )
        provider = TracerProvider(resource=resource)
        # The exporter reads the endpoint and headers from the OTEL_* variables.
        provider.add_span_processor(BatchSpanProcessor(_exporter()))
        _provider, _tracer = provider, provider.get_tracer("parley")
        return True


def _exporter() -> Any:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    timeout = float(os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")) / 1000
    if protocol.strip().lower() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(timeout=timeout)


def use_provider(provider: Any) -> None:
    """Send spans to this SDK `TracerProvider` (tests), or None to turn traces off."""
    global _tracer, _provider
    with _lock:
        _provider = provider
        _tracer = provider.get_tracer("parley") if provider is not None else NoOpTracer()


FLUSH_DEADLINE_S = 3.0


def flush(timeout_s: float = FLUSH_DEADLINE_S) -> bool:
    """Send what is batched (at the end of a process, or in a test), waiting at most
    `timeout_s` whatever the collector does (the SDK's own wait is per attempt); True
    when it was all sent."""
    provider = _provider
    if provider is None:
        return True
    done = threading.Event()

    def send() -> None:
        provider.force_flush(int(timeout_s * 1000))
        done.set()

    threading.Thread(target=send, name="parley-trace-flush", daemon=True).start()
    return done.wait(timeout_s)


def start(name: str, parent: Span | None = None, **attributes: Attribute | None) -> Span:
    """A span, child of `parent` (a root when None); the caller ends it."""
    context = trace.set_span_in_context(parent) if parent is not None else None
    return _tracer.start_span(name, context=context, attributes=_kept(attributes))


@contextmanager
def child(parent: Span | None, name: str, **attributes: Attribute | None) -> Iterator[Span]:
    """A span around a block; an exception marks it failed (by type: its message may
    hold user text) and goes on."""
    span = start(name, parent, **attributes)
    try:
        yield span
    except BaseException as exc:
        failed(span, exc)
        raise
    finally:
        span.end()


def failed(span: Span, exc: BaseException) -> None:
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


def _kept(attributes: dict[str, Attribute | None]) -> dict[str, Attribute]:
    return {f"parley.{k}": v for k, v in attributes.items() if v is not None}


__all__ = ["child", "configure_from_env", "enabled", "failed", "flush", "start", "use_provider"]
