"""What Parley adds to time-to-first-token, over the provider's own, as a conversation grows.

The fake Anthropic server (`parley.fakes.anthropic_server`) answers every request after a
fixed latency. Each round measures, back to back:

- **SDK**: `client.messages.stream(...)` until the first text delta;
- **Parley**: `ChatService.send(...)` until the first chunk of the reply — text
  validation, quota check, history load, context assembly (the default strategy,
  `hybrid`: summary, recent window, recall over every earlier turn), committing the
  user's message, the queue, the rate limiter and the same SDK call.

The overhead is the difference, per round. The conversation is grown through the
same service to each length in turn (`--history 40 440 2000`), then measured.
Upkeep after each answer (indexing, summary folds) runs inline, outside the timing.

Run: `make bench` or `.venv/bin/python -m parley.bench.ttft [--rounds 100] [--history 40 440 2000]`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anthropic
from pydantic import SecretStr

from parley.chat.gateway.providers.anthropic import AnthropicProvider
from parley.chat.gateway.providers.keys import StaticKey
from parley.core.background import BackgroundWork
from parley.core.config import Settings
from parley.core.domain import Principal
from parley.fakes.anthropic_server import FakeAnthropic, Reply
from parley.store.db import Database
from parley.store.migrate import upgrade
from parley.wiring import Services, build_services

WARM_UP_ROUNDS = 10


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def grow(services: Services, user: Principal, conversation: int | None, turns: int) -> int:
    """Add question-and-answer pairs until the conversation holds `turns` turns."""
    have = 0 if conversation is None else len(services.conversations.messages(user, conversation))
    while have < turns:
        reply = services.chat.send(user, conversation, f"Earlier question number {have // 2}?")
        list(reply)
        conversation = reply.conversation_id
        have += 2
    assert conversation is not None
    return conversation


def measure(
    services: Services,
    client: anthropic.Anthropic,
    user: Principal,
    conversation: int,
    rounds: int,
) -> tuple[list[float], list[float], list[float]]:
    sdk, parley, overhead = [], [], []
    for round_ in range(rounds + WARM_UP_ROUNDS):
        started = time.perf_counter()
        with client.messages.stream(
            model="claude-bench", max_tokens=256, messages=[{"role": "user", "content": "Hello"}]
        ) as stream:
            next(iter(stream.text_stream))
            sdk_ttft = time.perf_counter() - started
            stream.close()

        started = time.perf_counter()
        answer = services.chat.send(user, conversation, f"Question {round_}?")
        chunks = iter(answer)
        next(chunks)
        parley_ttft = time.perf_counter() - started
        for _ in chunks:
            pass
        if round_ >= WARM_UP_ROUNDS:
            sdk.append(sdk_ttft * 1000)
            parley.append(parley_ttft * 1000)
            overhead.append((parley_ttft - sdk_ttft) * 1000)
    return sdk, parley, overhead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument(
        "--history", type=int, nargs="+", default=[40, 440, 2000], help="turns before measuring"
    )
    args = parser.parse_args()

    reply = Reply(
        text="The first token arrives after the fixed latency.", delay_s=args.latency_ms / 1000
    )
    table: list[tuple[int, str, list[float]]] = []
    with tempfile.TemporaryDirectory() as folder, FakeAnthropic(default_reply=reply) as fake:
        settings = Settings(
            data_dir=Path(folder),
            anthropic_api_key=SecretStr("sk-ant-bench"),
            anthropic_base_url=fake.base_url,
            model_titles=False,
            quota_messages_per_day=0,
            quota_tokens_per_day=0,
            requests_per_minute=1e6,
            input_tokens_per_minute=1e9,
            output_tokens_per_minute=1e9,
        )
        upgrade(Database(settings.resolved_database_url))
        provider = AnthropicProvider(
            keys=StaticKey(SecretStr("sk-ant-bench")), model="claude-bench", base_url=fake.base_url
        )
        services = build_services(settings, provider=provider, background=BackgroundWork(workers=0))
        client = anthropic.Anthropic(api_key="sk-ant-bench", base_url=fake.base_url)
        try:
            user = services.accounts.create_first_admin(name="bench", password="bench-password")
            conversation: int | None = None
            for length in sorted(args.history):
                conversation = grow(services, user, conversation, length)
                sdk, parley, overhead = measure(services, client, user, conversation, args.rounds)
                table += [
                    (length, "SDK alone", sdk),
                    (length, "through Parley", parley),
                    (length, "Parley's overhead", overhead),
                ]
                print(f"measured at {length:,} turns", flush=True)
        finally:
            services.close()

    print(
        f"time to first token, {args.rounds} rounds per length, fixed provider latency "
        f"{args.latency_ms:.0f} ms"
    )
    print(f"| {'turns':>6} | {'':<18} | {'p50 ms':>7} | {'p95 ms':>7} | {'mean ms':>7} |")
    print(f"|{'-' * 8}|{'-' * 20}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
    for length, name, values in table:
        print(
            f"| {length:>6,} | {name:<18} | {percentile(values, 50):>7.1f} "
            f"| {percentile(values, 95):>7.1f} | {statistics.fmean(values):>7.1f} |"
        )


if __name__ == "__main__":
    main()
