"""A hand-made dataset folder that cannot be trained on is refused with the file, line and reason, before any
embedding or training; `whisperlite train` and `evaluate` turn that into "error: ..." and exit 2."""

import subprocess
import sys

import pytest

from tests.servers import REPO
from whisperlite.core.dataset import load_dataset

ITEMS = "item_id,title,category\n1,Red summer dress,Dresses\n2,Blue oxford shirt,Tops\n"


def write(directory, items: str | None, interactions: str | None):
    directory.mkdir()
    if items is not None:
        (directory / "items.csv").write_text(items)
    if interactions is not None:
        (directory / "interactions.csv").write_text(interactions)
    return directory


@pytest.mark.parametrize(
    ("items", "interactions", "message"),
    [
        (ITEMS, "user_id,item_id,timestamp\nu1,1,1700000000\nu1,2,yesterday\n", "interactions.csv line 3: timestamp 'yesterday' is not unix seconds"),
        (ITEMS, "user_id,item_id\nu1,1\n", "interactions.csv: missing column(s) timestamp"),
        (ITEMS, "user_id,item_id,timestamp\n", "no interactions (with an item in items.csv) to learn from"),
        (ITEMS, "user_id,item_id,timestamp\nu1,7,1700000000\n", "no interactions (with an item in items.csv) to learn from"),
        (None, "user_id,item_id,timestamp\nu1,1,1\n", "items.csv missing: prepare the dataset with `whisperlite data prepare`"),
    ],
    ids=["timestamp-not-a-number", "no-timestamp-column", "no-rows", "only-unknown-items", "no-items-file"],
)
def test_an_unusable_dataset_is_refused_with_the_reason(tmp_path, items, interactions, message):
    refused_with(tmp_path, "train", write(tmp_path / "data", items, interactions), message)


def test_evaluate_refuses_an_unusable_dataset_the_same_way(tmp_path):
    data = write(tmp_path / "data", ITEMS, "user_id,item_id,timestamp\nu1,1,soon\n")
    refused_with(tmp_path, "evaluate", data, "interactions.csv line 2: timestamp 'soon' is not unix seconds")


def refused_with(tmp_path, command: str, data, message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "whisperlite", command, "--data", str(data), "--out", str(tmp_path / "out"), "--quiet"],
        cwd=REPO, timeout=300, capture_output=True, text=True,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_blank_timestamps_read_as_zero_and_numbers_in_any_notation(tmp_path):
    data = write(tmp_path / "data", ITEMS, "user_id,item_id,timestamp\nu1,1,\nu1,2,1.7e9\n")
    assert load_dataset(data).interactions["timestamp"].tolist() == [0, 1_700_000_000]
