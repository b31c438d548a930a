"""Typed results of the public clients: plain dataclasses, converted from and to the protos once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from whisperlite.v1 import catalog_pb2, common_pb2, ranker_pb2


@dataclass(frozen=True)
class Item:
    item_id: str
    title: str = ""
    text: str = ""
    category: str = ""
    price: float | None = None  # None: unknown (such items never pass a price filter)
    image_uri: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    vector: tuple[float, ...] = ()  # empty unless asked for (or, on upsert, computed by the catalog)


@dataclass(frozen=True)
class ScoredItem:
    item: Item
    score: float
    query_match: float
    personal_affinity: float


@dataclass(frozen=True)
class Recommendation:
    items: list[ScoredItem]
    model_version: str  # empty when the ranker serves text-only results
    request_id: str  # the ranker's x-request-id for this call: quote it when asking about a result
    path: str  # "user_embedding", "recent_items" or "text_only"
    missing_recent_item_ids: list[str] = field(default_factory=list)  # recent ids the catalog lacks: left out of the taste


@dataclass(frozen=True)
class ItemsFound:
    items: list[Item]  # in request order
    missing_item_ids: list[str]


@dataclass(frozen=True)
class ItemsDeleted:
    deleted_count: int  # ids that existed
    # The ids asked for that were not in the catalog, each once; empty from a catalog older than the field, whose
    # deleted_count alone then says how many were missing.
    missing_item_ids: list[str]


@dataclass(frozen=True)
class UpsertResult:
    upserted: int
    embedded: int  # items whose vector the catalog computed


@dataclass(frozen=True)
class ItemPage:
    items: list[Item]
    next_page_token: str  # empty after the last page


@dataclass(frozen=True)
class CatalogStats:
    item_count: int
    dimension: int
    encoder_model: str
    collection: str
    max_batch: int = 0  # most items per upsert, ids per get or delete (its --max-batch); 0 from a catalog older than the field


_PATH_NAMES = {
    ranker_pb2.PERSONALIZATION_PATH_USER_EMBEDDING: "user_embedding",
    ranker_pb2.PERSONALIZATION_PATH_RECENT_ITEMS: "recent_items",
    ranker_pb2.PERSONALIZATION_PATH_TEXT_ONLY: "text_only",
}


def item_from_proto(message: common_pb2.Item) -> Item:
    return Item(
        item_id=message.item_id,
        title=message.title,
        text=message.text,
        category=message.category,
        price=message.price if message.HasField("price") else None,
        image_uri=message.image_uri,
        attributes=dict(message.attributes),
        vector=tuple(message.vector),
    )


def item_to_proto(item: Item) -> common_pb2.Item:
    message = common_pb2.Item(
        item_id=item.item_id,
        title=item.title,
        text=item.text,
        category=item.category,
        image_uri=item.image_uri,
        attributes=dict(item.attributes),
        vector=list(item.vector),
    )
    if item.price is not None:
        message.price = item.price
    return message


def string_list(name: str, values: Sequence[str]) -> list[str]:
    """`values` as a list; a lone string is refused (iterated, "cx" would become the ids "c" and "x")."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name}: must be a sequence of strings, got one {type(values).__name__} ({values[:40]!r}); wrap it in a list")
    return list(values)


def recommend_request(
    *,
    user_id: str,
    query: str,
    top_k: int,
    categories: Sequence[str] = (),
    min_price: float | None = None,
    max_price: float | None = None,
    exclude_item_ids: Sequence[str] = (),
    recent_item_ids: Sequence[str] = (),
    include_history_items: bool = False,
) -> ranker_pb2.RecommendRequest:
    item_filter = common_pb2.ItemFilter(categories=string_list("categories", categories), exclude_item_ids=string_list("exclude_item_ids", exclude_item_ids))
    if min_price is not None:
        item_filter.min_price = min_price
    if max_price is not None:
        item_filter.max_price = max_price
    return ranker_pb2.RecommendRequest(
        user_id=user_id, query=query, top_k=top_k, filter=item_filter, recent_item_ids=string_list("recent_item_ids", recent_item_ids),
        include_history_items=include_history_items,
    )


def recommendation_from_proto(response: ranker_pb2.RecommendResponse) -> Recommendation:
    return Recommendation(
        items=[
            ScoredItem(item_from_proto(scored.item), scored.score, scored.query_match, scored.personal_affinity)
            for scored in response.items
        ],
        model_version=response.model_version,
        request_id=response.request_id,
        path=_PATH_NAMES.get(response.path, "unspecified"),
        missing_recent_item_ids=list(response.missing_recent_item_ids),
    )


def stats_from_proto(response: catalog_pb2.GetStatsResponse) -> CatalogStats:
    return CatalogStats(response.item_count, response.dimension, response.encoder_model, response.collection, response.max_batch)
