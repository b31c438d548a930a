"""What the catalog can store of an item's fields, and how a file's price and attributes cells read: one rule, applied
by the catalog to every upsert and by `read_items` to a dataset's items.csv, so a dataset a model trains on is one
the catalog can serve. (A price written "19,99" trained, and then stopped `up`'s ingest and with it the stack.)

Limits are in characters. The Milvus VARCHAR fields are sized in bytes at 4x these (UTF-8 needs at most 4 bytes a
character), so a value that passes here always fits its field.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from decimal import Decimal

from whisperlite.core.text import has_visible_characters

# The longest user or item id: the ranker and the catalog refuse longer ones, so a dataset holding one is refused
# when read rather than training a model that cannot serve it.
MAX_ID_CHARS = 256


def repeated_columns_problem(header: list[str]) -> str | None:
    """Why a file's header cannot be read by name, or None: a column named twice (pandas renamed the second `title.1`
    and read on, so a dataset's items took the first and the second was dropped without a word)."""
    repeated = sorted(name for name, count in Counter(header).items() if count > 1 and name)
    if repeated:
        return f"the header names the column(s) {', '.join(map(repr, repeated))} more than once: rename them so each column has one name"
    return None


def has_control_characters(value: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value)


def is_unicode_text(value: str) -> bool:
    """False for a string holding a lone surrogate ("\\ud800" in a JSON file reads as one): no UTF-8 encodes it, so no
    gRPC message or store can carry it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


NOT_UNICODE = "must be Unicode text (a lone surrogate such as \\ud800 has no UTF-8 form)"


def shown(value: object, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters, for messages: a refused 140,000-character cell need not be quoted whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def item_id_problem(item_id: str) -> str | None:
    """Why `item_id` cannot be a catalog id, or None when it can: the catalog's rule, which a dataset's item ids
    meet too, or the model would train on items the stack cannot ingest.

    Apostrophes are refused because milvus-lite 2.5.1 pastes primary keys into SQL between single
    quotes when it upserts and deletes (an id like `x' or '1'='1` would reach its SQLite store as SQL);
    control characters because a filter expression cannot express a newline in a string literal.
    """
    if not item_id:
        return "must not be empty"
    if not has_visible_characters(item_id):  # '   ' or a zero-width space: an id no one can read or type back
        return "must contain a visible character, not only spaces or invisible (format) characters"
    if len(item_id) > MAX_ID_CHARS:
        return f"must be at most {MAX_ID_CHARS} characters, got {len(item_id)}"
    if "'" in item_id:
        return "must not contain an apostrophe (')"
    if has_control_characters(item_id):
        return "must not contain control characters (newline, tab, ...)"
    if not is_unicode_text(item_id):
        return NOT_UNICODE
    return None


MAX_TITLE_CHARS = 1024
MAX_TEXT_CHARS = 16_000
MAX_CATEGORY_CHARS = 256
MAX_IMAGE_URI_CHARS = 2048
# Milvus caps a JSON field at 64 KiB.
MAX_ATTRIBUTES_BYTES = 65_536


def category_problem(category: str) -> str | None:
    """Why `category` names no category, or None. Each of a filter's categories must name one: an empty entry selected
    the items stored without a category. An item's category is '' (none) or names one: '   ' or a zero-width space
    would read as none while being one, and a filter could not ask for it."""
    if not category:
        return "is empty; a category must contain a visible character"
    if not has_visible_characters(category):
        return f"{shown(category)} has no visible character; a category must contain one, not only spaces or invisible (format) characters"
    return None


def parse_price(value: object) -> float | None:
    """A price cell: blank is no price; ValueError saying why for anything but a finite number >= 0."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):  # float(True) is 1.0: a flag is not a price
        raise ValueError(f"not a number: {value!r}")
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {shown(value)}") from None
    except OverflowError:  # an integer past float's range, such as 10**400
        raise ValueError("must be a finite number >= 0, got an integer too large for a float") from None
    if not math.isfinite(price) or price < 0:
        raise ValueError(f"must be a finite number >= 0, got {shown(value)}")
    if price == 0.0 and _is_nonzero(value):
        raise ValueError(
            f"must be a finite number >= 0 that a float can hold, got {shown(value)}, nearer 0 than the smallest float "
            "(about 5e-324): it would be stored as 0.0"
        )
    return price + 0.0  # -0.0 passes `< 0` and was stored, and read back, as -0.0: every zero is +0.0


def _is_nonzero(value: object) -> bool:
    """Whether the number written is not zero, read exactly: float() reads "1e-400" as 0.0, and an item priced 1e-400
    was stored free. Decimal reads the forms float() reads (spaces, "_", other scripts' digits)."""
    try:
        return Decimal(value) != 0
    except (ArithmeticError, TypeError, ValueError):  # NumPy integers and float32, which float() reads exactly
        return False


# The largest float32: a vector travels as float32, so a larger value would arrive as inf.
FLOAT32_MAX = 3.4028234663852886e38


