"""The request simulator on real catalogs: seeded, brand/size free, ambiguous on purpose."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from whisperlite.data.requests import (
    SIZE_WORDS,
    RequestParts,
    TitleVocabulary,
    ambiguity,
    fill_missing_requests,
    request_parts,
    simulate_request,
    tokenize,
)
from whisperlite.core.text import clean_text, truncate_words, user_request

INVICTA = "Invicta Men's 8926 Pro Diver Collection Automatic Watch"
# Brands that open many amazon_clothing_2014_msl titles (checked in the catalog below).
BRANDS = ["invicta", "skechers", "clarks", "hanes", "crocs", "dickies", "carhartt", "asics", "casio", "columbia",
          "levi's", "timex", "merrell", "calvin", "klein", "adidas", "nike", "puma", "reebok", "timberland", "armour"]


@pytest.fixture(scope="module")
def amazon(prepared):
    return prepared("amazon_clothing_2014_msl")


@pytest.fixture(scope="module")
def amazon_vocabulary(amazon):
    return TitleVocabulary.from_titles(amazon.items["title"])


@pytest.fixture(scope="module")
def amazon_filled(amazon, amazon_vocabulary):
    """Requests for a 40,000-row slice (every item's first rows included via sampling of users)."""
    inter = amazon.interactions
    users = inter["user_id"].drop_duplicates().sample(6_000, random_state=0)
    rows = inter[inter["user_id"].isin(users)]
    return fill_missing_requests(rows, amazon.items, seed=7, vocabulary=amazon_vocabulary, progress=False)


def test_invicta_watch_becomes_an_ambiguous_watch_request(amazon_vocabulary):
    parts = request_parts(INVICTA, "", amazon_vocabulary)
    assert parts.product_type == "watch"
    assert {"men's", "automatic"} <= set(parts.attributes)
    assert not {"invicta", "8926", "collection"} & set(parts.attributes)
    rng = random.Random(0)
    requests = {simulate_request(INVICTA, "", rng, amazon_vocabulary) for _ in range(200)}
    assert "men's automatic watch" in requests and "watch" in requests
    assert all(r.endswith("watch") and 1 <= len(r.split()) <= 3 for r in requests)


def test_without_vocabulary_the_opening_word_is_the_brand():
    rng = np.random.default_rng(0)
    requests = {simulate_request(INVICTA, "", rng) for _ in range(100)}
    assert all(r.endswith("watch") for r in requests)
    assert not any({"invicta", "8926", "collection"} & set(r.split()) for r in requests)


def test_brand_product_line_and_size_words_are_left_out(amazon, amazon_vocabulary, amazon_filled):
    titles = amazon.items["title"].str.lower()
    for brand in BRANDS:  # the list really names frequent title openers of this catalog
        assert titles.str.startswith(brand).sum() >= 20 or brand in {"klein", "armour"}, brand
    words = pd.Series([w for r in amazon_filled["request"] for w in r.split()])
    assert not words.isin(BRANDS).any(), words[words.isin(BRANDS)].unique()
    assert not words.isin(SIZE_WORDS).any(), words[words.isin(SIZE_WORDS)].unique()
    assert not words.str.contains(r"\d").any(), words[words.str.contains(r"\d")].unique()
    # Product-line names stay out: "Chuck Taylor" only appears with Converse.
    parts = request_parts("Converse Unisex Chuck Taylor All Star Hi Top Black Monochrome Sneaker", "", amazon_vocabulary)
    assert parts.product_type == "sneaker"
    assert not {"converse", "chuck", "taylor"} & set(parts.attributes)
    parts = request_parts("Nine West Women's Relaxinn Peep-Toe Pump", "", amazon_vocabulary)
    assert (parts.product_type, parts.attributes) == ("pump", ("women's", "peep-toe"))


def test_fill_is_seeded_per_pair_independent_of_row_order(amazon, amazon_vocabulary, amazon_filled):
    rows = amazon_filled.drop(columns=["request_simulated"]).assign(request="")
    shuffled = rows.sample(frac=1.0, random_state=1).head(5_000)
    again = fill_missing_requests(shuffled, amazon.items, seed=7, vocabulary=amazon_vocabulary, progress=False)
    expected = amazon_filled.loc[again.index, "request"]
    assert again["request"].equals(expected)
    other_seed = fill_missing_requests(shuffled, amazon.items, seed=8, vocabulary=amazon_vocabulary, progress=False)
    assert (other_seed["request"] != again["request"]).mean() > 0.3
    assert amazon_filled["request_simulated"].all()
    lengths = amazon_filled["request"].str.split().str.len()
    assert set(lengths.unique()) <= {1, 2, 3, 4}  # a two-word type ("flip flop") plus two attributes
    assert lengths.value_counts(normalize=True).loc[[1, 2, 3]].min() > 0.2  # 0, 1 and 2 attributes all drawn


def test_user_written_requests_are_kept(prepared):
    movies = prepared("movielens_latest_small")
    filled = fill_missing_requests(movies.interactions, movies.items, seed=0, progress=False)
    tagged = movies.interactions["request"] != ""
    assert filled.loc[tagged, "request"].equals(movies.interactions.loc[tagged, "request"])
    assert not filled.loc[tagged, "request_simulated"].any()
    assert (filled["request"] != "").all() and filled.loc[~tagged, "request_simulated"].all()
    # Movies: genres and decade only, never title words.
    toy_story = filled[(filled["item_id"] == "1") & ~tagged]["request"]
    allowed = {"adventure", "animation", "children", "comedy", "fantasy", "1990s"}
    assert all(set(r.split()) <= allowed for r in toy_story)


@pytest.mark.parametrize(
    "name, minimum_median",
    [("amazon_clothing_2014_msl", 10), ("movielens_latest_small", 50)],
)
def test_requests_are_ambiguous(prepared, name, minimum_median):
    """Most simulated requests match many catalog items (every request word in the item's
    title or category), so the text alone cannot tell the target apart."""
    ds = prepared(name)
    sample = ds.interactions.sample(3_000, random_state=0).assign(request="")
    filled = fill_missing_requests(sample, ds.items, seed=0, progress=False)
    stats = ambiguity(filled["request"].tolist(), ds.items)
    assert stats["median_matching_items"] >= minimum_median, stats
    assert stats["share_matching_one_item"] < 0.25, stats


def test_every_simulated_request_matches_its_own_item(amazon, amazon_filled):
    titles = amazon.items.set_index("item_id")["title"]
    for request, item in zip(amazon_filled["request"].head(2_000), amazon_filled["item_id"].head(2_000)):
        # "item" is the last resort for a title with no word at all ("50-PieceLampwork...").
        assert set(request.split()) - {"item"} <= set(tokenize(titles[item])), (request, titles[item])


def test_category_path_leaf_is_the_product_type():
    parts = request_parts("Lace Trim Knit Top", "Tops/Knits")
    assert parts.product_type == "knits" and set(parts.attributes) <= {"trim", "knit", "top"}
    assert request_parts("Anything", "Women > Shoes > Boots").product_type == "boots"


def test_text_helpers():
    assert clean_text("5&amp;amp;amp;#39;8&quot;  tall\n") == "5'8\" tall"
    long = "One two three. " * 30
    cut = truncate_words(long, 10)
    assert cut == "One two three. One two three. One two three." and len(cut.split()) <= 10
    assert truncate_words("word " * 80, 50) == " ".join(["word"] * 50)
    assert user_request("Great coat", "Warm and light.") == "Great coat. Warm and light."
    assert user_request("", None) == ""


def test_requests_command_prints_examples_and_ambiguity(prepared):
    movies = prepared("movielens_latest_small")
    cli = [sys.executable, "-m", "whisperlite.data.cli", "data", "requests", "--quiet"]
    run = subprocess.run(
        cli + ["--data", str(movies.directory), "--sample", "300", "--examples", "3"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 4 and all(" -> " in line for line in lines[:3])
    stats = json.loads(lines[3])
    assert stats["n_requests"] == 300 and stats["median_matching_items"] > 10
    missing = subprocess.run(cli + ["--data", str(movies.directory / "nope")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "error: data:" in missing.stderr


def test_requests_command_skips_interactions_naming_unknown_items(tmp_path):
    """As train does; it raised KeyError on the first unknown id."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "items.csv").write_text("item_id,title\nd1,Red summer dress\nb1,Black leather boots\n")
    (data / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,d1,1\nu1,ghost,2\nu2,b1,3\n")
    run = subprocess.run([sys.executable, "-m", "whisperlite.data.cli", "data", "requests", "--quiet", "--data", str(data)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert json.loads(run.stdout.splitlines()[-1])["n_requests"] == 2


def test_words_of_any_script_stay_whole():
    """The pattern was ASCII-only: "Jupe plissée crème" was asked for as "me", a Chinese title as "item"."""
    assert tokenize("Jupe plissée crème") == ["jupe", "plissée", "crème"]
    assert tokenize("連衣裙 夏") == ["連衣裙", "夏"]
    assert tokenize("Men's T-Shirt") == ["men's", "t-shirt"]  # ASCII titles read as before
    assert request_parts("Jupe plissée crème", "Femme > Jupes") == RequestParts("jupes", ("plissée", "crème"))  # first word: the brand


def test_items_with_text_but_no_title_are_asked_for_by_their_text(caplog):
    items = pd.DataFrame({
        "item_id": ["a", "b", "c"],
        "title": ["", "", ""],
        "text": ["Floral midi dress in light cotton. Machine wash.", "Leather ankle boots with a block heel.", "XJ-200 / 44"],
    })
    interactions = pd.DataFrame({"user_id": ["u", "u", "v"], "item_id": ["a", "b", "c"], "request": ["", "", ""]})
    with caplog.at_level("WARNING"):
        filled = fill_missing_requests(interactions, items, progress=False)
    assert filled["request"].iloc[0].split()[-1] == "dress"
    assert filled["request"].iloc[1].split()[-1] == "boots"
    assert filled["request"].iloc[2] == "item"  # nothing to ask for: said so
    assert "1 of 3 items requested have no product word" in caplog.text and "'c'" in caplog.text


def test_facets_that_are_paths_give_their_leaves():
    assert request_parts("Jersey top", "Ladieswear > Tops|Jersey Basic").type_choices == ("tops", "jersey basic")
    assert request_parts("Toy Story (1995)", "Adventure|Animation|Sci-Fi").type_choices == ("adventure", "animation", "sci-fi")
