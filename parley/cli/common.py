"""What every `parley` command shares: the operator it acts as, and the services."""

from __future__ import annotations

from parley.core.config import get_settings
from parley.core.domain import Principal, Role
from parley.core.errors import ParleyError
from parley.wiring.services import Services, build_services

# The CLI acts as the operator: an administrator who is no account (whoever runs
# `parley` on the server holds the database anyway).
OPERATOR = Principal(user_id=0, name="(operator)", role=Role.ADMIN)

# The services of the command that is running: built when it first asks (some commands
# need none), shared by all its steps, closed by `close_services` when it ends.
_built: list[Services] = []


def services() -> Services:
    if not _built:
        _built.append(build_services(get_settings()))
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
