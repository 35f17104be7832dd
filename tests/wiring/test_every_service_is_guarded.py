"""Every service `Services` hands out is in an authorization table: a method that takes
the acting user (`principal`, `admin`) is either tried with strangers, ghosts and
borrowed ids, or named as answering about the caller's own data only. The services are
read from `Services` itself, so a new one cannot be forgotten."""

from __future__ import annotations

import inspect
from pathlib import Path

from parley.wiring.services import Services
from tests.wiring import test_admin_authorization, test_authorization, test_document_authorization

ACTING = {"principal", "admin"}
# Called only with the principal a sign-in has just proved (nothing of anyone else's).
AFTER_SIGN_IN = {"sessions.start"}


def named_in_tables() -> set[str]:
    names: set[str] = set()
    for module in (test_authorization, test_admin_authorization, test_document_authorization):
        names |= {g.name.split(" ")[0] for g in module.GUARDED}
        names |= set(getattr(module, "OWN_DATA_ONLY", set()))
        names |= set(getattr(module, "OWN_VIEW_ONLY", set()))
    return names


def taking_the_acting_user(services: Services) -> set[str]:
    found: set[str] = set()
    for part in Services.part_names():
        cls = type(getattr(services, part))
        for name, member in inspect.getmembers(cls, inspect.isfunction):
            if not name.startswith("_") and ACTING & set(inspect.signature(member).parameters):
                found.add(f"{part}.{name}")
    return found


def test_every_method_that_takes_the_acting_user_is_in_a_table(services: Services) -> None:
    missing = taking_the_acting_user(services) - named_in_tables() - AFTER_SIGN_IN
    assert missing == set(), f"add these to an authorization table: {sorted(missing)}"


def test_the_enumeration_sees_the_services(services: Services) -> None:
    # If reading `Services` broke, the test above would pass on nothing.
    found = taking_the_acting_user(services)
    assert {"chat.send", "documents.search", "audit.verify", "usage.report"} <= found


def test_services_hand_out_no_database() -> None:
    """Pages and commands reach data only through a service's checks."""
    public = {name for name in dir(Services) if not name.startswith("_")}
    assert {"accounts", "chat", "documents", "audit"} <= public
    assert public.isdisjoint({"database", "db", "engine", "session"})
    repo = Path(__file__).resolve().parents[2]
    callers = [*(repo / "parley/app_pages").glob("*.py"), *(repo / "parley/cli").glob("*.py")]
    assert [str(p) for p in callers if "._database" in p.read_text(encoding="utf-8")] == []
