"""Item text from the training split's requests, for sources without item descriptions.

yelp_phoenix_10k and womens_ecommerce_clothing have no item text (dataset.json says
``"item_text_source": "train_requests"``). What users wrote about an item describes it, but
only the *training* interactions may be used: built from all of them, the held-out test review
would sit inside its own target's text and text search would look far better than it is.
So preparation leaves ``text`` empty and whoever splits the data (trainer, ingest) calls this
with the training rows.
"""

from __future__ import annotations

import pandas as pd

from whisperlite.data.text import truncate_words

# MiniLM reads 256 word pieces, about 190 words; CLIP reads fewer and truncates by itself.
ITEM_TEXT_MAX_WORDS = 160


def items_with_request_text(
    items: pd.DataFrame, train_interactions: pd.DataFrame, max_words: int = ITEM_TEXT_MAX_WORDS
) -> pd.DataFrame:
    """A copy of ``items`` whose empty ``text`` holds the item's training requests, oldest
    first, joined and cut to ``max_words`` words. Items that already have text keep it; items
    without training requests stay empty."""
    written = train_interactions[train_interactions["request"].str.strip() != ""]
    written = written.sort_values(["item_id", "timestamp"], kind="stable")
    joined = written.groupby("item_id", sort=False)["request"].agg(" ".join).map(
        lambda text: truncate_words(text, max_words)
    )
    out = items.copy()
    empty = out["text"].fillna("").str.strip() == ""
    out.loc[empty, "text"] = out.loc[empty, "item_id"].map(joined).fillna("").to_numpy()
    return out
