"""The JSON bodies of the gateway's /v1 API, field for field the protos' messages (proto field names).

FastAPI derives the OpenAPI schema from these models; `PROTO_OF` pairs each model with the message it
mirrors, and tests/test_gateway_api.py compares the schema's field names with the proto descriptors so
the two cannot drift. Values are checked here only for their JSON type: the services validate the rest,
so an HTTP caller gets exactly the message a gRPC caller gets.
"""

import math
from typing import Annotated, Literal

from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from whisperlite.v1 import catalog_pb2, common_pb2, ranker_pb2


def _not_true_or_false(value: object) -> object:
    if isinstance(value, bool):  # JSON's true/false is no number, though Python's bool is an int
        raise ValueError("expected a number, got true/false")
    return value


# Numbers as protobuf's JSON mapping reads them: a JSON number (3, 3.0) or a numeric string ("3", "19.99"), never
# true/false. Strings and booleans take only their own JSON type (bool fields are StrictBool where they occur).
ProtoInt = Annotated[int, BeforeValidator(_not_true_or_false)]
ProtoFloat = Annotated[float, BeforeValidator(_not_true_or_false)]


class ProtoModel(BaseModel):
    # A misspelt field is an error naming it, never silently dropped.
    model_config = ConfigDict(extra="forbid")


class ItemFilter(ProtoModel):
    categories: list[str] = Field(
        default_factory=list, description="keep only items whose category is one of these (exact match); each must contain a visible character"
    )
    min_price: ProtoFloat | None = Field(None, description="keep only items with a price at least this")
    max_price: ProtoFloat | None = Field(None, description="keep only items with a price at most this")
    exclude_item_ids: list[str] = Field(default_factory=list, description="never return these item ids")


class Item(ProtoModel):
    item_id: str = Field("", description="caller-chosen identifier, unique in the catalog; 1 to 256 characters")
    title: str = Field("", description="human-readable name")
    text: str = Field("", description="longer description embedded by the text tower")
    category: str = Field("", description="empty for an item with no category, else a name with a visible character")
    price: ProtoFloat | None = Field(None, description="absent when unknown (never matches a price filter)")
    image_uri: str = ""
    attributes: dict[str, str] = Field(default_factory=dict)
    vector: list[ProtoFloat] = Field(default_factory=list, description="item embedding; on upsert optional (the catalog embeds the text)")


class RecommendRequest(ProtoModel):
    user_id: str = Field("", description="the user asking; unknown or empty ids are served without personal history")
    query: str = Field("", description="what the user typed; non-blank, bounded length")
    top_k: ProtoInt = Field(0, description="number of items wanted: 1 to the ranker's cap")
    filter: ItemFilter | None = None
    recent_item_ids: list[str] = Field(default_factory=list, description="items the user looked at recently, newest last")
    include_history_items: bool = Field(
        False, description="false: a known user's stored history items (their purchases) are left out, as evaluate ranks; true: they may come back"
    )


PersonalizationPath = Literal[tuple(ranker_pb2.PersonalizationPath.keys())]


class RecommendedItem(ProtoModel):
    item: Item
    score: float = Field(description="final score used for the ranking; higher is better")
    query_match: float = Field(description="cosine similarity between the request text and the item")
    personal_affinity: float = Field(description="cosine similarity between the user's taste and the item; 0 without user evidence")


class RecommendResponse(ProtoModel):
    items: list[RecommendedItem]
    model_version: str = Field(description="personalization model version; empty when no trained model is loaded")
    request_id: str
    path: PersonalizationPath = Field(description="which evidence personalized this response")


class UpsertItemsRequest(ProtoModel):
    items: list[Item]


class UpsertItemsResponse(ProtoModel):
    upserted_count: int
    embedded_count: int


PROTO_OF: dict[type[ProtoModel], type[Message]] = {
    ItemFilter: common_pb2.ItemFilter,
    Item: common_pb2.Item,
    RecommendRequest: ranker_pb2.RecommendRequest,
    RecommendedItem: ranker_pb2.RecommendedItem,
    RecommendResponse: ranker_pb2.RecommendResponse,
    UpsertItemsRequest: catalog_pb2.UpsertItemsRequest,
    UpsertItemsResponse: catalog_pb2.UpsertItemsResponse,
}


def to_proto(model: ProtoModel) -> Message:
    """The proto message a JSON body stands for (raises json_format.ParseError, e.g. an int32 out of range)."""
    return json_format.ParseDict(_non_finite_as_text(model.model_dump(exclude_none=True)), PROTO_OF[type(model)]())


def _non_finite_as_text(value: object) -> object:
    """NaN and the infinities as protobuf's JSON mapping spells them: ParseDict refuses the floats themselves with a
    message that asks for exactly what the caller sent ("use quoted "NaN" instead"), while the service, given the
    value, says why it is refused ("must be a finite number, got nan")."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: _non_finite_as_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_non_finite_as_text(item) for item in value]
    return value


def from_proto(message: Message) -> dict:
    """A proto message as the JSON its model describes (proto field names, unset scalars as their defaults, an unset
    optional one as null: an item without a price has "price": null)."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _unset_optionals_as_null(message, data)
    return data


def _unset_optionals_as_null(message: Message, data: dict) -> None:
    for field in message.DESCRIPTOR.fields:
        if field.message_type is None:
            if field.has_presence and not message.HasField(field.name):
                data[field.name] = None
        elif field.message_type.GetOptions().map_entry:
            continue
        elif field.is_repeated:
            for child, child_data in zip(getattr(message, field.name), data.get(field.name, [])):
                _unset_optionals_as_null(child, child_data)
        elif message.HasField(field.name):
            _unset_optionals_as_null(getattr(message, field.name), data[field.name])
