"""`parley audit verify`, `checkpoint` and `export`: the keyed, hash-chained audit trail.

parley audit checkpoint >> /somewhere/else/parley-checkpoints.txt
parley audit verify [--checkpoint FILE]
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from parley.cli.common import OPERATOR
from parley.cli.common import services as _services
from parley.core.counts import count
from parley.core.errors import InvalidInput


def audit_commands(commands: Any) -> None:
    audit = commands.add_parser("audit", help="the audit trail").add_subparsers(required=True)
    verify = audit.add_parser("verify", help="check every link of the chain")
    verify.add_argument(
        "--checkpoint",
        type=Path,
        help="a file of lines printed by `parley audit checkpoint`: each must still hold",
    )
    verify.set_defaults(func=_verify)
    audit.add_parser(
        "checkpoint", help="print one signed line anchoring the trail; keep it elsewhere"
    ).set_defaults(func=_checkpoint)
    export = audit.add_parser("export", help="records as JSON lines or CSV, to stdout")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--user", help="only records of this actor")
    export.add_argument("--since", help="only records from this day on (YYYY-MM-DD, UTC)")
    export.set_defaults(func=_export)


def _verify(args: argparse.Namespace) -> int:
    audit = _services().audit  # the console's service
    if args.checkpoint is None:
        result = audit.verify(OPERATOR)
    else:
        try:
            text = args.checkpoint.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"The checkpoint file {args.checkpoint} cannot be read.") from exc
        result = audit.verify_against(OPERATOR, text)
    if result.broken is None:
        n = result.anchors
        held = f"; {n} checkpoint{'s hold' if n != 1 else ' holds'}" if n else ""
        print(f"The audit trail is intact: {count(result.records, 'record')}{held}.")
        return 0
    broken = result.broken
    print(
        f"parley: the audit trail is broken at record {broken.record_id}: {broken.reason}.",
        file=sys.stderr,
    )
    return 1


def _checkpoint(_args: argparse.Namespace) -> int:
    print(_services().audit.checkpoint(OPERATOR).line())
    return 0


def _export(args: argparse.Namespace) -> int:
    since = None
    if args.since:
        try:
            since = datetime.strptime(args.since, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError as exc:
            raise InvalidInput(f"--since {args.since!r} is not a day like 2026-11-27.") from exc
    services = _services()
    found = services.accounts.find_principal(OPERATOR, args.user) if args.user else None
    lines = services.audit.export_lines(  # on record, like the console's export
        OPERATOR,
        format=args.format,
        # what a user did and what was done to their data; a name that is no account
        # (an erased user, a name typed at a refused sign-in) by the actor's name
        user_id=found.user_id if found else None,
        actor=args.user if args.user and found is None else None,
        since=since,
    )
    for chunk in lines:
        sys.stdout.write(chunk)
    return 0


__all__ = ["audit_commands"]
