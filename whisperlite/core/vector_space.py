"""The one rule that keeps vectors comparable: both sides must come from the same encoder model.

Vectors from different encoders live in different spaces, so the catalog, the ranker and the
trainer refuse to mix them rather than rank garbage; each says which two sides disagreed.
"""

from __future__ import annotations

from whisperlite.core.errors import FailedPrecondition


class EncoderMismatch(FailedPrecondition, ValueError):
    """Two sides name different encoder models (or dimensions). A FailedPrecondition for services,
    a ValueError for the trainer's callers."""


def require_same_encoder(
    side: str, model: str, other_side: str, other_model: str, *, dimensions: tuple[int, int] | None = None, hint: str = ""
) -> None:
    """Raise EncoderMismatch unless `model` (of `side`) equals `other_model` (of `other_side`).

    `dimensions`, when given, are the two sides' vector sizes and must agree too. An empty model
    name never matches: an unnamed vector space cannot be vouched for.
    """
    same_dimension = dimensions is None or dimensions[0] == dimensions[1]
    if model and model == other_model and same_dimension:
        return
    def described(name: str, dimension: int | None) -> str:
        text = repr(name) if name else "an unnamed model"
        return f"{text} ({dimension}-d)" if dimension is not None else text

    first, second = dimensions or (None, None)
    message = f"{side} come from {described(model, first)} but {other_side} {described(other_model, second)}"
    raise EncoderMismatch(message + (f"; {hint}" if hint else ""))
