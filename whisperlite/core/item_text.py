"""The one home of item text: the string an item is embedded from, by the catalog, the trainer and ingest.

An item is embedded from ``item_text(title, text)``. Sources without item descriptions (yelp_phoenix_10k,
womens_ecommerce_clothing: dataset.json says ``"item_text_source": "train_requests"``) describe an item
by what users wrote about it, but only the *training* interactions may be used: built from all of them,
the held-out test review would sit inside its own target's text and text search would look far better
than it is. So preparation leaves ``text`` empty and whoever splits the data calls
``items_with_request_text`` with the training rows.

Pure string and DataFrame-method code: importing it loads neither torch nor pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from whisperlite.core.text import truncate_words

if TYPE_CHECKING:
    import pandas as pd

# MiniLM reads 256 word pieces, about 190 words; CLIP reads fewer and truncates by itself.
ITEM_TEXT_MAX_WORDS = 160


def item_text(title: str, text: str | None = None, max_chars: int = 0) -> str:
    """The string an item is embedded from; `max_chars` > 0 keeps only its leading part (an encoder
    refuses longer input rather than cutting it; the stored text stays whole)."""
    title = (title or "").strip()
    text = (text or "").strip()
    joined = f"{title}. {text}" if title and text else title or text
    return joined[:max_chars] if max_chars > 0 else joined


def _requests_text(requests: list[str], max_words: int) -> str:
    return truncate_words(" ".join(requests), max_words)


def items_with_request_text(
    items: pd.DataFrame, train_interactions: pd.DataFrame, max_words: int = ITEM_TEXT_MAX_WORDS
) -> pd.DataFrame:
    """A copy of ``items`` whose empty ``text`` holds the item's training requests, oldest
    first, joined and cut to ``max_words`` words. Items that already have text keep it; items
    without training requests stay empty."""
    written = train_interactions[train_interactions["request"].str.strip() != ""]
    written = written.sort_values(["item_id", "timestamp"], kind="stable")
    joined = written.groupby("item_id", sort=False)["request"].agg(list).map(lambda requests: _requests_text(requests, max_words))
    out = items.copy()
    empty = out["text"].fillna("").str.strip() == ""
    out.loc[empty, "text"] = out.loc[empty, "item_id"].map(joined).fillna("").to_numpy()
    return out


def leave_one_out_item_texts(items: pd.DataFrame, train: pd.DataFrame, max_words: int = ITEM_TEXT_MAX_WORDS) -> list[str]:
    """For each train row, its target's `item_text` built from the item's *other* training
    requests, exactly as `items_with_request_text` builds it from all of them."""
    titles = items.set_index("item_id")["title"]
    own_text = items.set_index("item_id")["text"].fillna("")
    written = train[train["request"].str.strip() != ""].sort_values(["item_id", "timestamp"], kind="stable")
    by_item = {item_id: list(zip(rows.index, rows["request"])) for item_id, rows in written.groupby("item_id", sort=False)}
    texts = []
    for row, item_id in zip(train.index, train["item_id"]):
        text = own_text[item_id]
        if not text.strip():
            text = _requests_text([request for i, request in by_item.get(item_id, []) if i != row], max_words)
        texts.append(item_text(titles[item_id], text))
    return texts
