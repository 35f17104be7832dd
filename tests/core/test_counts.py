from parley.core.counts import count


def test_one_is_singular_and_the_rest_plural() -> None:
    assert count(1, "passage") == "1 passage"
    assert count(0, "passage") == "0 passages"
    assert count(2, "message") == "2 messages"
    assert count(12_345, "record") == "12,345 records"
    assert count(3, "person") == "3 people"
    assert count(2, "entry") == "2 entries"
    assert count(2, "child", "children") == "2 children"
