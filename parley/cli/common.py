"""What every `parley` command shares: the operator it acts as, and the services.

The wiring (the settings, SQLAlchemy, every service) loads when a command first asks for
the services, not when the parser is built: `parley --help` needs none of it.
"""

from __future__ import annotations

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


def services() -> Services:
    if not _built:
        from parley.core.config import get_settings
        from parley.wiring.services import build_services

        # Vectors kept the older way are the app's to move at its start, not a command's.
        _built.append(build_services(get_settings(), legacy_sweep=False))
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
