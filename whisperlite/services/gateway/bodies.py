"""Reading a JSON request body into its model, off the event loop when it is large.

FastAPI would parse and validate a body on the event loop: a 16 MiB body of small JSON values held it for
about 6 s (every other HTTP caller and /health waited) and took 270 MiB to refuse. Here a small body is read and
converted on the loop, and any other in a worker thread, one at a time, so memory stays bounded by one body however
many callers send one. Small is counted in bytes and in JSON values: converting a body costs per value (pydantic,
then protobuf's ParseDict: ~70 µs each), so 256 KB of empty items held the loop 5.8 s. Values are read as protobuf's JSON mapping
reads them (schema.py): numbers from numbers or numeric strings, never from true/false, and `"relevant": "no"`
never means false.
"""

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, ValidationError

from whisperlite.core.item_fields import RepeatedKey, object_without_repeated_keys

INLINE_BODY_BYTES = 256 * 1024
# Most commas a body read on the loop holds: each JSON value past an object's or array's first follows one (a comma
# in a text counts too, which only sends that body to the thread). 200 values cost ~15 ms.
INLINE_BODY_COMMAS = 200
UTF8_BOM = b"\xef\xbb\xbf"
JSON_MEDIA_TYPES = ("application/json",)

M = TypeVar("M", bound=BaseModel)


class Refused(Exception):
    """A request the gateway answers itself, before any upstream call: an HTTP status, a gRPC code, a message."""

    def __init__(self, status: int, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def invalid(message: str) -> Refused:
    return Refused(400, grpc.StatusCode.INVALID_ARGUMENT, message)


def validation_message(problems: Iterable[dict], skip: int = 0) -> str:
    """`field.path: reason` for each of pydantic's problems, the way the services name fields in INVALID_ARGUMENT;
    `skip` drops leading location parts (FastAPI's first says where a parameter came from: path, query string)."""
    parts = []
    for problem in problems:
        # A list index as the services write it, items[0].price: joined with dots it read items.0.price.
        location = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"][skip:]).removeprefix(".")
        location = location or "body"
        reason = problem["msg"]
        if problem["type"] == "json_invalid":
            reason = f"not valid JSON ({problem['ctx']['error'] if 'ctx' in problem else reason})"
        elif problem["type"] == "too_long":  # an upstream's per-call limit (schema.py), in the services' words
            reason = f"at most {problem['ctx']['max_length']} values, got {problem['ctx']['actual_length']}"
        parts.append(f"{location}: {reason}")
    return "; ".join(parts)


def parse(model: type[M], raw: bytes, convert: Callable[[M], Any] | None = None) -> Any:
    """The body as `model` (then through `convert`, e.g. to its proto), or Refused with what to fix."""
    raw = raw.removeprefix(UTF8_BOM)  # RFC 8259 lets a parser ignore a BOM
    try:
        value = model.model_validate_json(raw)
    except ValidationError as error:
        raise invalid(validation_message(error.errors(include_url=False))) from None
    _refuse_repeated_keys(raw)
    if convert is None:
        return value
    try:
        return convert(value)
    except json_format.ParseError as error:  # e.g. an int32 out of range
        raise invalid(str(error)) from None


def _refuse_repeated_keys(raw: bytes) -> None:
    """RFC 8259 leaves a repeated member name to the parser: pydantic keeps the last, so {"query": "dress",
    "query": "boots"} searched boots, while a proxy or a log reader may have read the first. Refused, naming it."""
    try:
        json.loads(raw, object_pairs_hook=object_without_repeated_keys)
    except RepeatedKey:
        raise invalid(f"{_repeated_key_path(raw)}: given more than once in one JSON object; send each field once") from None
    except (ValueError, RecursionError):  # what pydantic took and Python's json cannot read (a 5,000-digit number)
        pass


def _repeated_key_path(raw: bytes) -> str | None:
    """Where the body repeats a key, as the services name fields (`filter.min_price`, `items[2].title`): the hook
    above sees each object alone, so a refused body is read once more with every object kept as its pairs."""

    def find(value: object, path: str) -> str | None:
        if isinstance(value, tuple):  # an object, as its (key, value) pairs; a JSON array is a list
            keys = Counter(key for key, _ in value)
            if (repeated := next((key for key, count in keys.items() if count > 1), None)) is not None:
                return path + repeated
            children = [(f"{path}{key}.", child) for key, child in value]
        elif isinstance(value, list):
            children = [(f"{path.removesuffix('.')}[{index}].", child) for index, child in enumerate(value)]
        else:
            return None
        for child_path, child in children:
            if (found := find(child, child_path)) is not None:
                return found
        return None

    return find(json.loads(raw, object_pairs_hook=tuple), "")


class BodyBudget:
    """Bytes of request bodies the gateway holds at once, however many callers send one.

    Each body's bytes are taken as they arrive, not as its Content-Length announces them (two idle connections
    announcing 64 MB each used to refuse every other body for as long as they stalled), and given back when its
    request is answered. A body that no other holds bytes beside goes through at any accepted size, so the budget
    never refuses what --max-body-bytes allows to a lone caller.
    """

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self.held_bytes = 0

    def take(self, size: int, held_already: int = 0) -> bool:
        """Takes `size` more bytes for a body that holds `held_already`, unless others' bytes leave no room."""
        if self.held_bytes > held_already and self.held_bytes + size > self.limit_bytes:
            return False
        self.held_bytes += size
        return True

    def give(self, size: int) -> None:
        self.held_bytes -= size


class BodyReader:
    """Reads JSON bodies; `max_message_bytes` refuses, with 413, a body whose proto no upstream would take."""

    def __init__(self, max_message_bytes: int):
        self.max_message_bytes = max_message_bytes
        self._large = asyncio.Semaphore(1)

    async def read(self, raw: bytes, content_type: str | None, model: type[M], convert: Callable[[M], Any] | None = None) -> Any:
        media = (content_type or "application/json").split(";")[0].strip().lower()  # none given: read as JSON
        if media not in JSON_MEDIA_TYPES and not media.endswith("+json"):
            # Also what keeps a cross-site HTML form (which can send only form and text types) from posting here.
            raise Refused(
                415, grpc.StatusCode.INVALID_ARGUMENT,
                f"content-type: must be application/json, got {content_type[:60]!r} (curl -d sends a form: add -H 'content-type: application/json')",
            )  # fmt: skip
        if len(raw) <= INLINE_BODY_BYTES and raw.count(b",") <= INLINE_BODY_COMMAS:
            value = parse(model, raw, convert)
        else:
            async with self._large:
                value = await asyncio.to_thread(parse, model, raw, convert)
        if isinstance(value, Message) and (size := value.ByteSize()) > self.max_message_bytes:
            raise Refused(
                413, grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the request is a {size}-byte message, more than the {self.max_message_bytes} bytes upstream calls may carry "
                "(--max-message-bytes): send fewer items per call",
            )  # fmt: skip
        return value
