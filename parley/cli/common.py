"""What every `parley` command shares: the operator it acts as, and the services.

The wiring (the settings, SQLAlchemy) loads when a command first asks for the services,
not when the parser is built: `parley --help` needs none of it. Each service is then
made when the command first uses it (`eager=False`): `parley user list` makes the
accounts, not the conversation's modules and memory strategies.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from parley.core.domain import Principal, Role
from parley.core.errors import ParleyError

if TYPE_CHECKING:
    from parley.wiring.services import Services

# The CLI acts as the operator: an administrator who is no account (whoever runs
# `parley` on the server holds the database anyway).
OPERATOR = Principal(user_id=0, name="(operator)", role=Role.ADMIN)

# The services of the command that is running: built when it first asks (some commands
# need none), shared by all its steps, closed by `close_services` when it ends.
_built: list[Services] = []


# Set by the `parley` process itself (`start_quickly`), not by a program that calls `main`.
_quick_start: list[bool] = []


def start_quickly(on: bool = True) -> None:
    """Let `starting` hold the cyclic garbage collector off in this process's start-up
    (`on=False`: no longer)."""
    _quick_start.clear()
    if on:
        _quick_start.append(True)


@contextmanager
def starting() -> Iterator[None]:
    """A command's start-up: the settings, the database and the imports of the wiring.

    SQLAlchemy and pydantic make hundreds of thousands of objects as they load and next
    to no garbage, and the cyclic collector would walk them again and again as they
    come: a third of `parley user list`'s start here (`python -m parley.bench.cli_start`).
    In the `parley` process the collector is off while they load; what they made is
    then frozen (`gc.freeze`: left out of every later collection, the last one at exit
    included; the few thousand unreachable objects among them are never freed, which a
    short command does not mind) and the collector is on again for the command itself,
    and for the services it makes when it first uses them. A program that calls `main`
    keeps its collector.
    """
    if not _quick_start or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def services() -> Services:
    if not _built:
        with starting():
            from parley.core.config import get_settings
            from parley.wiring.services import build_services

            # Vectors kept the older way are the app's to move at its start, not a command's.
            _built.append(build_services(get_settings(), legacy_sweep=False, eager=False))
    return _built[0]


def close_services(timeout: float | None) -> bool:
    """Close the services the command built: their background work (a turn's upkeep, the
    start-up sweep) finishes first, at most `timeout`. False if some was still running."""
    drained = True
    while _built:
        drained = _built.pop().close(timeout) and drained
    return drained


def principal_named(svc: Services, name: str) -> Principal:
    principal = svc.accounts.find_principal(OPERATOR, name)
    if principal is None:
        raise ParleyError(user_message=f"No user named {name!r}.")
    return principal
