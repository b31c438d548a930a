"""movielens_latest_small: GroupLens ml-latest-small (ratings, tags, movies).

Interactions are the ratings (a rating means the user watched the movie), plus the
(user, movie) pairs a user tagged without rating (they watched it too), dated by their first
tag. The request is the user's own tags for that movie, oldest first, joined with ", "
("dark comedy, twist ending"); it is empty for the other ratings, which the trainer fills with
the request simulator. Items are all of movies.csv: the title with its year, the genres as
text, and the genres as a "|"-separated multi-valued category ("Adventure|Animation|Comedy").
A user's ratings in the same second (bulk rating) are ordered by movie id and moved one
second apart, so each user's timestamps are strictly increasing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from whisperlite.core.dataset import ITEM_TEXT_METADATA, PreparedDataset
from whisperlite.data.sources.common import strictly_increasing
from whisperlite.core.text import clean_text, user_request

RAW_FILES = ["ratings.csv", "tags.csv", "movies.csv"]
NO_GENRES = "(no genres listed)"


def prepare(raw_dir: Path, progress: bool = True) -> PreparedDataset:
    ids = {"userId": str, "movieId": str}
    ratings = pd.read_csv(raw_dir / "ratings.csv", dtype={**ids, "timestamp": "int64"})
    tags = pd.read_csv(raw_dir / "tags.csv", dtype={**ids, "tag": str, "timestamp": "int64"}, keep_default_na=False)
    movies = pd.read_csv(raw_dir / "movies.csv", dtype=str, keep_default_na=False)

    tags["tag"] = tags["tag"].map(clean_text)
    tags = tags[tags["tag"] != ""].sort_values(["userId", "movieId", "timestamp"], kind="stable")
    requests = (
        tags.drop_duplicates(["userId", "movieId", "tag"])
        .groupby(["userId", "movieId"], sort=False)
        .agg(request=("tag", lambda t: user_request(", ".join(t))), first_tagged=("timestamp", "min"))
        .reset_index()
    )
    pairs = ratings[["userId", "movieId", "timestamp"]].merge(requests, on=["userId", "movieId"], how="outer")
    tagged_only = pairs["timestamp"].isna()
    pairs["timestamp"] = pairs["timestamp"].fillna(pairs["first_tagged"]).astype("int64")
    pairs = pairs.sort_values(["userId", "timestamp", "movieId"], key=_numeric_ids, kind="stable", ignore_index=True)
    interactions = pd.DataFrame(
        {
            "user_id": pairs["userId"],
            "item_id": pairs["movieId"],
            "timestamp": strictly_increasing(pairs["userId"], pairs["timestamp"]),
            "request": pairs["request"].fillna(""),
        }
    )

    genres = movies["genres"].where(movies["genres"] != NO_GENRES, "")
    items = pd.DataFrame(
        {
            "item_id": movies["movieId"],
            "title": movies["title"].map(clean_text),
            "text": genres.str.replace("|", ", ", regex=False),
            "category": genres,
            "image_path": "",
        }
    )
    return PreparedDataset(
        items=items,
        interactions=interactions,
        request_source="user_tags",
        item_text_source=ITEM_TEXT_METADATA,
        timestamp_source="rating time (unix seconds; first tag time for tagged-only pairs); "
        "a user's ratings within one second ordered by movie id and moved one second apart",
        notes=[
            "interactions = ratings of any value, plus tagged-but-unrated (user, movie) pairs",
            "request = the user's distinct tags on that movie, oldest first, joined with ', '; empty otherwise",
            "category = genres, '|'-separated and multi-valued; text = genres joined with ', '",
        ],
        extra={"n_ratings": int(len(ratings)), "n_tagged_only_pairs": int(tagged_only.sum())},
    )


def _numeric_ids(column: pd.Series) -> pd.Series:
    return column.astype("int64") if column.name in ("userId", "movieId") else column
