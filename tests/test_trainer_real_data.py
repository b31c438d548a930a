"""`whisperlite train` / `evaluate` on small subsets of real prepared data with the real MiniLM encoder."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.servers import REPO
from whisperlite.trainer.split import temporal_split
from whisperlite.trainer.embeddings import EmbeddingCache
from whisperlite.trainer.experiment import prepare_experiment
from whisperlite.core.item_text import item_text
from whisperlite.core.personalization import PersonalizationModel


def _subset(prepared, name: str, n_users: int, directory, min_interactions: int = 3):
    """`n_users` users (a seeded sample of those with min_interactions..10 interactions) and the
    items they touched: small enough to embed in seconds."""
    data = prepared(name)
    counts = data.interactions["user_id"].value_counts()
    eligible = counts[(counts >= min_interactions) & (counts <= 10)].index.sort_values()
    users = pd.Series(eligible).sample(n=n_users, random_state=0)
    interactions = data.interactions[data.interactions["user_id"].isin(users)]
    items = data.items[data.items["item_id"].isin(interactions["item_id"])]
    items.to_csv(directory / "items.csv", index=False)
    interactions.to_csv(directory / "interactions.csv", index=False)
    (directory / "dataset.json").write_text(json.dumps({**data.info, "name": f"{name}_subset"}))
    return directory


@pytest.fixture(scope="module")
def amazon(prepared, tmp_path_factory):
    return _subset(prepared, "amazon_clothing_2014_msl", 60, tmp_path_factory.mktemp("amazon-subset"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("embedding-cache")


class CountingEncoder:
    """The real encoder, counting the texts it is asked to embed."""

    def __init__(self, encoder):
        self._encoder = encoder
        self.embedded = 0

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode_texts(self, texts, **kwargs):
        self.embedded += len(texts)
        return self._encoder.encode_texts(texts, **kwargs)


def test_embeddings_are_cached_by_encoder_and_data(amazon, cache_dir):
    encoder = CountingEncoder(EmbeddingCache(cache_dir=cache_dir).encoder)
    first = prepare_experiment(amazon, EmbeddingCache(cache_dir=cache_dir, encoder=encoder))
    assert encoder.embedded > 0
    embedded = encoder.embedded
    again = prepare_experiment(amazon, EmbeddingCache(cache_dir=cache_dir, encoder=encoder))
    assert encoder.embedded == embedded  # second run: no encoder call at all
    np.testing.assert_array_equal(first.item_vectors, again.item_vectors)
    # Item vectors are the catalog's: the encoder on item_text(title, text).
    row = first.dataset.items.iloc[0]
    direct = encoder.encode_texts([item_text(row["title"], row["text"])])[0]
    np.testing.assert_allclose(first.item_vectors[0], direct, atol=1e-5)
    files = sorted(p.name for p in cache_dir.rglob("*.npy"))
    assert any(f.startswith("items-") for f in files) and any(f.startswith("requests-") for f in files)
    assert all("all-MiniLM-L6-v2" in str(p.parent) for p in cache_dir.rglob("*.npy"))


def test_requests_are_simulated_where_the_data_has_none(amazon, cache_dir):
    experiment = prepare_experiment(amazon, EmbeddingCache(cache_dir=cache_dir))
    assert experiment.simulated_share == 1.0
    requests = experiment.split.test["request"]
    assert (requests.str.len() > 0).all()
    # Ambiguous on purpose: short requests, not the item's title.
    titles = experiment.dataset.items.set_index("item_id")["title"]
    assert requests.str.split().str.len().median() <= 4
    assert (requests.to_numpy() != titles.loc[experiment.split.test["item_id"]].to_numpy()).all()


def test_train_writes_a_versioned_model_directory_the_ranker_can_load(amazon, cache_dir, tmp_path):
    models = tmp_path / "models"
    subprocess.run(
        [sys.executable, "-m", "whisperlite.trainer", "train", "--data", str(amazon), "--out", str(models), "--max-epochs", "2",
         "--cache-dir", str(cache_dir), "--user-table", "learned", "--quiet"],
        cwd=REPO, check=True, timeout=600,
    )
    (version_dir,) = list(models.iterdir())
    manifest = json.loads((version_dir / "manifest.json").read_text())
    assert manifest["name"] == "amazon_clothing_2014_msl_subset"
    assert version_dir.name == manifest["version"] and manifest["version"].startswith("amazon_clothing_2014_msl_subset-")
    assert manifest["encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert len(manifest["data_hash"]) == 16 and manifest["created"]
    assert set(manifest["metrics"]["validation"]) == {"recall@10", "recall@50", "ndcg@10", "mrr"}
    assert manifest["config"]["train"]["max_epochs"] == 2 and manifest["config"]["train"]["seed"] == 0
    assert len(manifest["history"]) in (1, 2)
    sequence = manifest["metrics"]["sequence"]  # --sequence auto: SASRec trained, its text weight chosen on validation
    assert sequence["shipped"] == ("sequence" in manifest) == (sequence["text_weight"] < 1.0)
    assert (version_dir / "curves.png").stat().st_size > 10_000
    model = PersonalizationModel.load(models)
    users = pd.read_csv(amazon / "interactions.csv", dtype=str)["user_id"].unique()
    assert all(model.knows_user(u) for u in users)
    assert model.n_users == len(users)


@pytest.fixture(scope="module")
def one_interaction_each(prepared, tmp_path_factory):
    """80 users with one interaction each (as anonymous reviews are): nothing to hold out, choose or stop on."""
    data = prepared("amazon_clothing_2014_msl")
    single = data.interactions.sort_values("timestamp", kind="stable").groupby("user_id").head(1).iloc[:80]
    directory = tmp_path_factory.mktemp("one-interaction-each")
    data.items[data.items["item_id"].isin(single["item_id"])].to_csv(directory / "items.csv", index=False)
    single.to_csv(directory / "interactions.csv", index=False)
    (directory / "dataset.json").write_text(json.dumps({**data.info, "name": "one_interaction_each"}))
    return directory


def test_train_without_validation_cases_trains_every_epoch_and_keeps_the_last(one_interaction_each, cache_dir, tmp_path):
    models = tmp_path / "models"
    done = subprocess.run(
        [sys.executable, "-m", "whisperlite.trainer", "train", "--data", str(one_interaction_each), "--out", str(models),
         "--max-epochs", "3", "--cache-dir", str(cache_dir), "--quiet"],
        cwd=REPO, check=True, timeout=600, capture_output=True, text=True,
    )
    assert "(best epoch 3): no validation cases, the last epoch kept" in done.stdout
    assert "no validation cases" in done.stderr  # the warning says what happens instead
    manifest = json.loads((next(models.iterdir()) / "manifest.json").read_text())
    metrics = manifest["metrics"]
    assert metrics["validation"] == {} and metrics["best_epoch"] == metrics["epochs"] == len(manifest["history"]) == 3
    # taste auto: only its first candidate trains; sequence auto: no part without validation to choose it on
    assert "selection" not in metrics and manifest["config"]["train"]["taste"] == "mean"
    assert "sequence" not in manifest and "sequence" not in metrics
    assert PersonalizationModel.load(models).n_users == 80


def test_evaluate_without_test_cases_says_so_and_writes_nothing(one_interaction_each, tmp_path):
    """...before embedding anything: it used to embed the whole catalog first."""
    fresh_cache = tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, "-m", "whisperlite.trainer", "evaluate", "--data", str(one_interaction_each), "--out", str(tmp_path / "out"),
         "--cache-dir", str(fresh_cache), "--quiet"],
        cwd=REPO, timeout=600, capture_output=True, text=True,
    )
    assert done.returncode == 2
    assert "error: one_interaction_each: no test cases: no user has 3 or more interactions with distinct items (80 users, 80 interactions); nothing to evaluate" in done.stderr
    assert not (tmp_path / "out").exists()
    assert not list(fresh_cache.rglob("*.npy"))


def test_evaluate_cli_with_a_given_model(amazon, cache_dir, tmp_path):
    models, out = tmp_path / "models", tmp_path / "evaluation"
    common = ["--data", str(amazon), "--cache-dir", str(cache_dir), "--max-epochs", "2", "--user-table", "off", "--quiet"]
    subprocess.run([sys.executable, "-m", "whisperlite.trainer", "train", "--out", str(models), *common], cwd=REPO, check=True, timeout=600)
    done = subprocess.run(
        [sys.executable, "-m", "whisperlite.trainer", "evaluate", "--model", str(models), "--out", str(out),
         "--methods", "popularity,text_only,text_plus_history_mean,whisperlite", *common],
        cwd=REPO, check=True, timeout=600, capture_output=True, text=True,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "amazon_clothing_2014_msl_subset" and metrics["n_test"] == 60
    assert list(metrics["methods"]) == ["popularity", "text_only", "text_plus_history_mean", "whisperlite"]
    assert metrics["details"]["whisperlite"]["trained"] is False
    assert "| whisperlite |" in done.stdout  # the table is printed
    assert (out / "metrics.png").is_file() and (out / "results.md").is_file()

    # The same model on another split (or simulator seed) could be tested on what it trained on: refused.
    for flag, value in (("--min-interactions", "4"), ("--request-seed", "1")):
        refused = subprocess.run(
            [sys.executable, "-m", "whisperlite.trainer", "evaluate", "--model", str(models), "--out", str(tmp_path / "refused"),
             "--methods", "whisperlite", *common, flag, value],
            cwd=REPO, timeout=600, capture_output=True, text=True,
        )
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert "error: model: trained with split settings" in refused.stderr

    # Other data: refused before anything is embedded (it came after every text was, ~2 minutes on a probe's set).
    other = tmp_path / "other-data"
    shutil.copytree(amazon, other)
    first_row = (other / "interactions.csv").read_text().splitlines()[1].split(",")
    with (other / "interactions.csv").open("a") as handle:
        handle.write(f"{first_row[0]},{first_row[1]},4000000000,\n")  # one more interaction: another data hash
    fresh_cache = tmp_path / "fresh-cache"
    refused = subprocess.run(
        [sys.executable, "-m", "whisperlite.trainer", "evaluate", "--model", str(models), "--out", str(tmp_path / "refused"),
         "--methods", "whisperlite", *common[2:], "--data", str(other), "--cache-dir", str(fresh_cache)],
        cwd=REPO, timeout=600, capture_output=True, text=True,
    )
    assert refused.returncode == 2 and re.search(r"error: model: trained on data \w+ but .*other-data hashes to \w+", refused.stderr), refused.stderr[-2000:]
    assert not list(fresh_cache.rglob("*.npy"))


def test_evaluate_cli_rejects_unknown_methods(amazon, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "whisperlite.trainer", "evaluate", "--data", str(amazon), "--out", str(tmp_path), "--methods", "magic"],
        cwd=REPO, timeout=120, capture_output=True, text=True,
    )
    assert done.returncode == 2 and "--methods: unknown ['magic']" in done.stderr


def test_item_text_from_reviews_uses_training_reviews_only(prepared, tmp_path, cache_dir):
    """yelp items are described by their reviews: a held-out review must not describe its own target."""
    yelp = _subset(prepared, "yelp_phoenix_10k", 12, tmp_path, min_interactions=5)
    experiment = prepare_experiment(yelp, EmbeddingCache(cache_dir=cache_dir), leave_one_out_positives=True)
    texts = experiment.dataset.items.set_index("item_id")["text"]
    for frame in (experiment.split.validation, experiment.split.test):
        for item_id, request in zip(frame["item_id"], frame["request"]):
            assert request[:60] not in texts[item_id]
    train = experiment.split.train
    item_id, request = train["item_id"].iloc[0], train["request"].iloc[0]
    assert request[:60] in texts[item_id]
    # Training sees each target without the example's own review, as validation and test do.
    from whisperlite.core.dataset import load_dataset
    from whisperlite.core.item_text import leave_one_out_item_texts

    loo = leave_one_out_item_texts(load_dataset(yelp).items, train)
    assert all(r[:60] not in text for r, text in zip(train["request"], loo))
    shared = train["item_id"].duplicated(keep=False).to_numpy()
    if shared.any():  # an item reviewed twice in train keeps the other review
        row = int(np.flatnonzero(shared)[0])
        other = train[(train["item_id"] == train["item_id"].iloc[row]) & (train.index != train.index[row])]
        assert other["request"].iloc[0][:60] in loo[row]
    assert experiment.train_target_vectors.shape == (len(train), experiment.dimension)


def test_users_below_the_minimum_only_train(prepared):
    data = prepared("yelp_phoenix_10k")
    from whisperlite.core.dataset import load_dataset

    dataset = load_dataset(data.directory)
    split = temporal_split(dataset, min_interactions=5)
    counts = dataset.interactions["user_id"].value_counts()
    assert set(split.test["user_id"]) == set(counts[counts >= 5].index)
    assert len(split.test) == len(split.validation) == 267  # SOURCE.md: 267 users with >= 5 reviews
    with pytest.raises(ValueError, match="min_interactions: must be >= 3"):
        temporal_split(dataset, min_interactions=2)


def test_distributed_data_parallel_training_with_two_processes(amazon, cache_dir, tmp_path):
    """torchrun with two CPU processes (gloo): DDP trains, rank 0 alone writes the model."""
    models = tmp_path / "models"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "whisperlite.trainer", "train",
         "--data", str(amazon), "--out", str(models), "--max-epochs", "1", "--batch-size", "64", "--device", "cpu",
         "--user-table", "off", "--cache-dir", str(cache_dir), "--quiet"],
        cwd=REPO, timeout=600, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("model directory:") == 1
    (version_dir,) = list(models.iterdir())
    assert PersonalizationModel.load(version_dir).n_users == 60


def test_training_with_the_clip_backend(amazon, tiny_clip_dir, tmp_path):
    """The same trainer on CLIP text features (a tiny random CLIP: the code path, not the weights)."""
    models = tmp_path / "models"
    subprocess.run(
        [sys.executable, "-m", "whisperlite.trainer", "train", "--data", str(amazon), "--out", str(models), "--max-epochs", "1",
         "--encoder-backend", "clip", "--encoder-model", str(tiny_clip_dir), "--cache-dir", str(tmp_path / "cache"),
         "--user-table", "off", "--quiet"],
        cwd=REPO, check=True, timeout=600,
    )
    model = PersonalizationModel.load(models)
    assert model.encoder_name == str(tiny_clip_dir) and model.dimension == 32
