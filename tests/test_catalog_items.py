"""Vector validation and item protos of the catalog's domain module, without gRPC."""

import re

import numpy as np
import pytest

from whisperlite.services.catalog.items import ItemRecord, record_to_proto, validate_vector
from whisperlite.v1 import common_pb2
from whisperlite.core.errors import InvalidArgument


@pytest.mark.parametrize("value", [3e38, 1e-30, 1e-44])  # near float32's largest, small, subnormal
def test_extreme_but_finite_vectors_are_normalized(value):
    vector = validate_vector([value] * 8, 8, "vector")
    assert vector.dtype == np.float32
    np.testing.assert_allclose(vector, np.full(8, 1 / np.sqrt(8)), rtol=1e-6)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([0.0] * 8, "vector: must not be all zeros"),
        ([1.0] * 7, "vector: must have 8 values (the catalog's dimension), got 7"),
        ([1.0] * 7 + [float("nan")], "vector: values must be finite, got nan at position 7"),
        ([float("inf")] + [1.0] * 7, "vector: values must be finite, got inf at position 0"),
    ],
)
def test_unusable_vectors_are_refused_with_the_reason(values, message):
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        validate_vector(values, 8, "vector")


@pytest.mark.parametrize("dimension", [1, 16, 31, 32, 384, 512, 4096])  # the packed field's length prefix takes 1-3 bytes
def test_an_item_proto_carries_its_vector_exactly_as_protobuf_writes_it(dimension):
    vector = np.random.default_rng(dimension).normal(size=dimension).astype(np.float32)
    record = ItemRecord(item_id="a", title="t", category="c", price=2.5, attributes={"k": "v"}, vector=vector)
    item = record_to_proto(record, include_vector=True)
    reference = common_pb2.Item(item_id="a", title="t", category="c", price=2.5, attributes={"k": "v"}, vector=vector.tolist())
    assert item == reference and item.SerializeToString() == reference.SerializeToString()
    assert np.array_equal(np.asarray(item.vector, dtype=np.float32), vector)
    assert not record_to_proto(record, include_vector=False).vector


@pytest.mark.parametrize(
    "blank",
    ["\u3164\u3164", "\u115f\u1160", "\uffa0", "\u2800", "\U000e0080", "x\ufe0f"[1:], "\U000e0100", " \u180b"],
    ids=["hangul-filler", "hangul-jamo-fillers", "halfwidth-filler", "braille-blank", "unassigned", "variation-selector",
         "variation-selector-supplement", "mongolian-selector"],
)
def test_characters_that_draw_nothing_are_no_visible_character(blank):
    """Hangul fillers, the Braille blank and unassigned code points passed as visible: such ids and categories were taken."""
    from whisperlite.core.item_fields import category_problem, item_id_problem
    from whisperlite.core.text import has_visible_characters

    assert not has_visible_characters(blank)
    assert "must contain a visible character" in item_id_problem(blank)
    assert "has no visible character" in category_problem(blank)
    assert has_visible_characters(blank + "a") and has_visible_characters("\u3131")  # a Hangul letter is one
