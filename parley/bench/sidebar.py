"""How long the sidebar's list takes for a user with thousands of conversations.

One user gets `--conversations` conversations (5,000 by default; written straight into
a fresh SQLite database, a tenth of them archived, five pinned, their last activity
spread over a year), beside 20 other users with 200 each. Then, timed `--runs` times
each, what a page run of the chat page asks of the database for its sidebar:

- "first page": `ConversationService.listing(limit=50)`, the pinned ones and the 50
  newest others, with the labels and the day groups the page draws;
- "after 9 × Show more": the same with `limit=500`;
- "archived": the archived list;
- "every conversation (before)": `list_for`, all of them at once, as the sidebar did
  before it was paged.

Run: `.venv/bin/python -m parley.bench.sidebar [--conversations 5000] [--runs 50] [--json]`.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert

from parley.chat.conversation.conversations import ConversationInfo
from parley.chat.conversation.listing import date_groups, distinct_labels
from parley.core.config import ProviderChoice, Settings
from parley.core.domain import Principal, Role
from parley.store.db import Database
from parley.store.migrate import upgrade
from parley.store.models import Conversation, User, utcnow
from parley.wiring.services import Services, build_services


def seed(database: Database, conversations: int, rng: random.Random) -> int:
    """The measured user (their id) and the other users, with their conversations."""
    now = utcnow()
    with database.session() as session:
        people = [User(name=f"user{i}", role=Role.USER, created_at=now) for i in range(21)]
        session.add_all(people)
        session.flush()
        users = [p.id for p in people]
        rows = []
        for user, count in [(users[0], conversations), *((u, 200) for u in users[1:])]:
            for n in range(count):
                when = now - timedelta(minutes=rng.randrange(365 * 24 * 60))
                rows.append(
                    {
                        "user_id": user,
                        "title": f"Conversation {n} about {rng.choice(['trains', 'tax', 'jam'])}",
                        "created_at": when,
                        "updated_at": when,
                        "archived_at": when if user == users[0] and n % 10 == 9 else None,
                        "pinned_at": when if user == users[0] and n < 5 else None,
                    }
                )
        session.execute(insert(Conversation), rows)
    return int(users[0])


def timed(call: Callable[[], object], runs: int) -> tuple[float, float]:
    took = []
    for _ in range(runs):
        began = time.perf_counter()
        call()
        took.append((time.perf_counter() - began) * 1000)
    took.sort()
    return statistics.median(took), took[min(len(took) - 1, int(len(took) * 0.95))]


def drawn(services: Services, user: Principal, limit: int, archived: bool = False) -> int:
    """What the page computes for its sidebar: the page, its labels, its day groups."""
    page = services.conversations.listing(user, limit=limit, archived=archived)
    shown: list[ConversationInfo] = [*page.pinned, *page.recent]
    distinct_labels(shown)
    date_groups(page.recent, today=utcnow().date())
    return len(shown)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp), provider=ProviderChoice.LOCAL, memory_strategy="token_window"
        )
        database = Database(settings.resolved_database_url)
        upgrade(database)
        user_id = seed(database, args.conversations, random.Random(7))
        database.dispose()
        services = build_services(settings, eager=False)
        try:
            user = Principal(user_id=user_id, name="user0", role=Role.USER)
            cases: list[tuple[str, Callable[[], object]]] = [
                ("first page", lambda: drawn(services, user, 50)),
                ("after 9 × Show more", lambda: drawn(services, user, 500)),
                ("archived", lambda: drawn(services, user, 50, archived=True)),
                ("every conversation (before)", lambda: services.conversations.list_for(user)),
            ]
            results = []
            for name, call in cases:
                call()  # warm
                p50, p95 = timed(call, args.runs)
                results.append({"case": name, "p50_ms": round(p50, 2), "p95_ms": round(p95, 2)})
        finally:
            services.close()
    print(f"Sidebar of a user with {args.conversations:,} conversations ({args.runs} runs each)")
    print(f"{'case':<30} {'p50 ms':>8} {'p95 ms':>8}")
    for row in results:
        print(f"{row['case']:<30} {row['p50_ms']:>8.2f} {row['p95_ms']:>8.2f}")
    if args.json:
        print(json.dumps({"conversations": args.conversations, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
