"""``whisperlite data prepare``: convert one dataset's raw files into the canonical directory."""

from __future__ import annotations

import os
from pathlib import Path

from whisperlite.core.dataset import raw_checksums, write_dataset
from whisperlite.data.sources import CONVERTERS

# ../shared/datasets beside the repository, as DEVELOPERS.md lays it out.
DEFAULT_DATASETS_ROOT = Path(__file__).resolve().parents[3] / "shared" / "datasets"
DATASETS_ROOT_ENV = "WHISPERLITE_DATASETS"


def datasets_root() -> Path:
    return Path(os.environ.get(DATASETS_ROOT_ENV, DEFAULT_DATASETS_ROOT))


def default_raw_dir(source: str) -> Path:
    return datasets_root() / source / "raw"


def prepare_dataset(source: str, out_dir: str | os.PathLike, raw_dir: str | os.PathLike | None = None,
                    name: str | None = None, progress: bool = True) -> dict:
    """Convert ``source`` (a name in ``CONVERTERS``) from ``raw_dir`` into ``out_dir``; returns
    the dataset.json content. Raises ValueError for an unknown source and FileNotFoundError
    naming the first raw file that is missing."""
    if source not in CONVERTERS:
        raise ValueError(f"source: unknown dataset {source!r}; known: {', '.join(sorted(CONVERTERS))}")
    converter = CONVERTERS[source]
    raw = Path(raw_dir) if raw_dir is not None else default_raw_dir(source)
    for file_name in converter.RAW_FILES:
        if not (raw / file_name).is_file():
            raise FileNotFoundError(f"raw: {raw / file_name} not found (expected the raw files of {source})")
    prepared = converter.prepare(raw, progress=progress)
    return write_dataset(
        prepared,
        Path(out_dir),
        name=name or source,
        source=source,
        raw_files=raw_checksums(raw, converter.RAW_FILES),
    )
