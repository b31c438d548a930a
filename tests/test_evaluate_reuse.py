"""`evaluate --all --reuse` keeps a dataset's results only when nothing that shapes them changed."""

import json

import pytest

from whisperlite.core.dataset import data_hash
from whisperlite.trainer.evaluate import METHODS, _jsonable
from whisperlite.trainer.report import _reusable
from whisperlite.trainer.train import TrainConfig

RUN = {"encoder": "sentence-transformers/all-MiniLM-L6-v2", "min_interactions": 3, "request_seed": 0}


@pytest.fixture
def recorded(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "items.csv").write_text("item_id,title\n1,Red dress\n")
    (data / "interactions.csv").write_text("user_id,item_id,timestamp,request\nu,1,0,\n")
    settings = {
        "data_hash": data_hash(data),
        "train_config": _jsonable(TrainConfig()),
        "keep_seen": False,
        **RUN,
    }
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"settings": settings, "methods": {name: {} for name in METHODS}}))
    return path, data


def test_unchanged_settings_reuse_the_results(recorded):
    path, data = recorded
    assert _reusable(path, data, TrainConfig(), METHODS, False, RUN) is not None


@pytest.mark.parametrize("change", [{"encoder": "openai/clip-vit-base-patch32"}, {"min_interactions": 5}, {"request_seed": 1}])
def test_another_encoder_split_or_request_seed_is_evaluated_again(recorded, change):
    path, data = recorded
    assert _reusable(path, data, TrainConfig(), METHODS, False, {**RUN, **change}) is None


def test_other_data_config_methods_or_seen_items_are_evaluated_again(recorded):
    path, data = recorded
    assert _reusable(path, data, TrainConfig(lr=0.5), METHODS, False, RUN) is None
    assert _reusable(path, data, TrainConfig(), METHODS[:2], False, RUN) is None
    assert _reusable(path, data, TrainConfig(), METHODS, True, RUN) is None
    (data / "items.csv").write_text("item_id,title\n1,Blue dress\n")
    assert _reusable(path, data, TrainConfig(), METHODS, False, RUN) is None
