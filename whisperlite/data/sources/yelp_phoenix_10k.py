"""yelp_phoenix_10k: 10,000 Yelp reviews (2013 Phoenix challenge sample), ``yelp.csv.zip``.

Interactions are the reviews (user, business, review date); the request is the review text,
cut to whole sentences within the request word limit. The file has no business metadata, so
items.csv carries the business id as title and no text: item text must come from the
businesses' *training* reviews (``whisperlite.core.item_text.items_with_request_text`` on the
training split), never from all reviews, or the held-out test review would describe its own
target. Reviews of one user on one day (rare) are ordered by review id, one second apart.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from whisperlite.core.dataset import ITEM_TEXT_TRAIN_REQUESTS, PreparedDataset
from whisperlite.data.sources.common import day_seconds, placeholder_items, strictly_increasing
from whisperlite.core.text import user_request

RAW_FILES = ["yelp.csv.zip"]


def prepare(raw_dir: Path, progress: bool = True) -> PreparedDataset:
    reviews = pd.read_csv(raw_dir / "yelp.csv.zip", dtype=str, keep_default_na=False)
    reviews = reviews.sort_values(["user_id", "date", "review_id"], kind="stable", ignore_index=True)
    interactions = pd.DataFrame(
        {
            "user_id": reviews["user_id"],
            "item_id": reviews["business_id"],
            "timestamp": strictly_increasing(reviews["user_id"], day_seconds(reviews["date"])),
            "request": [user_request(t) for t in reviews["text"]],
        }
    )
    return PreparedDataset(
        items=placeholder_items(interactions["item_id"], "Yelp business"),
        interactions=interactions,
        request_source="user_review",
        item_text_source=ITEM_TEXT_TRAIN_REQUESTS,
        timestamp_source="review date (UTC midnight); a user's same-day reviews ordered by review id, one second apart",
        notes=[
            "every review is an interaction, whatever its stars (a review means the user went there)",
            "request = review text, whitespace collapsed, cut to whole sentences within the word limit",
            "no business metadata: title is a placeholder with the business id, text is empty; "
            "build item text from training-split reviews only (items_with_request_text)",
        ],
        extra={"n_reviews": int(len(reviews))},
    )
