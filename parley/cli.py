"""The `parley` command: accounts, migrations and chat from a terminal.

    parley db upgrade
    parley user add NAME [--admin]      password: asked twice on a terminal, else one line of stdin
    parley user list
    parley chat --user NAME [--conversation ID] MESSAGE     (MESSAGE '-' reads stdin)

Everything goes through the same services the page uses, under `PARLEY_DATA_DIR`.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from collections.abc import Sequence

from parley.config import get_settings
from parley.errors import ParleyError
from parley.services import Services, build_services
from store.db import Database
from store.migrate import upgrade
from store.models import Role


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
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

    user = commands.add_parser("user", help="local accounts").add_subparsers(required=True)
    user_add = user.add_parser("add", help="create a local account")
    user_add.add_argument("name")
    user_add.add_argument("--admin", action="store_true", help="give the admin role")
    user_add.set_defaults(func=_user_add)
    user_list = user.add_parser("list", help="list accounts")
    user_list.set_defaults(func=_user_list)

    chat = commands.add_parser("chat", help="send one message and stream the answer")
    chat.add_argument("--user", required=True, help="the account that sends the message")
    chat.add_argument("--conversation", type=int, help="continue this conversation")
    chat.add_argument("message", help="the message, or - to read it from stdin")
    chat.set_defaults(func=_chat)
    return parser


def _services() -> Services:
    return build_services(get_settings())


def _db_upgrade(_args: argparse.Namespace) -> int:
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.resolved_database_url)
    try:
        upgrade(database)
    finally:
        database.dispose()
    print(f"Database is up to date ({database.url.render_as_string(hide_password=True)}).")
    return 0


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != first:
            raise ParleyError(user_message="The two passwords differ; nothing was created.")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _user_add(args: argparse.Namespace) -> int:
    services = _services()
    role = Role.ADMIN if args.admin else Role.USER
    principal = services.accounts.create_user(name=args.name, password=_read_password(), role=role)
    print(f"Created {principal.role.value} {principal.name!r} (id {principal.user_id}).")
    return 0


def _user_list(_args: argparse.Namespace) -> int:
    users = _services().accounts.list_users()
    if not users:
        print("No users yet. Create one with: parley user add NAME --admin")
        return 0
    print(f"{'id':>4}  {'name':<24} {'role':<6} last login")
    for u in users:
        last = u.last_login_at.strftime("%Y-%m-%d %H:%M") if u.last_login_at else "never"
        print(f"{u.id:>4}  {u.name:<24} {u.role.value:<6} {last}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    services = _services()
    principal = services.accounts.find_principal(args.user)
    if principal is None:
        raise ParleyError(user_message=f"No user named {args.user!r}.")
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


if __name__ == "__main__":
    raise SystemExit(main())
