"""Small pieces shared by several converters."""

from __future__ import annotations

import numpy as np
import pandas as pd

from whisperlite.core.dataset import ITEM_COLUMNS


def day_seconds(dates: pd.Series) -> pd.Series:
    """Unix seconds of UTC midnight for "YYYY-MM-DD" dates."""
    days = pd.to_datetime(dates, format="%Y-%m-%d", utc=True)
    return ((days - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype("int64")


def strictly_increasing(users: pd.Series, seconds: pd.Series) -> pd.Series:
    """Make each user's timestamps strictly increasing in row order by moving a tied or
    earlier one to one second after its predecessor: t'[i] = max(t[i], t'[i-1] + 1). Rows must
    already be grouped by user and in the intended order; then the timestamp alone gives it."""
    position = users.groupby(users.to_numpy()).cumcount().to_numpy()
    shifted = pd.Series(seconds.to_numpy() - position)
    running_max = shifted.groupby(users.to_numpy()).cummax().to_numpy()
    return pd.Series(running_max + position, index=users.index, dtype="int64")


def placeholder_items(item_ids: pd.Series, kind: str) -> pd.DataFrame:
    """Items of a source without item metadata: title "<kind> <id>", everything else empty."""
    ids = pd.Series(np.sort(item_ids.unique()))
    return pd.DataFrame(
        {"item_id": ids, "title": kind + " " + ids, "text": "", "category": "", "image_path": ""}, columns=ITEM_COLUMNS
    )
