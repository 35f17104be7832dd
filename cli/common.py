"""What every `parley` command shares: the operator it acts as, and the services."""

from __future__ import annotations

from parley.config import get_settings
from parley.domain import Principal, Role
from parley.errors import ParleyError
from wiring.services import Services, build_services

# The CLI acts as the operator: an administrator who is no account (whoever runs
# `parley` on the server holds the database anyway).
OPERATOR = Principal(user_id=0, name="(operator)", role=Role.ADMIN)


def services() -> Services:
    return build_services(get_settings())


def principal_named(svc: Services, name: str) -> Principal:
    principal = svc.accounts.find_principal(OPERATOR, name)
    if principal is None:
        raise ParleyError(user_message=f"No user named {name!r}.")
    return principal
