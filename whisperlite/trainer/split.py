"""Splitting a canonical dataset in time, per user: the evaluation protocol.

Protocol (the same for every method): per user, interactions sorted by time; the last one is
the test case, the one before it the validation case, the rest train. Users with fewer than
`min_interactions` interactions contribute to train only. A repeated (user, item) pair keeps
its first occurrence, so a test target is never an item the user was already seen with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from whisperlite.core.dataset import Dataset

log = logging.getLogger(__name__)

DEFAULT_MIN_INTERACTIONS = 3


@dataclass
class Split:
    """Train / validation / test in index space. User index u is row u of the user table."""

    user_ids: list[str]  # every user with at least one train interaction
    train: pd.DataFrame  # user (index), item, timestamp, request
    validation: pd.DataFrame  # one row per eligible user
    test: pd.DataFrame  # one row per eligible user
    history: list[np.ndarray]  # train items of user u, in time order
    min_interactions: int
    item_counts: np.ndarray = field(repr=False, default=None)  # train interactions per item

    def seen_before(self, case: str) -> list[np.ndarray]:
        """Items each user interacted with before a `case` ("validation" or "test") target."""
        seen = [h for h in self.history]
        if case == "test":
            extra = dict(zip(self.validation["user"], self.validation["item"]))
            seen = [np.append(h, extra[u]) if u in extra else h for u, h in enumerate(seen)]
        return seen


def no_test_cases(dataset: Dataset, split: Split) -> str | None:
    """Why the split holds no test case to evaluate on, or None when it holds some."""
    if len(split.test):
        return None
    interactions = dataset.interactions
    distinct = len(interactions.drop_duplicates(["user_id", "item"]))
    repeats = f", of which {len(interactions) - distinct} repeat a (user, item) pair and count once" if distinct < len(interactions) else ""
    return (f"no test cases: no user has {split.min_interactions} or more interactions with distinct items "
            f"({interactions['user_id'].nunique()} users, {len(interactions)} interactions{repeats})")


class NoTestCases(ValueError):
    """A dataset with nothing to evaluate on; `reason` is `no_test_cases`'s."""

    def __init__(self, dataset_name: str, reason: str):
        super().__init__(f"{dataset_name}: {reason}; nothing to evaluate")
        self.reason = reason


def temporal_split(dataset: Dataset, min_interactions: int = DEFAULT_MIN_INTERACTIONS) -> Split:
    if min_interactions < 3:
        raise ValueError(f"min_interactions: must be >= 3 (train, validation and test), got {min_interactions}")
    frame = dataset.interactions.reset_index(names="row")
    # Stable order: time, then the file order for equal timestamps.
    frame = frame.sort_values(["user_id", "timestamp", "row"], kind="stable")
    repeated = frame.duplicated(["user_id", "item"], keep="first")
    if repeated.any():  # a re-bought article: the split counts each (user, item) once, at its first time
        examples = ", ".join(f"user {u!r} item {i!r}" for u, i in frame.loc[repeated, ["user_id", "item_id"]].head(3).itertuples(index=False))
        log.warning("%s: %d interactions repeat a (user, item) pair seen earlier (e.g. %s): each pair counts once, at its "
                    "first time, so a repeat purchase is neither trained on nor held out", dataset.name, int(repeated.sum()), examples)
        frame = frame[~repeated]
    sizes = frame.groupby("user_id", sort=False)["item"].transform("size")
    position_from_end = frame.groupby("user_id", sort=False).cumcount(ascending=False)
    eligible = sizes >= min_interactions
    role = np.where(~eligible, "train", np.where(position_from_end == 0, "test", np.where(position_from_end == 1, "validation", "train")))
    frame["role"] = role

    train = frame[frame["role"] == "train"]
    user_ids = sorted(train["user_id"].unique())
    user_index = pd.Series(np.arange(len(user_ids)), index=user_ids)
    frame["user"] = frame["user_id"].map(user_index).fillna(-1).astype(np.int64)
    columns = ["user", "user_id", "item", "item_id", "timestamp", "request"]
    train = frame.loc[frame["role"] == "train", columns].reset_index(drop=True)
    validation = frame.loc[frame["role"] == "validation", columns].reset_index(drop=True)
    test = frame.loc[frame["role"] == "test", columns].reset_index(drop=True)

    history: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(user_ids)
    for user, items in train.groupby("user", sort=False)["item"]:
        history[int(user)] = items.to_numpy(dtype=np.int64)
    counts = np.bincount(train["item"].to_numpy(), minlength=dataset.n_items)
    return Split(
        user_ids=user_ids,
        train=train,
        validation=validation,
        test=test,
        history=history,
        min_interactions=min_interactions,
        item_counts=counts,
    )
