"""Vector validation of the catalog's domain module, without gRPC."""

import re

import numpy as np
import pytest

from whisperlite.services.catalog.items import validate_vector
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