def parse_vector(value: object) -> tuple[float, ...]:
    """A vector cell: an array of numbers (a JSON array in a CSV cell); blank, null or [] is none, and the catalog
    embeds the item's text. ValueError saying why otherwise; the length is the catalog's to check, against its
    dimension."""
    if isinstance(value, str):
        if not value.strip():
            return ()
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise ValueError(f"not a JSON array of numbers: {shown(value)}") from None
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be an array of numbers, got {type(value).__name__}")
    vector = []
    for position, number in enumerate(value):
        if isinstance(number, bool) or not isinstance(number, (int, float, Decimal)):
            raise ValueError(f"must hold only numbers, got {shown(number)} at position {position}")
        try:
            number = float(number)
        except OverflowError:  # an integer past float's range
            number = math.inf
        if not abs(number) <= FLOAT32_MAX:  # nan too
            raise ValueError(f"values must be finite numbers within float32's range, got {shown(value[position])} at position {position}")
        vector.append(number)
    return tuple(vector)


class RepeatedKey(ValueError):
    def __init__(self, key: str):
        super().__init__(f"key {shown(key)} appears twice in one object")
        self.key = key


def object_without_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    """json.loads' object_pairs_hook: a key given twice is refused (json.loads alone keeps the last, silently)."""
    found = dict(pairs)
    if len(found) < len(pairs):
        repeated = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise RepeatedKey(repeated)
    return found


def attribute_value(value: object) -> str:
    """An attribute as stored: text as it is, any other value as its JSON (42 -> "42", true -> "true")."""
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):  # a JSON number kept exact by its reader (1e-400): its exact value ("1E-400"), not 0.0
        return str(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError, RecursionError):  # a Parquet timestamp or bytes, a nesting past the encoder's depth
        raise ValueError(f"a value of type {type(value).__name__} has no JSON form") from None


def parse_attributes(raw: object) -> dict[str, str]:
    """An attributes cell: a JSON object of names to values (values that are not text kept as their JSON), or
    (key, value) pairs as Parquet stores a map; blank is none. ValueError saying why otherwise."""
    if isinstance(raw, str) and raw.strip():
        try:
            raw = json.loads(raw, object_pairs_hook=object_without_repeated_keys)
        except json.JSONDecodeError as error:
            raise ValueError(f"not a JSON object: {error.msg}") from None
        except RepeatedKey as error:
            raise ValueError(str(error)) from None
        except (ValueError, RecursionError):  # an integer of more than 4,300 digits, arrays nested past the parser's depth
            raise ValueError("not a JSON object this reader can take (nested too deeply, or a number too long)") from None
    if isinstance(raw, list):
        try:
            raw = object_without_repeated_keys(raw)  # a Parquet map may hold a key twice: dict() kept the last, silently
        except RepeatedKey as error:
            raise ValueError(str(error)) from None
        except (TypeError, ValueError):
            raise ValueError("must be a JSON object of names to values, got a list") from None
    if raw in (None, ""):
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"must be a JSON object of names to values, got {type(raw).__name__}")
    return {attribute_value(key): attribute_value(value) for key, value in raw.items()}


NO_NUL = "must not contain a NUL character (\\x00)"


def field_problem(title: str, text: str, category: str, image_uri: str, attributes: dict[str, str]) -> tuple[str, str] | None:
    """(field, why) of the first of these fields the catalog cannot store, or None."""
    for name, value, limit in (
        ("title", title, MAX_TITLE_CHARS), ("text", text, MAX_TEXT_CHARS), ("image_uri", image_uri, MAX_IMAGE_URI_CHARS),
        ("category", category, MAX_CATEGORY_CHARS),
    ):  # fmt: skip
        if len(value) > limit:
            return name, f"must be at most {limit} characters, got {len(value)}"
        if not is_unicode_text(value):
            return name, NOT_UNICODE
        if "\x00" in value:  # stored as is, it ended strings early in C readers and logs
            return name, NO_NUL
    if has_control_characters(category):
        return "category", "must not contain control characters (newline, tab, ...)"
    if category and (problem := category_problem(category)) is not None:
        return "category", f"{problem} (leave it empty for an item with no category)"
    if not all(is_unicode_text(key) and is_unicode_text(value) for key, value in attributes.items()):
        return "attributes", NOT_UNICODE
    for key, value in attributes.items():
        for part, written in (("name", key), ("value", value)):
            if "\x00" in written:
                return "attributes", f"{shown(key)}: its {part} {NO_NUL}"
        if not has_visible_characters(key):  # {"": "x"} was stored: an attribute no one can name to read it back
            return "attributes", f"{shown(key)}: a name must not be empty, nor only spaces or invisible (format) characters"
    if len(json.dumps(attributes, ensure_ascii=False).encode()) > MAX_ATTRIBUTES_BYTES:
        return "attributes", f"must encode to at most {MAX_ATTRIBUTES_BYTES} bytes of JSON"
    return None
