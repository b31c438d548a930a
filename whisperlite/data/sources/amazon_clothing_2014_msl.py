"""amazon_clothing_2014_msl: Amazon 2014 Clothing, Shoes & Jewelry 5-core as MSL/BIGRec
sliding windows (``train.csv``, ``test.csv``: ``user_id,item_ids,timestamp``) plus
``id2name4Rec.json`` (item id -> title).

Each window lists up to 10 history items and the target last; only the target has a time
(day precision). A user's sequence is rebuilt by chaining the windows: each window's longest
prefix that equals the end of the sequence so far is skipped and the rest appended. Items
that are never a target (the first history of a user, and history items whose own window the
MSL split dropped between its train and test periods) take the day of the next target in the
sequence: they happened on or before it. Within one day the sequence order is kept by adding
0, 1, 2... seconds, so each user's timestamps are strictly increasing and the timestamp alone
gives the order. A repeated item keeps its first occurrence.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from whisperlite.core.progress import bar_disabled
from whisperlite.core.dataset import ITEM_TEXT_METADATA, REQUESTS_NONE, PreparedDataset
from whisperlite.data.sources.common import strictly_increasing
from whisperlite.core.text import clean_text

RAW_FILES = ["train.csv", "test.csv", "id2name4Rec.json"]


def _chain_windows(windows: list[tuple[list[int], int]]) -> tuple[list[int], list[int], list[bool]]:
    """Rebuild one user's sequence from time-ordered windows: the items, the day of each
    (a window target's own day, else the next target's) and whether that day is the item's own."""
    sequence: list[int] = []
    days: list[int | None] = []
    for window, day in windows:
        overlap = 0
        for k in range(min(len(sequence), len(window)), 0, -1):
            if sequence[-k:] == window[:k]:
                overlap = k
                break
        new = window[overlap:]
        sequence.extend(new)
        days.extend([None] * len(new))
        if days[-1] is None:
            days[-1] = day
    timed = [day is not None for day in days]
    filled: list[int] = []
    next_day = 0
    for day in reversed(days):  # the last item is always a target, so next_day is set first
        next_day = next_day if day is None else day
        filled.append(next_day)
    return sequence, filled[::-1], timed


def prepare(raw_dir: Path, progress: bool = True) -> PreparedDataset:
    titles = json.loads((raw_dir / "id2name4Rec.json").read_text())
    items = pd.DataFrame(
        {
            "item_id": list(titles),
            "title": [clean_text(t) for t in titles.values()],
            "text": "",
            "category": "",
            "image_path": "",
        }
    )
    items = items.sort_values("item_id", key=lambda s: s.astype(int), ignore_index=True)

    frames = []
    for order, name in enumerate(("train.csv", "test.csv")):
        frame = pd.read_csv(raw_dir / name, dtype={"user_id": str, "item_ids": str, "timestamp": "int64"})
        frame["file_order"] = order
        frames.append(frame)
    windows = pd.concat(frames, ignore_index=True)
    windows["row"] = range(len(windows))
    # Consecutive windows of a user are one item apart; same-day windows keep their file order.
    windows = windows.sort_values(["user_id", "timestamp", "file_order", "row"], kind="stable")

    users, item_ids, timestamps = [], [], []
    n_untimed = n_repeats = 0
    grouped = windows.groupby("user_id", sort=False)
    for user, group in tqdm(grouped, total=grouped.ngroups, desc="rebuilding user sequences", disable=bar_disabled(progress)):
        sequence, days, timed_flags = _chain_windows(
            [(json.loads(ids), ts) for ids, ts in zip(group["item_ids"], group["timestamp"])]
        )
        seen: set[int] = set()
        for item, day, timed in zip(sequence, days, timed_flags):
            if item in seen:
                n_repeats += 1
                continue
            seen.add(item)
            n_untimed += not timed
            users.append(user)
            item_ids.append(str(item))
            timestamps.append(day)
    users_column = pd.Series(users, dtype=str)
    interactions = pd.DataFrame(
        {
            "user_id": users_column,
            "item_id": item_ids,
            "timestamp": strictly_increasing(users_column, pd.Series(timestamps, dtype="int64")),
            "request": "",
        }
    )
    return PreparedDataset(
        items=items,
        interactions=interactions,
        request_source=REQUESTS_NONE,
        item_text_source=ITEM_TEXT_METADATA,
        timestamp_source=(
            "window target day (UTC midnight); items that are never a target take the day of the next "
            "target in the user's sequence; same-day items one second apart in sequence order"
        ),
        notes=[
            "user sequences rebuilt by chaining each user's train.csv and test.csv windows (longest overlap)",
            "train_10000.csv and test_5000.csv are subsets of train.csv and test.csv and are not read",
            "titles HTML-unescaped (e.g. &amp; -> &, &reg; -> (R) sign)",
            "a repeated item of a user keeps its first occurrence",
            "no user text: requests are empty; the trainer fills them with the request simulator",
        ],
        extra={"n_windows": int(len(windows)), "n_imputed_timestamps": n_untimed, "n_repeats_dropped": n_repeats},
    )

