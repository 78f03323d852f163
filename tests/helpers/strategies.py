"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

from hypothesis import strategies as st


def json_scalars(*, max_text: int = 40) -> st.SearchStrategy:
    """Any JSON scalar that json.loads gives for finite input."""
    return (
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
        | st.text(max_size=max_text)
    )


def json_values(
    scalars: st.SearchStrategy | None = None, *, max_items: int = 4, max_leaves: int = 12
) -> st.SearchStrategy:
    """Any JSON value, nested a few levels: what a confused or hostile sender could send."""
    return st.recursive(
        scalars if scalars is not None else json_scalars(),
        lambda inner: st.lists(inner, max_size=max_items)
        | st.dictionaries(st.text(max_size=8), inner, max_size=max_items),
        max_leaves=max_leaves,
    )
