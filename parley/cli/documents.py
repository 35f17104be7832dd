"""`parley group …` and `parley docs …`: groups, and documents acting as a named user."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from parley.cli.common import OPERATOR
from parley.cli.common import principal_named as _principal
from parley.cli.common import services as _services
from parley.core.counts import count
from parley.core.errors import ParleyError


def document_commands(commands: Any) -> None:
    group = commands.add_parser("group", help="groups of users (admins)").add_subparsers(
        required=True
    )
    group_add = group.add_parser("add", help="create a group")
    group_add.add_argument("group")
    group_add.set_defaults(func=_group_add)
    for verb in ("assign", "remove"):
        member = group.add_parser(
            verb, help=f"{verb} a user {'to' if verb == 'assign' else 'from'} a group"
        )
        member.add_argument("group")
        member.add_argument("user")
        member.set_defaults(func=_group_member, verb=verb)
    group.add_parser("list", help="groups and their members").set_defaults(func=_group_list)

    docs = commands.add_parser("docs", help="documents").add_subparsers(required=True)
    add = docs.add_parser("add", help="upload files for a user")
    add.add_argument("paths", nargs="+", metavar="PATH")
    add.add_argument("--user", required=True, help="the owner")
    add.add_argument("--group", action="append", default=[], help="share with this group")
    add.add_argument("--public", action="store_true", help="share with every user")
    add.set_defaults(func=_docs_add)
    listing = docs.add_parser("list", help="documents a user may see")
    listing.add_argument("--user", required=True)
    listing.add_argument("--json", action="store_true", help="end with one JSON list")
    listing.set_defaults(func=_docs_list)
    search = docs.add_parser("search", help="search what a user may see")
    search.add_argument("query")
    search.add_argument("--user", required=True)
    search.add_argument("--k", type=int, default=5)
    search.add_argument("--json", action="store_true", help="end with one JSON list")
    search.set_defaults(func=_docs_search)
    for verb in ("share", "unshare"):
        change = docs.add_parser(verb, help=f"{verb} a document with a group or everyone")
        change.add_argument("document", type=int, metavar="DOC_ID")
        change.add_argument("--user", required=True, help="the owner (or an admin)")
        target = change.add_mutually_exclusive_group(required=True)
        target.add_argument("--group")
        target.add_argument("--public", action="store_true")
        change.set_defaults(func=_docs_share, verb=verb)
    remove = docs.add_parser("rm", help="delete a document")
    remove.add_argument("document", type=int, metavar="DOC_ID")
    remove.add_argument("--user", required=True, help="the owner (or an admin)")
    remove.set_defaults(func=_docs_rm)


def _group_add(args: argparse.Namespace) -> int:
    _services().groups.create(OPERATOR, args.group)
    print(f"Created group {args.group!r}.")
    return 0


def _group_member(args: argparse.Namespace) -> int:
    groups = _services().groups
    if args.verb == "assign":
        groups.assign(OPERATOR, args.group, args.user)
        print(f"Added {args.user!r} to {args.group!r}.")
    else:
        groups.remove(OPERATOR, args.group, args.user)
        print(f"Removed {args.user!r} from {args.group!r}.")
    return 0


def _group_list(_args: argparse.Namespace) -> int:
    for name, members in _services().groups.list_all(OPERATOR):
        print(f"{name}: {', '.join(members) or '(no members)'}")
    return 0


def _docs_add(args: argparse.Namespace) -> int:
    services = _services()
    owner = _principal(services, args.user)
    failed = 0
    for path in args.paths:
        try:
            data = Path(path).read_bytes()
        except OSError:
            print(f"parley: {path}: the file cannot be read.", file=sys.stderr)
            failed += 1
            continue
        try:
            info = services.documents.add(
                owner, Path(path).name, data, groups=tuple(args.group), public=args.public
            )
        except ParleyError as exc:
            print(f"parley: {exc.user_message}", file=sys.stderr)
            failed += 1
            continue
        print(f"Added document {info.id}: {info.name} ({count(info.chunks, 'passage')}).")
    return 1 if failed else 0


def _docs_list(args: argparse.Namespace) -> int:
    services = _services()
    rows = services.documents.list_for(_principal(services, args.user))
    listed = [
        {
            "id": d.id,
            "name": d.name,
            "owner": d.owner,
            "groups": list(d.groups),
            "visibility": "public" if d.public else ("groups" if d.groups else "private"),
            "summary": d.summary,
        }
        for d in rows
    ]
    if args.json:
        print(json.dumps(listed, ensure_ascii=False))
        return 0
    for d, row in zip(listed, rows, strict=True):
        print(f"{d['id']:>5}  {d['name']}  ({d['owner']}, {d['visibility']})")
        if row.summary:  # the model's text: no control character reaches the terminal
            print(f"       {''.join(c if c.isprintable() else ' ' for c in row.summary)}")
    return 0


def _docs_search(args: argparse.Namespace) -> int:
    services = _services()
    hits = services.documents.search(_principal(services, args.user), args.query, k=args.k)
    found = [
        {
            "document_id": h.document_id,
            "name": h.name,
            "owner": h.owner,
            "score": round(h.score, 4),
            "text": h.text,
        }
        for h in hits
    ]
    if args.json:
        print(json.dumps(found, ensure_ascii=False))
        return 0
    for hit in hits:
        print(f"[{hit.document_id}] {hit.name} ({hit.score:.3f}): {hit.text[:200]}")
    return 0


def _docs_share(args: argparse.Namespace) -> int:
    services = _services()
    who = _principal(services, args.user)
    change = services.documents.share if args.verb == "share" else services.documents.unshare
    info = change(who, args.document, group=args.group, public=args.public)
    shared = ", ".join(info.groups) or "no group"
    print(f"Document {info.id}: {'public' if info.public else 'not public'}; groups: {shared}.")
    return 0


def _docs_rm(args: argparse.Namespace) -> int:
    services = _services()
    services.documents.delete(_principal(services, args.user), args.document)
    print(f"Deleted document {args.document}.")
    return 0
