"""What operators watch, as Prometheus metrics (`prometheus-client`).

Served at `/metrics` (`parley/app_pages/routes.py`). With several app processes on one
host, set `PROMETHEUS_MULTIPROC_DIR` to an empty directory they share (the cluster
script does): each process writes its samples there and any of them serves the sum,
so a scrape through the proxy sees the whole host. Without it, a process serves its own.

Labels are closed sets — an outcome, a purpose, a model name, an error's class, an HTTP
status — never user text, a user's name or id, or a conversation's id.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as _multiprocess

log = logging.getLogger(__name__)

# First text within a second is the goal; a queue pushes it into the tens.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)
_DURATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0)

ANSWERS = Counter(
    "parley_model_calls",
    "Model calls, by why they were made and how they ended",
    ["purpose", "outcome"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "parley_time_to_first_token_seconds",
    "From a call's start (queue included) to its first text",
    ["purpose"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "parley_queue_wait_seconds",
    "Time a call waited for a slot and the rate limits",
    buckets=_LATENCY_BUCKETS,
)
ANSWER_DURATION = Histogram(
    "parley_call_duration_seconds",
    "From a call's start (queue included) to its end, however it ended",
    ["purpose"],
    buckets=_DURATION_BUCKETS,
)
TOKENS = Counter(
    "parley_tokens",
    "Tokens by model and kind (input, output, cache_read, cache_write)",
    ["model", "kind"],
)
COST = Counter("parley_cost_usd", "Cost of model calls in US dollars, by model", ["model"])
PROVIDER_ERRORS = Counter(
    "parley_provider_errors", "Model calls that failed, by the error's kind", ["kind"]
)
RETRYABLE_RESPONSES = Counter(
    "parley_provider_retryable_responses",
    "API responses the SDK retries (408, 409, 429, 5xx), by status",
    ["status"],
)
QUEUE_DEPTH = Gauge(
    "parley_queue_waiting",
    "Calls waiting for a slot now",
    multiprocess_mode="livesum",
)
CALLS_IN_FLIGHT = Gauge(
    "parley_calls_in_flight",
    "Model calls holding a slot now",
    multiprocess_mode="livesum",
)
CACHE_LOOKUPS = Counter(
    "parley_cache_lookups",
    "Lookups of Parley's caches, by cache and result (hit, miss)",
    ["cache", "result"],
)
CACHE_SAVED_TOKENS = Counter(
    "parley_response_cache_saved_tokens",
    "Tokens the response cache saved (what the answers it served had cost), by kind",
    ["kind"],
)
PII_REDACTIONS = Counter(
    "parley_pii_redactions",
    "Personal values replaced by placeholders before a request left, by kind",
    ["kind"],
)
OUTPUT_BLOCKED = Counter(
    "parley_output_blocked",
    "Answers the output guard stopped, by what they repeated (canary, system prompt)",
    ["reason"],
)


def guarded(update: Callable[[], object]) -> None:
    """Apply a metric update; a failure (the multiprocess folder gone, say) is logged and
    never reaches the answer or its metering."""
    try:
        update()
    except Exception:
        log.warning("A metric could not be updated.", exc_info=True)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition(registry: CollectorRegistry | None = None) -> bytes:
    """The text a scrape gets: every process's samples in multiprocess mode, else this one's
    (plus any collectors the caller registered on `registry`)."""
    if registry is None:
        registry = CollectorRegistry()
    if multiprocess_dir():
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY

        return generate_latest(REGISTRY) + generate_latest(registry)
    return generate_latest(registry)


def process_ended(pid: int) -> None:
    """Drop a stopped process's live gauges (multiprocess mode; at shutdown)."""
    if multiprocess_dir():
        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


__all__ = [
    "ANSWERS",
    "ANSWER_DURATION",
    "CACHE_LOOKUPS",
    "CACHE_SAVED_TOKENS",
    "CALLS_IN_FLIGHT",
    "COST",
    "OUTPUT_BLOCKED",
    "PII_REDACTIONS",
    "PROVIDER_ERRORS",
    "QUEUE_DEPTH",
    "QUEUE_WAIT",
    "RETRYABLE_RESPONSES",
    "TIME_TO_FIRST_TOKEN",
    "TOKENS",
    "exposition",
    "guarded",
    "multiprocess_dir",
    "process_ended",
]
