"""amazon_fashion_5core_2018: Amazon 2018 "AMAZON_FASHION" 5-core reviews (JSON lines, gzip).

Amazon lists one review under every colour/size variant ASIN of a product, so the 3,176 rows
hold only 448 distinct reviews (same reviewer, text, summary and time). Variant ASINs are
merged into one product: ASINs that share any review are joined (connected components), and
the product's id is its smallest ASIN. Each distinct review is then one interaction with
that product; a user's several reviews of one product keep the first. The request is the
review summary and text. There is no item metadata: the title is a placeholder with the
product id, the text lists the variant colours/styles seen in reviews (metadata, not review
text).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from whisperlite.core.dataset import ITEM_TEXT_METADATA, PreparedDataset
from whisperlite.data.sources.common import strictly_increasing
from whisperlite.core.text import clean_text, user_request

RAW_FILES = ["AMAZON_FASHION_5.json.gz"]
REVIEW_KEY = ["reviewerID", "reviewText", "summary", "unixReviewTime"]


def _variant_groups(reviews: pd.DataFrame) -> dict[str, str]:
    """Map each ASIN to its product: the smallest ASIN of its connected component, where two
    ASINs are connected when the same review is listed under both."""
    parent = {asin: asin for asin in reviews["asin"]}

    def find(asin: str) -> str:
        while parent[asin] != asin:
            parent[asin] = parent[parent[asin]]
            asin = parent[asin]
        return asin

    for asins in reviews.groupby(REVIEW_KEY, sort=False)["asin"]:
        first, *rest = asins[1].tolist()
        for other in rest:
            a, b = find(first), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {asin: find(asin) for asin in parent}


def _styles(values: pd.Series, max_values: int = 12) -> str:
    """"Color: Black, Navy" from the reviews' style dicts: the non-size keys, each with its
    most reviewed values first (sizes say nothing about what the product is)."""
    counts: dict[str, Counter[str]] = {}
    for style in values:
        if isinstance(style, dict):
            for key, value in style.items():
                key = clean_text(key).rstrip(":")
                if "size" not in key.lower():
                    counts.setdefault(key, Counter())[clean_text(value)] += 1
    return ". ".join(
        f"{key}: {', '.join(v for v, _ in counter.most_common(max_values))}" for key, counter in sorted(counts.items())
    )


def prepare(raw_dir: Path, progress: bool = True) -> PreparedDataset:
    reviews = pd.read_json(raw_dir / RAW_FILES[0], lines=True, dtype={"asin": str, "reviewerID": str})
    for column in ("reviewText", "summary"):
        reviews[column] = reviews[column].map(clean_text)
    product_of = _variant_groups(reviews)
    reviews["item_id"] = reviews["asin"].map(product_of)

    distinct = reviews.drop_duplicates(REVIEW_KEY)
    first = distinct.sort_values(["reviewerID", "unixReviewTime", "item_id"], kind="stable")
    first = first.drop_duplicates(["reviewerID", "item_id"]).reset_index(drop=True)
    interactions = pd.DataFrame(
        {
            "user_id": first["reviewerID"],
            "item_id": first["item_id"],
            "timestamp": strictly_increasing(first["reviewerID"], first["unixReviewTime"].astype("int64")),
            "request": [user_request(s, t) for s, t in zip(first["summary"], first["reviewText"])],
        }
    )

    products = reviews.groupby("item_id", sort=True)
    items = pd.DataFrame(
        {
            "item_id": list(products.groups),
            "title": ["Amazon fashion product " + p for p in products.groups],
            "text": [_styles(g["style"]) for _, g in products],
            "category": "",
            "image_path": "",
        }
    )
    return PreparedDataset(
        items=items,
        interactions=interactions,
        request_source="user_review",
        item_text_source=ITEM_TEXT_METADATA,
        timestamp_source="review time (unix seconds, day precision); a user's same-day reviews one second apart",
        notes=[
            "variant ASINs that share a review merged into one product (id = smallest ASIN)",
            "a review listed under several variants counted once; a user's repeat reviews of a product keep the first",
            "request = review summary + review text, cut to whole sentences within the word limit",
            "no item metadata: title is a placeholder, text lists the variant styles; too few users "
            "with several reviews for personalisation: a format and smoke test only",
        ],
        extra={
            "n_rows": int(len(reviews)),
            "n_distinct_reviews": int(len(distinct)),
            "n_asins": int(reviews["asin"].nunique()),
        },
    )
