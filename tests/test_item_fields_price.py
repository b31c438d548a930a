"""A price cell whose number is not zero but nearer 0 than any float: float() read "1e-400" as 0.0, and the item was
stored, trained on and filtered on as free."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from whisperlite.core.dataset import read_items
from whisperlite.core.item_fields import parse_price
from whisperlite.shell.catalog_admin import ColumnMapping, rows_to_items

UNDERFLOW = "nearer 0 than the smallest float (about 5e-324): it would be stored as 0.0"


@pytest.mark.parametrize("value", ["1e-400", " 1e-400 ", "2e-324", "-1e-400", Decimal("1E-400")])
def test_a_nonzero_price_that_reads_as_zero_is_refused_naming_it(value):
    with pytest.raises(ValueError, match=re.escape(f"got {value!r}, {UNDERFLOW}")):
        parse_price(value)


@pytest.mark.parametrize(
    "value, price",
    [("0", 0.0), ("0e-400", 0.0), ("-0.0", 0.0), (Decimal("0E-400"), 0.0), (0.0, 0.0), ("5e-324", 5e-324),
     ("12.5", 12.5)],
)
def test_zeros_and_the_smallest_floats_are_still_prices(value, price):
    assert parse_price(value) == price


def test_a_dataset_item_priced_1e_400_is_refused_naming_its_line(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title,price\n1,Red dress,19.99\n2,Shirt,1e-400\n")
    refusal = f"items.csv line 3: price: must be a finite number >= 0 that a float can hold, got '1e-400', {UNDERFLOW}"
    with pytest.raises(ValueError, match=re.escape(refusal)):
        read_items(tmp_path)


def test_a_csv_import_row_priced_1e_400_is_a_row_error(tmp_path):
    source = tmp_path / "items.csv"
    source.write_text("item_id,title,price\nd-1,Red dress,1e-400\nd-2,Shirt,0e-400\n")
    refused, free = rows_to_items(source, "csv", ColumnMapping())
    assert refused.item is None
    assert refused.error == f"price: must be a finite number >= 0 that a float can hold, got '1e-400', {UNDERFLOW}"
    assert free.item is not None and free.item.price == 0.0
