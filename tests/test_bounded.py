"""The one bounded cache: never over its size, and it drops the oldest (or least used)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dashboard_api.bounded import BoundedCache

ops = st.lists(
    st.tuples(st.sampled_from(["put", "get_recent"]), st.integers(0, 20), st.integers()),
    max_size=200,
)


@given(size=st.integers(1, 8), operations=ops)
def test_matches_a_reference_model(size: int, operations: list[tuple[str, int, int]]) -> None:
    cache: BoundedCache[int, int] = BoundedCache(size)
    model: list[tuple[int, int]] = []  # oldest first
    for op, key, value in operations:
        found = [i for i, (k, _) in enumerate(model) if k == key]
        if op == "put":
            assert cache.put(key, value) == value
            if found:
                model.pop(found[0])
            elif len(model) >= size:
                model.pop(0)
            model.append((key, value))
        else:
            expected = model[found[0]][1] if found else None
            assert cache.get_recent(key) == expected
            if found:
                model.append(model.pop(found[0]))
        assert list(cache.items()) == model
        assert len(cache) <= size


def test_plain_reads_do_not_reorder() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a dict read: "a" stays the oldest
    cache.put("c", 3)
    assert dict(cache) == {"b": 2, "c": 3}
