"""Query strings and path integers of the /v1 routes, read as strictly as their JSON bodies (bodies.py).

FastAPI's own reading was lenient where the bodies are not: `?include_vectors=true&include_vectors=false` answered
with the last, a misspelt `?include_vector=true` was dropped in silence, `yes`, `1` and `on` were true, and
/v1/study/comparisons/%201 (also "+1", "01", "1_0") was comparison 1. A repeated header or JSON key, an unknown field
and a boolean other than JSON's true/false are 400s naming them: so are these.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Annotated

from pydantic import BeforeValidator
from starlette.requests import Request

from whisperlite.services.gateway.bodies import invalid

JSON_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
BOOLEANS = {"true": True, "false": False}
MAX_NAME_CHARS = 64  # of a refused parameter's name in the message: it is the caller's, of any length


def _json_integer(value: object) -> object:
    if isinstance(value, str) and not JSON_INTEGER.fullmatch(value):
        raise ValueError(f"expected a whole number as JSON writes it (1, 42), got {value[:40]!r}")
    return value


# A path integer written as JSON writes one: pydantic read " 1", "+1", "01" and "1_0" as numbers. Refused as FastAPI
# refuses a parameter, naming it.
JsonInteger = Annotated[int, BeforeValidator(_json_integer)]


def _query_parameters(dependant) -> dict[str, object]:
    """{name: type} of the query parameters a route's function, and what it depends on, declare."""
    found = {parameter.alias: parameter.field_info.annotation for parameter in dependant.query_params}
    for dependency in dependant.dependencies:
        found.update(_query_parameters(dependency))
    return found


def check_query(request: Request) -> None:
    """An app-wide dependency: the query string of a documented /v1 route holds only the parameters the route declares,
    each once, booleans as true or false and integers as JSON writes them; Refused (400) naming the first that does
    not. Other routes (the page, whose address carries ?comparison=ID, /health, /metrics) are not the API's."""
    route = request.scope.get("route")
    if route is None or not route.include_in_schema or not route.path.startswith("/v1/"):
        return
    declared = _query_parameters(route.dependant)
    pairs = request.query_params.multi_items()
    for name, count in Counter(name for name, _ in pairs).items():
        if name not in declared:
            takes = f"it takes {', '.join(sorted(declared))}" if declared else "it takes none"
            raise invalid(f"{name[:MAX_NAME_CHARS]}: not a query parameter of {route.path_format}; {takes}")
        if count > 1:
            raise invalid(f"{name}: given {count} times; send it once")
    for name, value in pairs:
        if declared[name] is bool and value not in BOOLEANS:
            raise invalid(f"{name}: must be true or false, got {value[:40]!r}")
        if declared[name] is int:
            try:
                _json_integer(value)
            except ValueError as error:
                raise invalid(f"{name}: {error}") from None
