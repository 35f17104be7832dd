"""`parley user …`: local accounts — add, list, disable and enable, unlock after failed
sign-ins, set a password, erase. The operator acts as an administrator (`OPERATOR`)."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from parley.cli.common import OPERATOR
from parley.cli.common import services as _services
from parley.core.counts import count
from parley.core.domain import Role
from parley.core.errors import ParleyError


def user_commands(commands: Any) -> None:
    user = commands.add_parser("user", help="local accounts").add_subparsers(required=True)
    user_add = user.add_parser("add", help="create a local account")
    user_add.add_argument("name")
    user_add.add_argument("--admin", action="store_true", help="give the admin role")
    user_add.set_defaults(func=_user_add)
    user_list = user.add_parser("list", help="list accounts")
    user_list.set_defaults(func=_user_list)
    for verb, disabled in (("disable", True), ("enable", False)):
        toggle = user.add_parser(
            verb,
            help="refuse the account's sign-ins and end its sessions"
            if disabled
            else "let a disabled account sign in again",
        )
        toggle.add_argument("name")
        toggle.set_defaults(func=_user_toggle, disabled=disabled)
    user_unlock = user.add_parser(
        "unlock", help="clear an account's sign-in lock and failed attempts (on record)"
    )
    user_unlock.add_argument("name")
    user_unlock.set_defaults(func=_user_unlock)
    user_passwd = user.add_parser("passwd", help="set an account's password (ends its sessions)")
    user_passwd.add_argument("name")
    user_passwd.set_defaults(func=_user_passwd)
    user_erase = user.add_parser(
        "erase", help="erase an account and everything of it (conversations, documents)"
    )
    user_erase.add_argument("name")
    user_erase.add_argument("--yes", action="store_true", help="do not ask to confirm")
    user_erase.set_defaults(func=_user_erase)


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != first:
            raise ParleyError(user_message="The two passwords differ; nothing was changed.")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _user_add(args: argparse.Namespace) -> int:
    services = _services()
    role = Role.ADMIN if args.admin else Role.USER
    principal = services.accounts.create_user(
        OPERATOR, name=args.name, password=_read_password(), role=role
    )
    print(f"Created {principal.role.value} {principal.name!r} (id {principal.user_id}).")
    return 0


def _user_list(_args: argparse.Namespace) -> int:
    users = _services().accounts.list_users(OPERATOR)
    if not users:
        print("No users yet. Create one with: parley user add NAME --admin")
        return 0
    print(f"{'id':>4}  {'name':<24} {'role':<6} {'state':<9} last login")
    for u in users:
        last = u.last_login_at.strftime("%Y-%m-%d %H:%M") if u.last_login_at else "never"
        state = "disabled" if u.disabled else "active"
        print(f"{u.id:>4}  {u.name:<24} {u.role.value:<6} {state:<9} {last}")
    return 0


def _user_toggle(args: argparse.Namespace) -> int:
    _services().accounts.set_disabled(OPERATOR, args.name, disabled=args.disabled)
    if args.disabled:
        print(f"Disabled {args.name!r}: its sessions have ended and it cannot sign in.")
    else:
        print(f"Enabled {args.name!r}: it can sign in again.")
    return 0


def _user_unlock(args: argparse.Namespace) -> int:
    if _services().accounts.unlock(OPERATOR, args.name):
        print(f"Unlocked {args.name!r}: its failed sign-ins are forgotten.")
    else:
        print(f"{args.name!r} was not locked; nothing to clear.")
    return 0


def _user_passwd(args: argparse.Namespace) -> int:
    _services().accounts.set_password(OPERATOR, args.name, _read_password())
    print(f"Set a new password for {args.name!r}; its sessions have ended.")
    return 0


def _user_erase(args: argparse.Namespace) -> int:
    if not args.yes:
        answer = input(f"Erase {args.name!r} and all of its data for good? Type the name: ")
        if answer.strip() != args.name:
            print("Nothing was erased.")
            return 1
    counts = _services().erasure.erase_user(OPERATOR, args.name)
    print(
        f"Erased {args.name!r}: {count(counts['conversations'], 'conversation')} "
        f"({count(counts['messages'], 'message')}) and {count(counts['documents'], 'document')}."
    )
    return 0


__all__ = ["user_commands"]
