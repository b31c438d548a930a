"""womens_ecommerce_clothing: Kaggle "Women's E-Commerce Clothing Reviews" (one CSV in a zip,
beside a ``__MACOSX`` stub that is ignored).

The reviews are anonymous, so each review is its own user ("review-<row>"): the dataset
checks the non-personal request -> item path, never personalisation. The request is the
review title and text. Items have no title or description, only Division/Department/Class:
title = the class name (e.g. "Knits"), category = "Department/Class" (the one item listed
under two classes takes its most frequent one), text empty (build it from training-split
reviews). There is no time: the timestamp is the row number, which keeps the file order.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd

from whisperlite.core.dataset import ITEM_TEXT_TRAIN_REQUESTS, PreparedDataset
from whisperlite.core.text import clean_text, user_request

RAW_FILES = ["Womens Clothing E-Commerce Reviews.csv.zip"]
MEMBER = "Womens Clothing E-Commerce Reviews.csv"


def prepare(raw_dir: Path, progress: bool = True) -> PreparedDataset:
    with zipfile.ZipFile(raw_dir / RAW_FILES[0]) as archive, archive.open(MEMBER) as f:
        reviews = pd.read_csv(f, dtype=str, keep_default_na=False)
    reviews = reviews.rename(columns={reviews.columns[0]: "row"})
    for column in ("Title", "Review Text", "Department Name", "Class Name"):
        reviews[column] = reviews[column].map(clean_text)
    interactions = pd.DataFrame(
        {
            "user_id": "review-" + reviews["row"],
            "item_id": reviews["Clothing ID"],
            "timestamp": reviews["row"].astype("int64"),
            "request": [user_request(t, r) for t, r in zip(reviews["Title"], reviews["Review Text"])],
        }
    )

    classes = reviews.assign(
        category=_category(reviews["Department Name"], reviews["Class Name"]), title=reviews["Class Name"]
    )
    # The most frequent (category, title) per item; ties go to the earlier row.
    counted = (
        classes.groupby(["Clothing ID", "category", "title"], sort=False).size().rename("n").reset_index()
    )
    counted = counted.sort_values(["Clothing ID", "n"], ascending=[True, False], kind="stable")
    items = counted.drop_duplicates("Clothing ID").rename(columns={"Clothing ID": "item_id"})
    items = items.sort_values("item_id", key=lambda s: s.astype("int64"), ignore_index=True)
    items = pd.DataFrame(
        {
            "item_id": items["item_id"],
            "title": items["title"].where(items["title"] != "", "Clothing item " + items["item_id"]),
            "text": "",
            "category": items["category"],
            "image_path": "",
        }
    )
    return PreparedDataset(
        items=items,
        interactions=interactions,
        request_source="user_review",
        item_text_source=ITEM_TEXT_TRAIN_REQUESTS,
        timestamp_source="none in the source: the row number (keeps file order)",
        notes=[
            "no user id: every review is its own anonymous user; not usable to test personalisation",
            "request = review title + review text, cut to whole sentences within the word limit; "
            "empty when the review has neither",
            "items: title = Class Name, category = Department/Class (most frequent per item), no text",
        ],
        extra={"n_reviews": int(len(reviews))},
    )


def _category(department: pd.Series, class_name: pd.Series) -> pd.Series:
    both = department + "/" + class_name
    return both.where((department != "") & (class_name != ""), department + class_name)
