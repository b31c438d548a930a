"""Catalog items: validation of caller input and conversion between the proto `Item` and stored records.

A request is validated as a whole before anything is written, so a bad item anywhere in an upsert
leaves the store untouched. Messages name the item's index and field ("items[3].vector: ...").
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from whisperlite.core.item_fields import (
    MAX_CATEGORY_CHARS, MAX_ID_CHARS, category_problem, field_problem, has_control_characters, item_id_problem, parse_price,
)
from whisperlite.core.errors import InvalidArgument
from whisperlite.core.text import has_visible_characters
from whisperlite.v1 import common_pb2

@dataclass
class ItemRecord:
    """One item as the catalog stores it; `vector` is L2-normalized float32 (None when not loaded)."""

    item_id: str
    title: str = ""
    text: str = ""
    category: str = ""
    price: float | None = None
    image_uri: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class SearchHit:
    record: ItemRecord
    score: float
    explain_scores: np.ndarray | None = None  # a detailed hit's dot products with the request's explain vectors


def can_be_stored_id(item_id: str) -> bool:
    return item_id_problem(item_id) is None


def can_be_stored_category(category: str) -> bool:
    return len(category) <= MAX_CATEGORY_CHARS and not has_control_characters(category) and (not category or category_problem(category) is None)


def _finite_floats(values: Sequence[float], dimension: int, name: str) -> np.ndarray:
    """The values as float32, checked for the catalog's dimension and finiteness."""
    vector = np.asarray(values, dtype=np.float32)
    if vector.shape != (dimension,):
        raise InvalidArgument(f"{name}: must have {dimension} values (the catalog's dimension), got {vector.size}")
    finite = np.isfinite(vector)
    if not finite.all():
        position = int(np.flatnonzero(~finite)[0])
        raise InvalidArgument(f"{name}: values must be finite, got {vector[position]} at position {position}")
    return vector


def validate_vector(values: Sequence[float], dimension: int, name: str) -> np.ndarray:
    """Checks length and finiteness and returns the L2-normalized float32 vector."""
    vector = _finite_floats(values, dimension, name)
    # In float64: the float32 norm of very large (or tiny) finite values overflows (or underflows to 0).
    wide = vector.astype(np.float64)
    norm = float(np.linalg.norm(wide))
    if norm == 0.0:
        raise InvalidArgument(f"{name}: must not be all zeros (cosine similarity is undefined)")
    return (wide / norm).astype(np.float32)


MAX_EXPLAIN_VECTORS = 4
FLOAT32_MAX = float(np.finfo(np.float32).max)


def validate_explain(vectors: Sequence[Sequence[float]], dimension: int, name: str) -> np.ndarray | None:
    """(k, dimension) float32 of a search's explain vectors (finite, not normalized), None without any."""
    if not vectors:
        return None
    if len(vectors) > MAX_EXPLAIN_VECTORS:
        raise InvalidArgument(f"{name}: at most {MAX_EXPLAIN_VECTORS} vectors, got {len(vectors)}")
    explain = np.stack([_finite_floats(values, dimension, f"{name}[{index}]") for index, values in enumerate(vectors)])
    # An item vector has norm 1, so a score is at most the explain vector's norm: one float32 holds, or the scores
    # came back inf from finite input.
    norms = np.linalg.norm(explain.astype(np.float64), axis=1)
    if (too_long := np.flatnonzero(norms > FLOAT32_MAX)).size:
        index = int(too_long[0])
        raise InvalidArgument(f"{name}[{index}]: its norm {norms[index]:.3g} is past float32's {FLOAT32_MAX:.3g}, so its scores would overflow")
    return explain


