"""`parley.core.retry.retried`: the one retry of a refused write."""

from __future__ import annotations

import pytest

from parley.core.errors import StorageConflict, StorageUnavailable
from parley.core.retry import retried


class Flaky:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "stored"


def test_a_passing_outage_is_tried_again_after_each_wait() -> None:
    slept: list[float] = []
    seen: list[Exception] = []
    action = Flaky([StorageUnavailable("locked"), StorageUnavailable("locked")])
    result = retried(
        action, (0.1, 0.2, 0.4), retry_on=StorageUnavailable, on_retry=seen.append,
        sleep=slept.append,
    )  # fmt: skip
    assert (result, action.calls, slept, len(seen)) == ("stored", 3, [0.1, 0.2], 2)


def test_the_last_failure_reaches_the_caller() -> None:
    action = Flaky([StorageUnavailable(str(n)) for n in range(4)])
    with pytest.raises(StorageUnavailable, match="3"):
        retried(action, (0.0, 0.0, 0.0), retry_on=StorageUnavailable, sleep=lambda _s: None)
    assert action.calls == 4


def test_what_will_not_get_better_is_not_tried_again() -> None:
    action = Flaky([StorageConflict("deleted meanwhile")])
    with pytest.raises(StorageConflict):
        retried(action, (0.0, 0.0), retry_on=StorageUnavailable, sleep=lambda _s: None)
    assert action.calls == 1
