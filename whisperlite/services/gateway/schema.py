"""The JSON bodies of the gateway's /v1 API, field for field the protos' messages (proto field names).

FastAPI derives the OpenAPI schema from these models; `PROTO_OF` pairs each model with the message it
mirrors, and tests/test_gateway_api.py compares the schema's field names with the proto descriptors so
the two cannot drift. Values are checked here only for their JSON type, and lists for their length against the
upstreams' per-call limits: the services validate the rest, so an HTTP caller gets exactly the message a gRPC
caller gets.
"""

import math
import re
from typing import Annotated, Literal

from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from whisperlite.v1 import catalog_pb2, common_pb2, ranker_pb2

# The upstreams' per-call limits on lists, checked by pydantic before it reads a list's values: a body past one was
# converted whole before the upstream refused it (85,000 empty items, a 256 KB body: 5.8 s of CPU on the event loop,
# without a token). A service may not import another's constants (tests/test_architecture.py): each names its source.
MAX_RECENT_ITEMS = 50  # the ranker's RankerLimits.max_recent_items
MAX_FILTER_VALUES = 1000  # the catalog's MAX_FILTER_VALUES (services/catalog/filters.py)
# The catalog's default --max-batch: a catalog started with a larger one takes larger batches over gRPC
# (`whisperlite catalog import`), one with a smaller one refuses them itself.
MAX_UPSERT_ITEMS = 1000

# A number given as a string, as proto3's JSON mapping writes one: JSON's own number grammar. Protobuf's Python
# parser took whatever int() and float() take, so "1_0" was 10 and " 2 " and "+2" were 2.
JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
NON_FINITE_WORDS = ("NaN", "Infinity", "-Infinity")


def _proto_json_number(examples: tuple[str, ...], words: tuple[str, ...] = ()):
    """A check that a value is a JSON number or a string proto3's JSON mapping reads as one (`words` too), never
    true/false (JSON's true/false is no number, though Python's bool is an int)."""
    examples = ", ".join(f'"{example}"' for example in examples)

    def check(value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("expected a number, got true/false")
        if isinstance(value, str) and not (JSON_NUMBER.fullmatch(value) or value in words):
            raise ValueError(f"expected a number, or a string of one as JSON writes it ({examples}), got {value[:40]!r}")
        return value

    return check


# Numbers as protobuf's JSON mapping reads them: a JSON number (3, 3.0) or a numeric string ("3", "19.99"; for floats
# "NaN" and "Infinity" too), never true/false. Strings and booleans take only their own JSON type (StrictBool).
ProtoInt = Annotated[int, BeforeValidator(_proto_json_number(("10", "-3")))]
ProtoFloat = Annotated[float, BeforeValidator(_proto_json_number(("19.99", "-2.5e3", *NON_FINITE_WORDS), NON_FINITE_WORDS))]
RecentItemIds = Annotated[list[str], Field(max_length=MAX_RECENT_ITEMS)]


class ProtoModel(BaseModel):
    # A misspelt field is an error naming it, never silently dropped.
    model_config = ConfigDict(extra="forbid")


class ItemFilter(ProtoModel):
    categories: list[str] = Field(
        default_factory=list, max_length=MAX_FILTER_VALUES, description="keep only items whose category is one of these (exact match); each must contain a visible character"
    )
    min_price: ProtoFloat | None = Field(None, description="keep only items with a price at least this")
    max_price: ProtoFloat | None = Field(None, description="keep only items with a price at most this")
    exclude_item_ids: list[str] = Field(default_factory=list, max_length=MAX_FILTER_VALUES, description="never return these item ids")


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
    recent_item_ids: RecentItemIds = Field(default_factory=list, description="items the user looked at recently, newest last")
    include_history_items: StrictBool = Field(
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
    missing_recent_item_ids: list[str] = Field(
        default_factory=list,
        description="recent_item_ids the catalog does not hold (deleted, or mistyped), left out of the taste; empty when none were read",
    )


class UpsertItemsRequest(ProtoModel):
    items: list[Item] = Field(max_length=MAX_UPSERT_ITEMS)


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


# ParseDict scans each string for a lone surrogate with a regex that holds the GIL (~70 ns a character): one 50 MB
# query held every gateway caller, /health included, 5 s before its 413. Strings longer than this are set on the message
# directly instead; pydantic's JSON parser has refused a lone surrogate already, and protobuf refuses one when set.
LONG_STRING_CHARS = 4096

# Where a long string goes in the message: field names, list indexes and map keys from the top.
Path = tuple[str | int, ...]


def to_proto(model: ProtoModel) -> Message:
    """The proto message a JSON body stands for (raises json_format.ParseError, e.g. an int32 out of range)."""
    long_strings: list[tuple[Path, str]] = []
    message = json_format.ParseDict(_for_parse_dict(model.model_dump(exclude_none=True), (), long_strings), PROTO_OF[type(model)]())
    for path, text in long_strings:
        _set_string(message, path, text)
    return message


def _for_parse_dict(value: object, path: Path, long_strings: list[tuple[Path, str]]) -> object:
    """`value` as ParseDict should read it: NaN and the infinities spelt as protobuf's JSON mapping spells them (ParseDict
    refuses the floats themselves with a message that asks for exactly what the caller sent, "use quoted "NaN" instead",
    while the service, given the value, says why it is refused: "must be a finite number, got nan"), and every long string
    taken out into `long_strings` (an empty string holds its place in a list)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        kept = {}
        for key, item in value.items():
            if len(key) > LONG_STRING_CHARS or (isinstance(item, str) and len(item) > LONG_STRING_CHARS):  # a map's key too
                long_strings.append(((*path, key), item))
            else:
                kept[key] = _for_parse_dict(item, (*path, key), long_strings)
        return kept
    if isinstance(value, list):
        if any(isinstance(item, str) and len(item) > LONG_STRING_CHARS for item in value):
            long_strings.extend(((*path, index), item) for index, item in enumerate(value) if len(item) > LONG_STRING_CHARS)
            return [item if len(item) <= LONG_STRING_CHARS else "" for item in value]
        return [_for_parse_dict(item, (*path, index), long_strings) for index, item in enumerate(value)]
    return value


def _set_string(message: Message, path: Path, text: str) -> None:
    *parents, last = path
    target = message
    for step in parents:
        target = target[step] if isinstance(step, int) else getattr(target, step)
    if isinstance(target, Message):
        setattr(target, last, text)
    else:  # a repeated string field (by index) or a map field (by key)
        target[last] = text


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
