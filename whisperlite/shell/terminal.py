"""Catalog text printed to a terminal: a catalog stores its owner's text as given, and printed raw, an escape sequence in
a title cleared the screen or recoloured it, and a carriage return overwrote the line with other output."""

from __future__ import annotations

import json
import re
import unicodedata

# What json.dumps(ensure_ascii=False) leaves raw of the control characters: DEL and the C1 range. A terminal reads
# U+009B as the escape sequence introducer "ESC [" (CSI), so a title holding it could drive the terminal as ESC could.
_RAW_IN_JSON = re.compile("[\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """`text` with its control characters written as repr writes them (\\x1b, \\r, \\x9b)."""
    return "".join(repr(char)[1:-1] if unicodedata.category(char) == "Cc" else char for char in text)


def terminal_json(value: object, **dumps_options) -> str:
    """json.dumps that keeps non-ASCII text readable and escapes every control character, still valid JSON that loads
    back to `value`."""
    text = json.dumps(value, ensure_ascii=False, **dumps_options)
    return _RAW_IN_JSON.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
