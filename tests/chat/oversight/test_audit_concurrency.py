"""The audit trail under several actors at once, through the services themselves (each
record appended inside its action's own transaction): threads signing in, chatting
and sharing at once leave one whole chain with every record in it."""

from __future__ import annotations

import threading

from parley.core.domain import Principal
from parley.wiring.services import Services
from tests.support import ROOT, audit_records, verify_audit


def test_services_appending_from_several_threads_keep_one_chain(services: Services) -> None:
    users = [
        services.accounts.create_user(ROOT, name=f"user{n}", password=f"password-{n}")
        for n in range(4)
    ]
    before = verify_audit(services._database).records
    start = threading.Barrier(len(users))
    errors: list[BaseException] = []

    def act(user: Principal, n: int) -> None:
        try:
            start.wait()
            for turn in range(5):
                services.accounts.authenticate(name=user.name, password=f"password-{n}")
                list(services.chat.send(user, None, f"turn {turn} of {user.name}"))
                services.quotas.set_quota(
                    ROOT, user.user_id, messages_per_day=100 + turn, tokens_per_day=None
                )
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=act, args=(u, n)) for n, u in enumerate(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    result = verify_audit(services._database)
    assert result.broken is None
    # per action: sign_in; ai_call and answer; quota_set — five rounds, four users
    assert result.records - before == 4 * 5 * 4
    ids = [r["id"] for r in audit_records(services._database)]
    assert ids == list(range(1, len(ids) + 1))  # no gaps, no forks
