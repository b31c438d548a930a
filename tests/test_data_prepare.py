"""`whisperlite data prepare` on the real raw files: counts against each SOURCE.md, schema, quirks."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
import zipfile

import pandas as pd
import pytest

from whisperlite.core.dataset import INTERACTION_COLUMNS, ITEM_COLUMNS
from whisperlite.core.item_text import items_with_request_text
from whisperlite.data.sources import CONVERTERS
from whisperlite.core.text import HTML_ENTITY, REQUEST_MAX_WORDS

ALL = sorted(CONVERTERS)


@pytest.mark.parametrize("name", ALL)
def test_schema_and_dataset_json_agree_with_files(prepared, name):
    ds = prepared(name)
    assert list(ds.items.columns) == ITEM_COLUMNS
    assert list(ds.interactions.columns) == INTERACTION_COLUMNS
    assert ds.items["item_id"].is_unique and (ds.items["title"] != "").all()
    assert ds.interactions["item_id"].isin(ds.items["item_id"]).all()
    assert ds.interactions["timestamp"].dtype == "int64"
    info = ds.info
    assert info["name"] == info["source"] == name
    assert info["n_items"] == len(ds.items)
    assert info["n_users"] == ds.interactions["user_id"].nunique()
    assert info["n_interactions"] == len(ds.interactions)
    with_request = int((ds.interactions["request"] != "").sum())
    assert info["n_interactions_with_request"] == with_request
    assert info["has_requests"] == (with_request > 0)
    assert set(info["raw_sha256"]) == set(CONVERTERS[name].RAW_FILES)


@pytest.mark.parametrize("name", ALL)
def test_each_users_timestamps_strictly_increase_in_file_order(prepared, name):
    inter = prepared(name).interactions
    assert inter["user_id"].is_monotonic_increasing
    steps = inter.groupby("user_id", sort=False)["timestamp"].diff().dropna()
    assert (steps > 0).all()


@pytest.mark.parametrize("name", ALL)
def test_no_html_entities_and_requests_within_word_limit(prepared, name):
    ds = prepared(name)
    for column in (ds.items["title"], ds.items["text"], ds.interactions["request"]):
        assert not column.str.contains(HTML_ENTITY).any(), column[column.str.contains(HTML_ENTITY)].head().tolist()
    assert ds.interactions["request"].str.split().str.len().fillna(0).max() <= REQUEST_MAX_WORDS


def test_amazon_clothing_counts_match_source_md(prepared, datasets_dir):
    ds = prepared("amazon_clothing_2014_msl")
    inter = ds.interactions
    assert ds.info["n_users"] == 35_078
    assert ds.info["n_items"] == 22_948
    assert inter[["user_id", "item_id"]].drop_duplicates().shape[0] == 248_985 == len(inter)
    per_user = inter.groupby("user_id").size()
    assert per_user.min() >= 5 and per_user.median() == 6 and per_user.max() == 136
    assert (per_user >= 10).sum() == 4_732
    # The escaped raw titles are unescaped ("&amp;" -> "&").
    raw = json.loads((datasets_dir / "amazon_clothing_2014_msl/raw/id2name4Rec.json").read_text())
    assert "&amp;" in raw["9"]
    assert ds.items.set_index("item_id").at["9", "title"] == "Suunto Vector Wristop Computer with Compass, Altimeter & Barometer"


def test_amazon_clothing_sequence_follows_the_windows(prepared, datasets_dir):
    """User 8101's eight train windows and one test window chain into one 19-item sequence,
    whose last item is the test target, dated on the test window's day."""
    raw = datasets_dir / "amazon_clothing_2014_msl/raw"
    windows = pd.concat([pd.read_csv(raw / f) for f in ("train.csv", "test.csv")])
    windows = windows[windows["user_id"] == 8101]
    first = json.loads(windows["item_ids"].iloc[0])
    targets = [json.loads(w)[-1] for w in windows["item_ids"]]
    inter = prepared("amazon_clothing_2014_msl").interactions
    user = inter[inter["user_id"] == "8101"]
    assert user["item_id"].tolist() == [str(i) for i in first + targets[1:]]
    assert user["timestamp"].iloc[-1] == windows["timestamp"].iloc[-1]
    # Every window target keeps its own date (day precision).
    days = dict(zip(user["item_id"], user["timestamp"] // 86_400 * 86_400))
    for ids, ts in zip(windows["item_ids"], windows["timestamp"]):
        assert days[str(json.loads(ids)[-1])] == ts


def test_yelp_counts_and_requests(prepared):
    ds = prepared("yelp_phoenix_10k")
    assert ds.info["n_interactions"] == 10_000
    assert ds.info["n_users"] == 6_403
    assert ds.info["n_items"] == 4_174
    assert ds.info["n_interactions_with_request"] == 10_000
    assert (ds.interactions.groupby("user_id").size() >= 5).sum() == 267
    assert ds.info["item_text_source"] == "train_requests" and (ds.items["text"] == "").all()


def test_item_text_uses_training_requests_only(prepared):
    """Held-out reviews never reach an item's text; training reviews do."""
    ds = prepared("yelp_phoenix_10k")
    inter = ds.interactions
    last = inter.groupby("user_id").tail(1)
    held_out = last[inter.groupby("user_id")["user_id"].transform("size").loc[last.index] >= 2]
    train = inter.drop(held_out.index)
    items = items_with_request_text(ds.items, train).set_index("item_id")
    train_text = " ".join(train["request"])
    leaked = [r for r, i in zip(held_out["request"], held_out["item_id"]) if r in items.at[i, "text"] and r not in train_text]
    assert not leaked
    assert (items["text"] != "").sum() == train["item_id"].nunique()
    oldest = train.sort_values("timestamp", kind="stable").drop_duplicates("item_id").iloc[0]
    assert items.at[oldest["item_id"], "text"].startswith(oldest["request"][:40])


def test_movielens_counts_tags_as_requests(prepared, datasets_dir):
    ds = prepared("movielens_latest_small")
    inter = ds.interactions
    assert ds.info["n_users"] == 610
    assert ds.info["n_items"] == 9_742
    raw = datasets_dir / "movielens_latest_small/raw"
    tags = pd.read_csv(raw / "tags.csv")
    tag_pairs = tags[["userId", "movieId"]].drop_duplicates()
    assert len(tag_pairs) == 1_775
    ratings = pd.read_csv(raw / "ratings.csv")
    assert len(ratings) == 100_836
    rated_and_tagged = tag_pairs.merge(ratings[["userId", "movieId"]]).shape[0]
    assert rated_and_tagged == 1_635
    assert len(inter) == 100_836 + (1_775 - 1_635)
    assert ds.info["n_interactions_with_request"] == 1_775
    assert inter.loc[inter["request"] != "", "user_id"].nunique() == 58
    # User 2's tags on movie 60756, oldest first.
    request = inter.loc[(inter["user_id"] == "2") & (inter["item_id"] == "60756"), "request"].item()
    assert request == "will ferrell, funny, Highly quotable"
    toy_story = ds.items.set_index("item_id").loc["1"]
    assert toy_story["title"] == "Toy Story (1995)"
    assert toy_story["category"] == "Adventure|Animation|Children|Comedy|Fantasy"


def test_womens_clothing_anonymous_users_and_requests(prepared, datasets_dir):
    ds = prepared("womens_ecommerce_clothing")
    archive = zipfile.ZipFile(datasets_dir / "womens_ecommerce_clothing/raw/Womens Clothing E-Commerce Reviews.csv.zip")
    rows = list(csv.DictReader(io.TextIOWrapper(archive.open("Womens Clothing E-Commerce Reviews.csv"), "utf-8")))
    assert len(rows) == 23_486
    without_text = sum(not (r["Title"].strip() or r["Review Text"].strip()) for r in rows)
    assert ds.info["n_interactions"] == ds.info["n_users"] == 23_486
    assert ds.info["n_items"] == 1_206
    assert ds.info["n_interactions_with_request"] == 23_486 - without_text
    assert ds.interactions["request"].iloc[1].startswith("Love this dress!")
    assert set(ds.items["category"].str.split("/").str[0]) >= {"Tops", "Dresses", "Bottoms", "Intimate", "Jackets", "Trend"}


def test_amazon_fashion_collapses_variant_duplicates(prepared, datasets_dir):
    ds = prepared("amazon_fashion_5core_2018")
    with gzip.open(datasets_dir / "amazon_fashion_5core_2018/raw/AMAZON_FASHION_5.json.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 3_176
    assert ds.info["n_distinct_reviews"] == 448
    assert ds.info["n_users"] == 406
    assert ds.info["n_items"] < 31  # variant ASINs merged into products
    assert len(ds.interactions) <= 448 and not ds.interactions[["user_id", "item_id"]].duplicated().any()
    # The group of variants that shares most reviews is one product now.
    asins_of_one_review: dict[tuple, set] = {}
    for r in rows:
        key = (r["reviewerID"], r.get("reviewText"), r.get("summary"), r["unixReviewTime"])
        asins_of_one_review.setdefault(key, set()).add(r["asin"])
    widest = max(asins_of_one_review.values(), key=len)
    assert len(widest) >= 8
    assert min(widest) in set(ds.items["item_id"]) and not (set(widest) - {min(widest)}) & set(ds.items["item_id"])


def test_cli_prepares_into_out_and_reports_bad_input(tmp_path, datasets_dir):
    cli = [sys.executable, "-m", "whisperlite.data.cli", "data", "prepare", "--quiet"]
    raw = datasets_dir / "amazon_fashion_5core_2018" / "raw"
    ok = subprocess.run(
        cli + ["--source", "amazon_fashion_5core_2018", "--raw", str(raw), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.splitlines()[0])["n_users"] == 406
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"items.csv", "interactions.csv", "dataset.json"}

    missing = subprocess.run(
        cli + ["--source", "yelp_phoenix_10k", "--raw", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")],
        capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 2 and "yelp.csv.zip not found" in missing.stderr
    assert not (tmp_path / "y").exists()

    unknown = subprocess.run(cli + ["--source", "nope", "--out", str(tmp_path / "n")], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr


def test_preparing_twice_gives_identical_files(prepared, tmp_path, datasets_dir):
    from whisperlite.data.prepare import prepare_dataset

    first = prepared("movielens_latest_small").info
    second = prepare_dataset("movielens_latest_small", tmp_path, raw_dir=datasets_dir / "movielens_latest_small/raw", progress=False)
    assert second["files_sha256"] == first["files_sha256"]
