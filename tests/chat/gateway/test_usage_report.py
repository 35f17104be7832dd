"""The ledger's aggregation: figures per model and per group, by cost or by tokens."""

from __future__ import annotations

from datetime import date

from parley.chat.gateway.usage_report import UsageFact, UsageReport

DAY = date(2026, 12, 1)


def fact(user: str, model: str, tokens_in: int, tokens_out: int, cost: float) -> UsageFact:
    return UsageFact(DAY, user, model, "chat", 1, 1, tokens_in, tokens_out, 0, 0, cost)


def test_a_local_model_is_counted_in_tokens_and_a_priced_one_in_dollars() -> None:
    local = UsageReport(
        DAY,
        DAY,
        (fact("ann", "smollm2", 100, 20, 0.0), fact("bo", "smollm2", 50, 5, 0.0)),
        groups={"team": ["ann", "bo"], "ann-only": ["ann"]},
    )
    assert not local.priced
    assert local.tokens_per_model() == {"smollm2": 175}
    assert local.tokens_per_group() == {"ann-only": 120, "team": 175}
    assert local.cost_per_model() == {"smollm2": 0.0}
    priced = UsageReport(DAY, DAY, (fact("ann", "claude", 10, 10, 0.25), *local.facts))
    assert priced.priced
    assert priced.cost_per_model() == {"claude": 0.25, "smollm2": 0.0}
    assert priced.tokens_per_model() == {"claude": 20, "smollm2": 175}