def record_from_proto(item: common_pb2.Item, index: int, dimension: int) -> ItemRecord:
    where = f"items[{index}]"
    problem = item_id_problem(item.item_id)
    if problem:
        raise InvalidArgument(f"{where}.item_id: {problem}")
    attributes = dict(item.attributes)
    if (found := field_problem(item.title, item.text, item.category, item.image_uri, attributes)) is not None:
        raise InvalidArgument(f"{where}.{found[0]}: {found[1]}")
    price = None
    if item.HasField("price"):  # the dataset files' rule (a -0.0 is stored as 0.0)
        try:
            price = parse_price(item.price)
        except ValueError as error:
            raise InvalidArgument(f"{where}.price: {error}") from None
    vector = None
    if len(item.vector):
        vector = validate_vector(item.vector, dimension, f"{where}.vector")
    elif not (has_visible_characters(item.title) or has_visible_characters(item.text)):
        raise InvalidArgument(f"{where}: without a vector it needs a title or text with a visible character to embed")
    return ItemRecord(
        item_id=item.item_id,
        title=item.title,
        text=item.text,
        category=item.category,
        price=price,
        image_uri=item.image_uri,
        attributes=attributes,
        vector=vector,
    )


def records_from_request(items: Sequence[common_pb2.Item], dimension: int, max_items: int) -> list[ItemRecord]:
    """Validates a whole upsert request; raises InvalidArgument on the first problem, writing nothing."""
    if not items:
        raise InvalidArgument("items: must hold at least one item")
    if len(items) > max_items:
        raise InvalidArgument(f"items: at most {max_items} items per request, got {len(items)}; split the upsert")
    first_index: dict[str, int] = {}
    records = []
    for index, item in enumerate(items):
        record = record_from_proto(item, index, dimension)
        if record.item_id in first_index:
            raise InvalidArgument(
                f"items[{index}].item_id: duplicate id {record.item_id!r} (also items[{first_index[record.item_id]}])"
            )
        first_index[record.item_id] = index
        records.append(record)
    return records


def validate_ids(item_ids: Sequence[str], max_ids: int, name: str = "item_ids") -> list[str]:
    """Checks a list of ids to read or delete; returns them without duplicates, in request order."""
    if len(item_ids) > max_ids:
        raise InvalidArgument(f"{name}: at most {max_ids} ids per request, got {len(item_ids)}")
    for index, item_id in enumerate(item_ids):
        if not item_id:
            raise InvalidArgument(f"{name}[{index}]: must not be empty")
        if len(item_id) > MAX_ID_CHARS:  # no stored item has one (upserts refuse it); echoed in missing_item_ids, a 1 MB id went back whole
            raise InvalidArgument(f"{name}[{index}]: at most {MAX_ID_CHARS} characters, got {len(item_id)}")
    return list(dict.fromkeys(item_ids))


def record_to_proto(record: ItemRecord, include_vector: bool) -> common_pb2.Item:
    item = common_pb2.Item(
        item_id=record.item_id,
        title=record.title,
        text=record.text,
        category=record.category,
        image_uri=record.image_uri,
        attributes=record.attributes,
    )
    if record.price is not None:
        item.price = record.price
    if include_vector and record.vector is not None:
        # The packed field's wire bytes are the vector's own little-endian float32 bytes: merging them costs
        # ~1 us where `extend(tolist())` costs ~8 us (a Search hit carries one vector, a ListItems page 1,000).
        item.MergeFromString(_packed_vector_prefix(len(record.vector)) + record.vector.astype("<f4", copy=False).tobytes())
    return item


def least_proto_bytes(record: ItemRecord, include_vector: bool) -> int:
    """A lower bound of record_to_proto's serialized size (a character is at least one UTF-8 byte), cheap
    enough to sum over a response before building it."""
    size = len(record.item_id) + len(record.title) + len(record.text) + len(record.category) + len(record.image_uri)
    size += sum(len(key) + len(value) for key, value in record.attributes.items())
    if include_vector and record.vector is not None:
        size += 4 * len(record.vector)
    return size


@functools.cache
def _packed_vector_prefix(dimension: int) -> bytes:
    """The tag and length protobuf writes before a packed `Item.vector` of this many floats."""
    return common_pb2.Item(vector=[0.0] * dimension).SerializeToString()[: -4 * dimension]
