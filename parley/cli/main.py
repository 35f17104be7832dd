"""The `parley` command: accounts, migrations and chat from a terminal.

    parley db upgrade
    parley user add NAME [--admin]      password: asked twice on a terminal, else one line of stdin
    parley user list
    parley user unlock NAME                                 clear a sign-in lock (on record)
    parley user erase NAME [--yes]                          (everything of theirs, for good)
    parley chat --user NAME [--conversation ID] MESSAGE     (MESSAGE '-' reads stdin)
    parley quota show NAME
    parley quota set NAME [--messages N] [--tokens N]      (0: no limit; 'default': the setting)
    parley usage [--days N]                                 tokens and cost per user and day
    parley conversation strategy ID NAME|default --as ADMIN    memory strategy per conversation
    parley conversation search --user NAME QUERY [--json]   full-text, the user's own only
    parley conversation export ID --user NAME [--format markdown|json]      to stdout
    parley conversation import FILE --user NAME             Parley's JSON, as a new one
    parley feedback export [--rating up|down] [--format jsonl|csv]  ratings of answers
    parley memory strategies [--json]                       the installed memory strategies
    parley memory new NAME [--dir DIR]                      a memory strategy plug-in project
    parley bench memory --data FILE --strategy NAME --budget TOKENS [--json]
    parley bench injection --attacks FILE [--attacks FILE] --emails FILE [--turns FILE] [--json]
    parley audit verify | audit export [--format jsonl|csv] [--user U] [--since YYYY-MM-DD]

Everything goes through the same services the page uses, under `PARLEY_DATA_DIR`.

Building the parser imports nothing heavy: a command imports the settings, the database,
the services (and the model SDK only once a model is called) when it runs, so `parley
--help` or a mistyped command answers at once (`python -m parley.bench.cli_start`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from parley.cli.audit import audit_commands
from parley.cli.batch import batch_commands
from parley.cli.common import OPERATOR, close_services, start_quickly, starting
from parley.cli.common import principal_named as _principal
from parley.cli.common import services as _services
from parley.cli.documents import document_commands
from parley.cli.memory import memory_commands
from parley.cli.users import user_commands
from parley.core.counts import count
from parley.core.errors import ParleyError

if TYPE_CHECKING:
    from parley.wiring import Services

# Whoever runs `parley` on the server already holds the database and the settings: the
# commands act as this operator, an administrator who is no account.
# How long a command waits for its background work (a turn's upkeep: memory, summary,
# title; the start-up sweep) before exiting.
UPKEEP_TIMEOUT_S = 60.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # A command that runs needs these; `--help` and a usage error have left by now.
    with starting():
        from parley.core.logs import console_warnings
        from parley.store.audit import set_channel

    # Log lines go to the log file (configure_logging); the terminal gets warnings and
    # errors only, one sentence each, so nothing lands between an answer's chunks.
    root = logging.getLogger()
    root.addHandler(console_warnings())
    root.setLevel(logging.WARNING)
    # Whoever runs `parley` acts as the operator, even for a named user: records say so.
    set_channel("cli")
    code = 1
    try:
        code = _run(args)
    finally:
        # The services' background work ends before the process does (Python's exit
        # refuses the executors new work, so a task cut short there fails), and while the
        # records it appends still say "cli".
        drained = _close_services()
        set_channel(None)  # main() may run inside another program (tests)
    if not drained:
        print("parley: background upkeep did not finish; exiting without it", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # Python joins the pool's threads at exit, which would wait for the stuck call.
        os._exit(code)
    return code


def _close_services() -> bool:
    try:
        return close_services(timeout=UPKEEP_TIMEOUT_S)
    except KeyboardInterrupt:  # interrupted while it waited: leave without the rest
        return False


def _run(args: argparse.Namespace) -> int:
    try:
        result: int = args.func(args)
        return result
    except ParleyError as exc:
        print(f"parley: {exc.user_message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("parley: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="Parley: self-hosted chat.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    db = commands.add_parser("db", help="database migrations").add_subparsers(required=True)
    db_upgrade = db.add_parser("upgrade", help="apply all migrations")
    db_upgrade.set_defaults(func=_db_upgrade)

    user_commands(commands)

    chat = commands.add_parser("chat", help="send one message and stream the answer")
    chat.add_argument("--user", required=True, help="the account that sends the message")
    chat.add_argument("--conversation", type=int, help="continue this conversation")
    chat.add_argument("message", help="the message, or - to read it from stdin")
    chat.set_defaults(func=_chat)

    quota = commands.add_parser("quota", help="per-user daily quotas").add_subparsers(required=True)
    quota_show = quota.add_parser("show", help="a user's quotas and today's use")
    quota_show.add_argument("name")
    quota_show.set_defaults(func=_quota_show)
    quota_set = quota.add_parser("set", help="override a user's daily quotas")
    quota_set.add_argument("name")
    quota_set.add_argument("--messages", type=_quota_value, help="messages per day")
    quota_set.add_argument("--tokens", type=_quota_value, help="tokens per day")
    quota_set.set_defaults(func=_quota_set)

    usage = commands.add_parser("usage", help="tokens and cost per user and day")
    usage.add_argument("--days", type=int, default=7)
    usage.set_defaults(func=_usage)

    conversation = commands.add_parser("conversation", help="conversations").add_subparsers(
        required=True
    )
    strategy = conversation.add_parser("strategy", help="set a conversation's memory strategy")
    strategy.add_argument("id", type=int)
    strategy.add_argument("name", help="a strategy name, or 'default'")
    strategy.add_argument("--as", dest="admin", required=True, help="the admin making the change")
    strategy.set_defaults(func=_conversation_strategy)
    listing = conversation.add_parser("list", help="a user's conversations, newest first")
    listing.add_argument("--user", required=True)
    listing.add_argument("--json", action="store_true", help="end with one JSON list")
    listing.set_defaults(func=_conversation_list)
    find = conversation.add_parser("search", help="full-text search of a user's conversations")
    find.add_argument("query", help="words that must all occur (prefixes match)")
    find.add_argument("--user", required=True, help="whose conversations")
    find.add_argument("--limit", type=int, default=20)
    find.add_argument("--json", action="store_true", help="end with one JSON list")
    find.set_defaults(func=_conversation_search)
    export = conversation.add_parser("export", help="a conversation as Markdown or JSON")
    export.add_argument("id", type=int)
    export.add_argument("--user", required=True, help="the conversation's owner")
    export.add_argument("--format", choices=["markdown", "json"], default="markdown")
    export.set_defaults(func=_conversation_export)
    bring = conversation.add_parser("import", help="Parley's JSON export, as a new conversation")
    bring.add_argument("file", help="the JSON file ('-' reads stdin)")
    bring.add_argument("--user", required=True, help="whose conversation it becomes")
    bring.set_defaults(func=_conversation_import)
    remove = conversation.add_parser(
        "rm", help="erase a conversation: its messages, summaries and vectors"
    )
    remove.add_argument("id", type=int)
    remove.add_argument("--user", required=True, help="the conversation's owner")
    remove.set_defaults(func=_conversation_rm)

    feedback = commands.add_parser("feedback", help="users' ratings of answers").add_subparsers(
        required=True
    )
    export = feedback.add_parser("export", help="every rating as JSON lines or CSV, to stdout")
    export.add_argument("--rating", choices=["up", "down"], help="only this rating")
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.set_defaults(func=_feedback_export)

    document_commands(commands)
    batch_commands(commands)
    audit_commands(commands)
    memory_commands(commands)

    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(required=True)
    bench_memory = bench.add_parser("memory", help="a memory strategy on LoCoMo-format data")
    bench_memory.add_argument("--data", type=Path, required=True)
    bench_memory.add_argument("--strategy", required=True)
    bench_memory.add_argument("--budget", type=int, required=True, action="append")
    bench_memory.add_argument("--limit", type=int, help="only the first N conversations")
    bench_memory.add_argument("--json", action="store_true", help="end with one JSON line")
    bench_memory.set_defaults(func=_bench_memory)
    bench_injection = bench.add_parser(
        "injection", help="the injection detector on BIPIA-format attacks and e-mails"
    )
    bench_injection.add_argument(
        "--attacks", type=Path, required=True, action="append", help="{category: [strings]}"
    )
    bench_injection.add_argument(
        "--emails", type=Path, required=True, help="JSON lines with a 'context' field"
    )
    bench_injection.add_argument(
        "--turns", type=Path, help="LoCoMo-format conversations: their turns as negatives too"
    )
    bench_injection.add_argument("--json", action="store_true", help="end with one JSON line")
    bench_injection.set_defaults(func=_bench_injection)
    return parser


_DEFAULT = -1  # `parley quota set --messages default`: back to the setting


def _quota_value(text: str) -> int:
    if text == "default":
        return _DEFAULT
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a whole number, 0 for no limit, or 'default'") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a whole number, 0 for no limit, or 'default'")
    return value


def _db_upgrade(_args: argparse.Namespace) -> int:
    from parley.core.config import get_settings
    from parley.store.audit import AuditChain
    from parley.store.migrate import KEYED_AUDIT_REVISION, current_revision, upgrade
    from parley.wiring.factories import agree_on_audit_key, open_database

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = open_database(settings)
    try:
        before = current_revision(database)
        if before is not None and before >= "0021":
            # A process with another audit key must not key the old records with it.
            agree_on_audit_key(settings, database)
        upgrade(database)
        sealed = 0
        try:  # records from before the trail was keyed: keyed once, by this very upgrade
            if before is not None and before < KEYED_AUDIT_REVISION:
                sealed = AuditChain(database).seal_legacy()
        except ValueError as exc:
            print(
                f"parley: {exc}; it was left unkeyed, and `parley audit verify` will say "
                "where. Restore the database from a backup, or keep it as evidence.",
                file=sys.stderr,
            )
        after = current_revision(database)
    finally:
        database.dispose()
    where = database.url.render_as_string(hide_password=True)
    if before is None:
        print(f"Database created at revision {after} ({where}).")
    elif before != after:
        print(f"Database upgraded from revision {before} to {after} ({where}).")
    else:
        print(f"Database is up to date at revision {after} ({where}).")
    if sealed:
        print(f"Keyed {count(sealed, 'audit record')} written before the trail was keyed.")
    return 0


def _chat(args: argparse.Namespace) -> int:
    # The turn's upkeep (memory, summary, title) runs in the background: `main` waits for
    # it when it closes the services, at most UPKEEP_TIMEOUT_S.
    return _send(_services(), args)


def _send(services: Services, args: argparse.Namespace) -> int:
    principal = _principal(services, args.user)
    text = sys.stdin.read() if args.message == "-" else args.message
    reply = services.chat.send(principal, args.conversation, text)
    try:
        for chunk in reply:
            sys.stdout.write(chunk)
            sys.stdout.flush()
    finally:
        reply.close()
    sys.stdout.write("\n")
    sys.stdout.flush()
    result = reply.result
    if result is not None and result.error:
        print(f"parley: {result.error}", file=sys.stderr)
    print(reply.conversation_id, file=sys.stderr)
    return 0 if result is not None and result.ok else 1


def _limit(value: int) -> str:
    return "no limit" if value == 0 else f"{value:,}"


def _quota_show(args: argparse.Namespace) -> int:
    services = _services()
    principal = _principal(services, args.name)
    quota = services.quotas.quota(OPERATOR, principal.user_id)
    used = services.quotas.today(OPERATOR, principal.user_id)
    print(
        f"{principal.name}: today {count(used.messages, 'message')}, "
        f"{count(used.tokens, 'token')}, ${used.cost_usd:.4f}"
    )
    print(f"  messages per day: {_limit(quota.messages_per_day)}")
    print(f"  tokens per day:   {_limit(quota.tokens_per_day)}")
    return 0


def _quota_set(args: argparse.Namespace) -> int:
    services = _services()
    principal = _principal(services, args.name)
    current = services.quotas.stored_quota(OPERATOR, principal.user_id)

    def choose(new: int | None, old: int | None) -> int | None:
        if new is None:
            return old
        return None if new == _DEFAULT else new

    services.quotas.set_quota(
        OPERATOR,
        principal.user_id,
        messages_per_day=choose(args.messages, current[0]),
        tokens_per_day=choose(args.tokens, current[1]),
    )
    return _quota_show(args)


def _usage(args: argparse.Namespace) -> int:
    rows = _services().usage.by_user_and_day(OPERATOR, days=max(1, args.days))
    if not rows:
        print(f"No answers in the last {args.days} day(s).")
        return 0
    print(
        f"{'day':<10}  {'user':<16} {'answers':>7} {'input':>10} {'output':>9} "
        f"{'cache rd':>9} {'cache wr':>9} {'cost $':>9}"
    )
    for r in rows:
        print(
            f"{r.day!s:<10}  {r.user:<16} {r.messages:>7} {r.input_tokens:>10,} "
            f"{r.output_tokens:>9,} {r.cache_read_tokens:>9,} {r.cache_write_tokens:>9,} "
            f"{r.cost_usd:>9.4f}"
        )
    return 0


def _conversation_strategy(args: argparse.Namespace) -> int:
    services = _services()
    admin = _principal(services, args.admin)
    name = None if args.name == "default" else args.name
    services.lab.set_conversation_strategy(admin, args.id, name)
    print(f"Conversation {args.id} now uses {services.lab.strategy_of(admin, args.id)!r}.")
    return 0


def _conversation_list(args: argparse.Namespace) -> int:
    services = _services()
    owner = _principal(services, args.user)
    rows = services.conversations.list_for(owner)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": c.id,
                        "title": c.title,
                        "created_at": c.created_at.isoformat(),
                        "updated_at": c.updated_at.isoformat(),
                    }
                    for c in rows
                ],
                ensure_ascii=False,
            )
        )
        return 0
    if not rows:
        print(f"{owner.name} has no conversations.")
    for c in rows:
        print(f"{c.id:>6}  {c.updated_at:%Y-%m-%d %H:%M}  {c.title}")
    return 0


def _conversation_search(args: argparse.Namespace) -> int:
    services = _services()
    owner = _principal(services, args.user)
    hits = services.search.search(owner, args.query, limit=args.limit)
    if args.json:
        found = [
            {
                "conversation_id": h.conversation_id,
                "title": h.title,
                "message_id": h.message_id,
                "role": h.role.value if h.role else None,
                "snippet": h.snippet,
            }
            for h in hits
        ]
        print(json.dumps(found, ensure_ascii=False))
        return 0
    if not hits:
        print(f"Nothing of {owner.name}'s matches.")
    for h in hits:
        where = f"message {h.message_id}" if h.message_id is not None else "title"
        print(f"{h.conversation_id:>6}  {h.title}  ({where})")
        print(f"        {' '.join(h.snippet.split())}")
    return 0


def _conversation_export(args: argparse.Namespace) -> int:
    services = _services()
    owner = _principal(services, args.user)
    sys.stdout.write(services.transfer.export(owner, args.id, args.format))
    return 0


def _conversation_import(args: argparse.Namespace) -> int:
    from parley.core.errors import InvalidInput

    services = _services()
    owner = _principal(services, args.user)
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"Cannot read {args.file}: {exc.strerror or exc}.") from None
    made = services.transfer.import_(owner, data)
    print(f"Imported as conversation {made.id} of {owner.name}: {made.title}")
    return 0


def _feedback_export(args: argparse.Namespace) -> int:
    """Every rating, newest first, with the answer's model, usage and provenance (the
    comment is the user's words to the operators; the answer's text is not exported)."""
    import csv

    from parley.core.domain import Rating

    services = _services()
    rating = Rating(args.rating) if args.rating else None
    rows: list[dict[str, object]] = []
    before: int | None = None
    while page := services.feedback.find(OPERATOR, rating=rating, limit=1000, before_id=before):
        for r in page:
            rows.append(
                {
                    "id": r.id,
                    "user": r.user,
                    "conversation_id": r.conversation_id,
                    "message_id": r.message_id,
                    "rating": r.rating.value,
                    "comment": r.comment,
                    "model": r.model,
                    "input_tokens": r.input_tokens,
                    "output_tokens": r.output_tokens,
                    "cost_usd": r.cost_usd,
                    "prompt": r.prompt.model_dump(mode="json") if r.prompt else None,
                    "created_at": r.created_at.isoformat(),
                    "updated_at": r.updated_at.isoformat(),
                }
            )
        before = page[-1].id
    if args.format == "jsonl":
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["id"])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(json.dumps(v) if k == "prompt" else v) for k, v in row.items()})
    return 0


def _cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: a user's comment opening with `=`, `+`, `-`,
    `@`, a tab or a return would be read as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _conversation_rm(args: argparse.Namespace) -> int:
    services = _services()
    owner = _principal(services, args.user)
    services.conversations.delete(owner, args.id)
    print(f"Erased conversation {args.id} of {owner.name}: messages, summaries and vectors.")
    return 0


def _bench_injection(args: argparse.Namespace) -> int:
    from parley.bench.injection import DataError, main
    from parley.core.config import get_settings
    from parley.wiring.factories import shared_embedder

    for path in [*args.attacks, args.emails, *([args.turns] if args.turns else [])]:
        if not path.is_file():
            raise ParleyError(user_message=f"No such data file: {path}")
    settings = get_settings()
    try:
        return main(
            args.attacks,
            args.emails,
            args.turns,
            shared_embedder(settings),
            as_json=args.json,
            threshold=settings.injection.threshold,
        )
    except DataError as exc:
        raise ParleyError(user_message=str(exc)) from exc


def _bench_memory(args: argparse.Namespace) -> int:
    # The benchmark (every memory strategy, the embeddings) loads for this command alone.
    from parley.bench.locomo import format_table, run
    from parley.core.config import get_settings

    if not args.data.is_file():
        raise ParleyError(user_message=f"No such data file: {args.data}")
    results = run(args.data, args.strategy, args.budget, settings=get_settings(), limit=args.limit)
    print(format_table(results))
    for result in results:
        d = result.as_dict()
        print(
            f"{result.strategy} @ {result.budget:,}: {d['questions']} questions, "
            f"ingestion {d['ingest_turns_per_s']} turns/s, {result.over_budget} over budget"
        )
    if args.json:
        print(
            json.dumps(
                results[-1].as_dict() if len(results) == 1 else [r.as_dict() for r in results]
            )
        )
    return 0


def run() -> int:
    """The `parley` console script: `main`, starting quickly (see `common.starting`)."""
    start_quickly()
    try:
        return main()
    finally:
        start_quickly(on=False)


if __name__ == "__main__":
    raise SystemExit(run())
