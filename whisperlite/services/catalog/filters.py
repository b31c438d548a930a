"""Search filters: validated from the typed request fields, then turned into a Milvus boolean expression.

Caller text never becomes expression syntax. Two ways of passing values, chosen per store:
- templates: the expression holds only placeholders (`category in {categories}`) and the values travel
  separately as pymilvus `filter_params` (Milvus 2.5+ servers);
- quoting: for stores whose parser has no templates (milvus-lite 2.5.1 rejects `{`), each value is
  written as a double-quoted literal with `\\` and `"` escaped. Values holding control characters are
  never written at all: the catalog refuses them on upsert (milvus-lite cannot parse an escaped newline),
  so such a value cannot match and is dropped from the filter instead.
A category or an excluded id that names none (empty, or only spaces or invisible characters) is refused: see
filter_from_proto.
A value no item can have is dropped like the others, and one longer than any stored value (a category over
MAX_CATEGORY_CHARS, an excluded id over MAX_ID_CHARS) is dropped before any per-character work on it: a filter of
1,000 categories of 5,000 zero-width spaces and an "a" (15 MB) held the event loop for 1.6 s per search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Iterable
from typing import Any

from whisperlite.services.catalog.items import can_be_stored_category, can_be_stored_id
from whisperlite.core.errors import InvalidArgument
from whisperlite.core.item_fields import MAX_CATEGORY_CHARS, MAX_ID_CHARS, category_problem, item_id_problem
from whisperlite.core.text import has_visible_characters
from whisperlite.v1 import common_pb2

MAX_FILTER_VALUES = 1000


@dataclass(frozen=True)
class SearchFilter:
    categories: tuple[str, ...] = ()
    min_price: float | None = None
    max_price: float | None = None
    exclude_item_ids: tuple[str, ...] = ()

    @property
    def narrows(self) -> bool:
        """True when the filter keeps a subset small enough that ANN recall suffers (category or price)."""
        return bool(self.categories) or self.min_price is not None or self.max_price is not None


def filter_from_proto(message: common_pb2.ItemFilter | None) -> SearchFilter:
    if message is None:
        return SearchFilter()
    for name in ("categories", "exclude_item_ids"):
        values = getattr(message, name)
        if len(values) > MAX_FILTER_VALUES:
            raise InvalidArgument(f"filter.{name}: at most {MAX_FILTER_VALUES} values, got {len(values)}")
    # A category longer than any item's is one no item can have: cut to MAX_CATEGORY_CHARS + 1 characters, still
    # too long to match (build_expression drops it, the index knows no such code), so that a filter of only such
    # categories still matches nothing and no later step hashes or scans the rest of it.
    categories = [category if len(category) <= MAX_CATEGORY_CHARS else category[: MAX_CATEGORY_CHARS + 1] for category in message.categories]
    invisible = _invisible_characters(category for category in categories if len(category) <= MAX_CATEGORY_CHARS)
    for index, category in enumerate(categories):
        # Refused, where a category no item can have is dropped (build_expression): an entry that names none is the
        # caller's mistake (a form's empty field), and an empty one used to select the items without a category.
        # A too-long one is dropped unread, even if it would name none.
        if len(category) <= MAX_CATEGORY_CHARS and invisible.issuperset(category) and (problem := category_problem(category)) is not None:
            raise InvalidArgument(f"filter.categories[{index}]: {problem} (send no categories to keep every category)")
    excluded_ids = list(message.exclude_item_ids)
    invisible_in_ids = _invisible_characters(item_id for item_id in excluded_ids if len(item_id) <= MAX_ID_CHARS)
    for index, item_id in enumerate(excluded_ids):
        # Refused like such a category: "" (a form's empty field, a join of nothing) excluded nothing and said nothing,
        # so a caller who meant to exclude an item never learnt that the id was lost on the way.
        if len(item_id) <= MAX_ID_CHARS and invisible_in_ids.issuperset(item_id):
            raise InvalidArgument(f"filter.exclude_item_ids[{index}]: {item_id_problem(item_id)} (send no ids to exclude nothing)")
    bounds = {}
    for name in ("min_price", "max_price"):
        if message.HasField(name):
            value = getattr(message, name)
            if not math.isfinite(value):
                raise InvalidArgument(f"filter.{name}: must be a finite number, got {value}")
            if value < 0:  # no price is (upserts refuse one): a negative bound is a sign mistake, not a filter
                raise InvalidArgument(f"filter.{name}: must be at least 0 (prices are never negative), got {value:g}")
            bounds[name] = float(value)
    low, high = bounds.get("min_price"), bounds.get("max_price")
    if low is not None and high is not None and low > high:
        raise InvalidArgument(f"filter.min_price: must not exceed filter.max_price, got min_price {low} > max_price {high}")
    return SearchFilter(
        categories=tuple(dict.fromkeys(categories)),
        min_price=low,
        max_price=high,
        # An id over MAX_ID_CHARS is not in the catalog (upserts refuse it): excluding it excludes nothing.
        exclude_item_ids=tuple(dict.fromkeys(item_id for item_id in excluded_ids if len(item_id) <= MAX_ID_CHARS)),
    )


def _invisible_characters(values: Iterable[str]) -> set[str]:
    """The characters among `values` that show nothing (core.text's rule), each distinct one classified once: a value
    names none when this set holds all its characters (set.issuperset, at C speed). Classifying every character of
    every value, 1,000 categories of 255 zero-width spaces and a letter cost ~80 ms of the event loop per filter."""
    return {char for char in set().union(*values) if not has_visible_characters(char)}


def quote(value: str) -> str:
    """A double-quoted Milvus string literal that parses back to exactly `value`."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError("control characters cannot be quoted for a Milvus expression")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_list(values: list[str]) -> str:
    return "[" + ", ".join(quote(value) for value in values) + "]"


@dataclass(frozen=True)
class Expression:
    text: str
    params: dict[str, Any]
    matches_nothing: bool = False  # e.g. every requested category is one no item can have


def id_list_expression(field_name: str, item_ids: list[str], templates: bool) -> Expression:
    """`field in [ids]` for ids that can be stored at all; others cannot exist and are left out."""
    ids = [item_id for item_id in item_ids if can_be_stored_id(item_id)]
    if not ids:
        return Expression("", {}, matches_nothing=True)
    if templates:
        return Expression(f"{field_name} in {{ids}}", {"ids": ids})
    return Expression(f"{field_name} in {quote_list(ids)}", {})


def after_id_expression(field_name: str, after_id: str, templates: bool) -> Expression:
    """`field > after_id`: the rows past a page boundary (every id when `after_id` is empty)."""
    if not after_id:
        return Expression(f'{field_name} != ""', {})
    if templates:
        return Expression(f"{field_name} > {{after}}", {"after": after_id})
    return Expression(f"{field_name} > {quote(after_id)}", {})


def build_expression(search_filter: SearchFilter, templates: bool) -> Expression:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if search_filter.categories:
        categories = [c for c in search_filter.categories if can_be_stored_category(c)]
        if not categories:
            return Expression("", {}, matches_nothing=True)
        if templates:
            clauses.append("category in {categories}")
            params["categories"] = categories
        else:
            clauses.append(f"category in {quote_list(categories)}")
    if search_filter.min_price is not None or search_filter.max_price is not None:
        # Items without a price store has_price = false (and price 0), so they never pass a price bound.
        clauses.append("has_price == true")
        for name, operator in (("min_price", ">="), ("max_price", "<=")):
            value = getattr(search_filter, name)
            if value is None:
                continue
            if templates:
                clauses.append(f"price {operator} {{{name}}}")
                params[name] = value
            else:
                clauses.append(f"price {operator} {float(value)!r}")
    excluded = [item_id for item_id in search_filter.exclude_item_ids if can_be_stored_id(item_id)]
    if excluded:
        if templates:
            clauses.append("item_id not in {excluded}")
            params["excluded"] = excluded
        else:
            clauses.append(f"item_id not in {quote_list(excluded)}")
    return Expression(" and ".join(clauses), params)
