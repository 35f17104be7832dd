"""What Parley adds to time-to-first-token, over the provider's own.

The fake Anthropic server answers every request after a fixed latency. Each
round measures, back to back:

- **SDK**: `client.messages.stream(...)` until the first text delta;
- **Parley**: `ChatService.send(...)` until the first chunk of the reply — text
  validation, quota check, history load, context assembly, committing the user's
  message, the queue, the rate limiter and the same SDK call.

The overhead is the difference, per round. Run: `make bench` or
`.venv/bin/python -m bench.ttft [--rounds 200] [--latency-ms 50] [--history 40]`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anthropic
from pydantic import SecretStr

from chat.providers.anthropic import AnthropicProvider
from chat.providers.keys import StaticKey
from chat.service import run_inline
from parley.config import Settings
from parley.services import build_services
from store.db import Database
from store.migrate import upgrade
from tests.fake_anthropic import FakeAnthropic, Reply


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--history", type=int, default=40, help="turns already in the conversation")
    args = parser.parse_args()

    reply = Reply(
        text="The first token arrives after the fixed latency.", delay_s=args.latency_ms / 1000
    )
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
        database = Database(settings.resolved_database_url)
        upgrade(database)
        provider = AnthropicProvider(
            keys=StaticKey(SecretStr("sk-ant-bench")), model="claude-bench", base_url=fake.base_url
        )
        services = build_services(settings, provider=provider, background=run_inline)
        user = services.accounts.create_user(name="bench", password="bench-password")
        first = services.chat.send(user, None, "Start of a long conversation.")
        list(first)
        conversation = first.conversation_id
        for turn in range(args.history // 2 - 1):
            list(services.chat.send(user, conversation, f"Earlier question number {turn}?"))

        client = anthropic.Anthropic(api_key="sk-ant-bench", base_url=fake.base_url)
        sdk, parley, overhead = [], [], []
        for round_ in range(args.rounds + 10):
            started = time.perf_counter()
            with client.messages.stream(
                model="claude-bench",
                max_tokens=256,
                messages=[{"role": "user", "content": "Hello"}],
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
            if round_ >= 10:  # warm-up rounds are not counted
                sdk.append(sdk_ttft * 1000)
                parley.append(parley_ttft * 1000)
                overhead.append((parley_ttft - sdk_ttft) * 1000)

    rows = [("SDK alone", sdk), ("through Parley", parley), ("Parley's overhead", overhead)]
    print(
        f"time to first token, {args.rounds} rounds, fixed provider latency "
        f"{args.latency_ms:.0f} ms, {args.history} turns of history"
    )
    print(f"| {'':<18} | {'p50 ms':>7} | {'p95 ms':>7} | {'mean ms':>7} |")
    print(f"|{'-' * 20}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
    for name, values in rows:
        print(
            f"| {name:<18} | {percentile(values, 50):>7.1f} | {percentile(values, 95):>7.1f} "
            f"| {statistics.fmean(values):>7.1f} |"
        )


if __name__ == "__main__":
    main()
