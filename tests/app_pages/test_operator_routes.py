"""What operators and proxies ask a process: alive, ready (database, schema, vector store),
and the metrics of the calls it made, with no user text or name in them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from parley.app_pages import operator_routes, routes
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core import metrics
from parley.core.domain import Principal
from parley.wiring.services import Services
from tests.support import free_port


@pytest.fixture(autouse=True)
def fresh_readiness(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(operator_routes, "_last_ready", None)


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    del services  # migrated, and the same data dir as the routes' settings
    routes._BUILT.clear()
    yield TestClient(Starlette(routes=operator_routes.ROUTES), base_url="http://parley.test")
    routes._BUILT.clear()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match and match[1] == name:
            got = ",".join(sorted((match[2] or "").split(","))) if match[2] else ""
            if got == wanted:
                return float(match[3])
    return 0.0


def test_healthz_answers_and_readyz_checks_the_database_and_vector_store(
    client: TestClient,
) -> None:
    assert client.get("/healthz").text == "ok\n"
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "checks": {"database": "ok", "vector_store": "ok"}}


def test_readyz_says_which_part_is_not_ready(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Chroma server that is not there: refused, with a sentence and no URL.
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("PARLEY_CHROMA_URL", url)
    refused = client.get("/readyz")
    assert refused.status_code == 503
    body = refused.json()
    assert body["checks"]["vector_store"] == "The Chroma server does not answer."
    assert body["checks"]["database"] == "ok" and url not in refused.text


def test_readyz_refuses_a_database_that_is_not_at_this_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARLEY_DATA_DIR", str(tmp_path / "fresh"))  # never upgraded
    routes._BUILT.clear()
    client = TestClient(Starlette(routes=operator_routes.ROUTES))
    refused = client.get("/readyz")
    assert refused.status_code == 503
    assert "parley db upgrade" in refused.json()["checks"]["database"]
    routes._BUILT.clear()


def test_metrics_count_the_calls_and_sessions_and_name_no_user(
    client: TestClient, services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    before = client.get("/metrics").text
    scripted.enqueue("The locker code is ", "TEAL-MOUSE-31.")
    reply = services.chat.send(alice, None, "What is the code? SECRET-QUESTION-77")
    assert "".join(reply).endswith("TEAL-MOUSE-31.")
    services.sessions.start(alice)
    after = client.get("/metrics").text
    calls = ("parley_model_calls_total", {"purpose": "chat", "outcome": "complete"})
    assert sample(after, calls[0], **calls[1]) == sample(before, calls[0], **calls[1]) + 1
    tokens = ("parley_tokens_total", {"model": "scripted", "kind": "output"})
    assert sample(after, tokens[0], **tokens[1]) > sample(before, tokens[0], **tokens[1])
    first = "parley_time_to_first_token_seconds_count"
    assert sample(after, first, purpose="chat") == sample(before, first, purpose="chat") + 1
    assert sample(after, "parley_active_sessions") >= 1
    for private in ("TEAL-MOUSE", "SECRET-QUESTION", "alice"):
        assert private not in after
    ours = "\n".join(line for line in after.splitlines() if line.startswith("parley_"))
    labels = set(re.findall(r'[{,]([a-z_]+)="', ours))
    assert labels <= {"purpose", "outcome", "model", "kind", "status", "cache", "result", "le"}


def test_several_processes_are_summed_in_multiprocess_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROMETHEUS_MULTIPROC_DIR shared: three processes count, a fourth serves the sum; a
    process that ended leaves the live gauges once `process_ended` names it."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    count = textwrap.dedent("""
        import os, sys
        from parley.core import metrics
        for _ in range(int(sys.argv[1])):
            metrics.ANSWERS.labels(purpose="chat", outcome="complete").inc()
        metrics.QUEUE_DEPTH.inc(int(sys.argv[1]))
        print(os.getpid())
    """)
    pids = [
        int(
            subprocess.run(
                [sys.executable, "-c", count, str(n)],
                env=env,
                check=True,
                timeout=60,
                capture_output=True,
            ).stdout
        )
        for n in (2, 3, 5)
    ]
    serve = "from parley.core.metrics import exposition; print(exposition().decode())"

    def scrape() -> str:
        done = subprocess.run(
            [sys.executable, "-c", serve], env=env, check=True, timeout=60, capture_output=True
        )
        return done.stdout.decode()

    text = scrape()
    assert sample(text, "parley_model_calls_total", purpose="chat", outcome="complete") == 10
    assert sample(text, "parley_queue_waiting") == 10
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    for pid in pids:
        metrics.process_ended(pid)
    text = scrape()
    assert sample(text, "parley_queue_waiting") == 0  # live gauges of ended processes go
    assert sample(text, "parley_model_calls_total", purpose="chat", outcome="complete") == 10


def test_a_metric_that_cannot_be_written_costs_no_answer_and_no_metering(
    services: Services,
    scripted: ScriptedProvider,
    alice: Principal,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In multiprocess mode a metric writes a file: its folder gone, the answer and its
    ledger row must still be kept."""
    from sqlalchemy import func, select

    from parley.store.models import UsageEntry

    def gone(*_args: object, **_kwargs: object) -> None:
        raise FileNotFoundError("the metrics folder was removed")

    for metric in (metrics.ANSWERS, metrics.TOKENS, metrics.TIME_TO_FIRST_TOKEN):
        monkeypatch.setattr(metric, "labels", gone)
    monkeypatch.setattr(metrics.QUEUE_WAIT, "observe", gone)
    scripted.enqueue("Still ", "answered.")
    reply = services.chat.send(alice, None, "Does the answer survive?")
    assert "".join(reply) == "Still answered."
    assert reply.result is not None and reply.result.ok
    with services._database.session() as session:
        assert session.scalar(select(func.count(UsageEntry.id))) == 1


def test_readyz_checks_at_most_once_every_two_seconds(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[int] = []
    real = operator_routes.readiness

    def counting(*args: object) -> dict[str, str]:
        checked.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(operator_routes, "readiness", counting)
    for _ in range(20):
        assert client.get("/readyz").status_code == 200
    assert len(checked) == 1
    monkeypatch.setattr(operator_routes, "_READY_FOR_S", 0.0)
    client.get("/readyz")
    assert len(checked) == 2
