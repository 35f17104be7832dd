"""The one rule of who may see a document, and the Chroma scopes that carry it: a
document's scopes meet a user's visible scopes exactly when the rule says yes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from parley.retrieval.document_index import Allowed, DocumentAccess, visible_scopes

users = st.integers(min_value=1, max_value=6)
groups = st.frozensets(st.integers(min_value=1, max_value=5), max_size=4)


@given(owner=users, public=st.booleans(), shared=groups, user=users, mine=groups)
def test_the_scopes_agree_with_the_rule(
    owner: int, public: bool, shared: frozenset[int], user: int, mine: frozenset[int]
) -> None:
    access = DocumentAccess(owner, public, shared)
    meets = bool(set(access.scopes) & set(visible_scopes(user, mine)))
    assert meets == (access.allowed(user, mine) is not None)


def test_the_reason_names_the_first_that_holds() -> None:
    access = DocumentAccess(owner=1, public=False, groups=frozenset({3, 4}))
    assert access.allowed(1, {3}) == Allowed("owner")
    assert access.allowed(2, {4, 3, 9}) == Allowed("group", (3, 4))
    assert access.allowed(2, {9}) is None
    assert DocumentAccess(1, True, frozenset()).allowed(2, ()) == Allowed("public")
