"""Values tests share (fixtures live in conftest.py)."""

from __future__ import annotations

from parley.domain import Principal, Role

# The operator: an administrator who is no account, as the CLI acts. Tests set users up so.
ROOT = Principal(user_id=0, name="(operator)", role=Role.ADMIN)
