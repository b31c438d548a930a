"""One converter per dataset in ../shared/datasets: ``prepare(raw_dir) -> PreparedDataset``."""

from __future__ import annotations

from types import ModuleType

from whisperlite.data.sources import (
    amazon_clothing_2014_msl,
    amazon_fashion_5core_2018,
    movielens_latest_small,
    womens_ecommerce_clothing,
    yelp_phoenix_10k,
)

CONVERTERS: dict[str, ModuleType] = {
    module.__name__.rsplit(".", 1)[-1]: module
    for module in (
        amazon_clothing_2014_msl,
        amazon_fashion_5core_2018,
        movielens_latest_small,
        womens_ecommerce_clothing,
        yelp_phoenix_10k,
    )
}
