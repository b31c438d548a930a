"""One converter per dataset in ../shared/datasets: ``prepare(raw_dir) -> PreparedDataset``."""

from __future__ import annotations

from types import ModuleType

from whisperlite.data.sources import (
    amazon_clothing_2014_msl,
)

CONVERTERS: dict[str, ModuleType] = {
    "amazon_clothing_2014_msl": amazon_clothing_2014_msl,
}
