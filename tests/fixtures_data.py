"""Fixtures for the data tests: datasets prepared once per session from ../shared/datasets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from whisperlite.core.dataset import read_info, read_interactions, read_items
from whisperlite.data.prepare import prepare_dataset


class Prepared:
    def __init__(self, directory: Path):
        self.directory = directory
        self.items: pd.DataFrame = read_items(directory)
        self.interactions: pd.DataFrame = read_interactions(directory)
        self.info: dict = read_info(directory)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, datasets_dir):
    """``prepared(name)`` converts ``name`` into a temporary folder (once) and reads it back."""
    cache: dict[str, Prepared] = {}

    def get(name: str) -> Prepared:
        if name not in cache:
            out = tmp_path_factory.mktemp(name)
            prepare_dataset(name, out, raw_dir=datasets_dir / name / "raw", progress=False)
            cache[name] = Prepared(out)
        return cache[name]

    return get
