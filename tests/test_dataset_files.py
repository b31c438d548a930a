"""A hand-made dataset folder that cannot be trained on is refused with the file, line and reason, before any
embedding or training; `whisperlite train` and `evaluate` turn that into "error: ..." and exit 2."""

import re
import subprocess
import sys

import pytest

from tests.servers import REPO
from whisperlite.trainer.split import temporal_split
from whisperlite.core.dataset import load_dataset
from whisperlite.trainer.train import version_slug

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


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"dataset.json": "[1, 2, 3]"}, "dataset.json: must be a JSON object, got list"),
        ({"dataset.json": "{name: 1}"}, "dataset.json: not JSON"),
        ({"interactions.csv": "user_id,item_id,timestamp\nu1,1,1\nu1,2,2,x,y\n"}, "interactions.csv line 3: 5 fields, the header has 3"),
        # pandas numbers records, not lines: it said "line 3" for a ragged line 4 after a value over two lines
        ({"interactions.csv": 'user_id,item_id,timestamp,request\nu1,1,1,"two\nlines"\nu1,2,2,x,y\n'},
         "interactions.csv line 4: 5 fields, the header has 4"),
        # and said "row 3" for a quote opened on line 4
        ({"interactions.csv": 'user_id,item_id,timestamp,request\nu1,1,1,a\n\nu1,2,2,"open\nu1,3,3,b\n'},
         "interactions.csv line 4: a quoted value starts here and is never closed"),
        ({"items.csv": "title\nRed dress\n"}, "items.csv: missing column item_id"),
        ({"items.csv": "item_id,category\n1,Dresses\n"}, "items.csv: needs a title or a text column"),
        ({"interactions.csv": "user_id,item_id,timestamp\n,1,1\n"}, "interactions.csv line 2: user_id is empty"),
        ({"interactions.csv": "user_id,item_id,timestamp\nu1,1,1\nu1,2,inf\n"}, "interactions.csv line 3: timestamp 'inf' is not a finite number"),
        ({"interactions.csv": "user_id,item_id,timestamp\nu1,1,1\nu1,2,1e30\n"}, "interactions.csv line 3: timestamp '1e30' lies past what int64"),
        ({"interactions.csv": "user_id,item_id,timestamp\nu1,1,1\n\n\"u1\",\"2\nb\"\nu1,1,3\n"}, "interactions.csv line 4: 2 field(s), the row ends before its timestamp"),
        ({"interactions.csv": f"user_id,item_id,timestamp\nu1,1,1\n{'u' * 257},2,2\n"}, "interactions.csv line 3: user_id is 257 characters, more than 256"),
        ({"items.csv": f"item_id,title\n1,Red dress\n{'7' * 300},Shirt\n"}, "items.csv line 3: item_id is 300 characters, more than 256"),
        ({"dataset.json": '{"name": ["h&m"]}'}, "dataset.json: 'name' must be a string, got ['h&m']"),
        ({"interactions.csv": "user_id,item_id,timestamp\nu1, 1 ,1\n"}, "1 of 1 interactions name items missing from items.csv (e.g. ' 1 '); 1 of them"),
        ({"interactions.csv": 'user_id,item_id,timestamp,request\nu1,1,1,"a review\n\nover lines"\n\nu1,2,soon,x\n'},
         "interactions.csv line 6: timestamp 'soon' is not unix seconds"),
        # What the catalog cannot store is refused when read, not when `up` ingests the trained model's items.
        ({"items.csv": "item_id,title\n1,Red dress\nLevi's 501,Jeans\n"},
         "items.csv line 3: item_id \"Levi's 501\" must not contain an apostrophe (')"),
        ({"items.csv": 'item_id,title\n1,Red dress\n"tab\there",Shirt\n'}, "items.csv line 3: item_id 'tab\\there' must not contain control characters"),
        # One unquoted comma in the first row: pandas read the ids as an index and every column shifted.
        ({"items.csv": "item_id,title,text\n1,Dress, red,cotton\n2,Shirt,x\n"}, "items.csv line 2: 4 fields, the header has 3 (quote a value"),
        # Price, attributes and field lengths as the catalog takes them: they trained, then stopped `up`'s ingest.
        ({"items.csv": 'item_id,title,price\n1,Red dress,19.99\n2,Shirt,"19,99"\n'}, "items.csv line 3: price: not a number: '19,99': the catalog cannot store"),
        ({"items.csv": "item_id,title,price\n1,Red dress,-5\n2,Shirt,\n"}, "items.csv line 2: price: must be a finite number >= 0, got '-5'"),
        ({"items.csv": 'item_id,title,attributes\n1,Red dress,"{""size"": ""M""}"\n2,Shirt,red\n'}, "items.csv line 3: attributes: not a JSON object: Expecting value"),
        ({"items.csv": f"item_id,title\n1,Red dress\n2,{'long ' * 300}\n"}, "items.csv line 3: title: must be at most 1024 characters, got 1500"),
        # These trained users the ranker refuses to serve, or read a second column as `title.1` and dropped it.
        ({"interactions.csv": 'user_id,item_id,timestamp\nu1,1,1\n"u\t2",2,2\n'},
         "interactions.csv line 3: user_id 'u\\t2' holds a control character (tab, newline, ...), which the services refuse in an id"),
        ({"interactions.csv": "user_id,item_id,timestamp\nu1,1,1\n\u200b,2,2\n"},
         "interactions.csv line 3: user_id '\\u200b' has no visible character, which the services refuse in an id"),
        ({"items.csv": "item_id,title,text,title\n1,Red dress,x,y\n"},
         "items.csv: the header names the column(s) 'title' more than once: rename them so each column has one name"),
    ],
    ids=[
        "info-not-an-object", "info-not-json", "ragged-row", "ragged-row-after-a-value-over-lines", "unclosed-quote", "no-item-id", "no-item-text", "blank-user", "infinite-time",
        "time-past-int64", "row-cut-before-its-timestamp", "user-id-too-long", "item-id-too-long", "name-not-a-string",
        "every-item-id-with-spaces", "line-after-a-value-over-lines", "item-id-with-an-apostrophe", "item-id-with-a-tab", "first-row-with-an-extra-field",
        "price-with-a-decimal-comma", "negative-price", "attributes-not-json", "title-too-long", "user-id-with-a-tab",
        "user-id-invisible", "column-named-twice",
    ],
)
def test_a_broken_file_is_refused_naming_it(tmp_path, files, message):
    data = write(tmp_path / "data", ITEMS, "user_id,item_id,timestamp\nu1,1,1\nu1,2,2\n")
    for name, text in files.items():
        (data / name).write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_dataset(data)


def test_bytes_that_are_not_utf8_are_refused_with_their_line(tmp_path):
    data = write(tmp_path / "data", None, "user_id,item_id,timestamp\nu1,1,1\nu1,2,2\n")
    (data / "items.csv").write_bytes(ITEMS.encode() + "3,Caf\u00e9 apron,Aprons\n".encode("latin-1"))
    with pytest.raises(ValueError, match=re.escape("items.csv line 4: not UTF-8")):
        load_dataset(data)


def test_a_trailing_delimiter_on_every_row_is_read_as_the_columns_it_names(tmp_path):
    """A spreadsheet export's empty last field; it used to shift every column (ids read as titles)."""
    data = write(tmp_path / "data", "item_id,title,category,\n1,Red summer dress,Dresses,\n2,Blue oxford shirt,Tops,\n",
                 "user_id,item_id,timestamp\nu1,1,1\nu1,2,2\n")
    items = load_dataset(data).items
    assert items["item_id"].tolist() == ["1", "2"] and items["title"].tolist() == ["Red summer dress", "Blue oxford shirt"]


def test_timestamps_keep_their_exact_order(tmp_path):
    """Fractions of a second order a user's items (they were cut to whole seconds, leaving file order to
    decide), and nanosecond integers stay exact next to a blank cell (which sent them through float64)."""
    data = write(tmp_path / "data", ITEMS, "user_id,item_id,timestamp\nu1,2,1600000000.2\nu1,1,1600000000.1\n")
    assert load_dataset(data).interactions["timestamp"].tolist() == [1600000000.2, 1600000000.1]
    (data / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,1,1700000000000000093\nu1,2,1700000000000000108\nu2,1,\n")
    assert load_dataset(data).interactions["timestamp"].tolist() == [1700000000000000093, 1700000000000000108, 0]


def test_a_dataset_name_is_a_safe_start_of_a_version_directory():
    assert version_slug("amazon_clothing_2014_msl") == "amazon_clothing_2014_msl"
    assert version_slug("h&m/fashion") == "h-m-fashion"
    assert version_slug("../../etc/../weird name/x") == "etc-weird-name-x"
    assert version_slug("") == version_slug("---") == "model"  # never a version that reads as a flag


def test_what_loading_sets_aside_or_guesses_is_said_with_counts(tmp_path, caplog):
    """Each of these used to pass without a word (or one line without numbers), and the H&M-like shapes of a held-back
    fashion set (day-precision baskets, ids with leading zeros) met them all."""
    data = write(
        tmp_path / "data",
        "item_id,title,text\n0012,Red dress,\n0013,Blue shirt,\n0012,Red dress again,\n0099,,\n",
        "user_id,item_id,timestamp\nu1,0012,1700000000\nu1,0013,1700000000\nu1,12,1700000100\nu2, 0013 ,1700000000000\nu2,0012,1700000001\n",
    )
    with caplog.at_level("WARNING"):
        dataset = load_dataset(data)
    assert dataset.items["item_id"].tolist() == ["0012", "0013", "0099"] and dataset.items["title"][0] == "Red dress"
    assert dataset.interactions["item_id"].tolist() == ["0012", "0013", "0012"]
    text = caplog.text
    assert "1 rows repeat an item_id listed above them (e.g. '0012'); the first row of each id is kept" in text
    assert "1 items have neither title nor text (e.g. '0099')" in text
    assert ("2 of 5 interactions name items missing from items.csv (e.g. '12', ' 0013 '); 1 of them match an item once spaces "
            "around them are stripped; 1 of them match an item once leading zeros are ignored") in text  # ' 0013 ' was counted in both
    assert "2 interactions share their timestamp with another of the same user (1 users): file order decides" in text
    assert "1 timestamps look like milliseconds" not in text  # the millisecond row was dropped with its unknown item
    (data / "interactions.csv").write_text("user_id,item_id,timestamp,request\nu1,0012,1700000000,N/A\nu1,0013,1700000000123,\n")
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_dataset(data)
    assert "1 timestamps look like milliseconds and 1 like seconds" in caplog.text
    assert "1 requests are placeholders such as 'N/A'" in caplog.text
    # A row written twice (or the same item again at the same time) leaves nothing to order: the split keeps one.
    (data / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,0012,1700000000\nu1,0012,1700000000\nu1,0013,1700000100\n")
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_dataset(data)
    assert "share their timestamp" not in caplog.text


def test_requests_with_nothing_visible_are_simulated_and_a_rebought_item_is_said(tmp_path, caplog):
    """A request of spaces or a zero-width space was trained on (the ranker refuses that query), and a repeat purchase
    was dropped by the split with an INFO line."""
    data = write(
        tmp_path / "data", ITEMS,
        'user_id,item_id,timestamp,request\nu1,1,1,"   "\nu1,2,2,\u200b\nu1,1,3,again\nu1,2,4,a real request\nu1,3,5,\n',
    )
    with caplog.at_level("WARNING"):
        dataset = load_dataset(data)
        temporal_split(dataset)
    assert dataset.interactions["request"].tolist()[:2] == ["", ""]
    assert "2 requests hold no visible character (e.g. '   ', '\\u200b'): read as empty" in caplog.text
    assert ("2 interactions repeat a (user, item) pair seen earlier (e.g. user 'u1' item '1', user 'u1' item '2'): each pair "
            "counts once, at its first time") in caplog.text


@pytest.mark.parametrize(("separator", "name"), [("\t", "tabs"), (";", "semicolons")])
def test_a_file_separated_by_tabs_or_semicolons_is_named_so(tmp_path, separator, name):
    """It was 'line 2: 2 fields, the header has 1 (quote a value that holds a comma)' or a missing column."""
    items = ITEMS.replace(",", separator)
    data = write(tmp_path / "data", items, "user_id,item_id,timestamp\nu1,1,1\n")
    with pytest.raises(ValueError, match=rf"items.csv line 1: the header is separated by {name}, not commas"):
        load_dataset(data)


def test_dataset_json_fields_written_loosely_still_load(tmp_path, caplog):
    """A numeric name crashed training after embedding; null has always meant absent; an unknown item_text_source
    is read as the default, with a warning."""
    data = write(tmp_path / "data", ITEMS, "user_id,item_id,timestamp\nu1,1,1\nu1,2,2\n")
    (data / "dataset.json").write_text('{"name": 2024}')
    assert load_dataset(data).name == "2024"
    (data / "dataset.json").write_text('{"name": null, "item_text_source": null}')
    assert load_dataset(data).name == "data"
    (data / "dataset.json").write_text('{"item_text_source": "reviews"}')
    with caplog.at_level("WARNING"):
        load_dataset(data)
    assert "item_text_source 'reviews' is neither 'metadata' nor 'train_requests'" in caplog.text


def test_evaluate_says_what_is_wrong_with_its_out_and_model_before_any_work(tmp_path):
    """They were tracebacks (FileExistsError once the methods had trained; torch's or json's error for a broken model)."""
    data = write(tmp_path / "data", ITEMS, "user_id,item_id,timestamp\nu1,1,1\nu1,2,2\n")
    a_file = tmp_path / "results.csv"
    a_file.write_text("x")
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"version": ')
    for extra, message in (
        (["--out", str(a_file)], f"error: --out {a_file}: cannot write there (File exists)"),
        (["--out", str(tmp_path / "out"), "--models-out", str(a_file / "models")], "error: --models-out"),
        (["--out", str(tmp_path / "out"), "--model", str(broken)], f"error: --model {broken}: cannot be loaded"),
    ):
        done = subprocess.run([sys.executable, "-m", "whisperlite", "evaluate", "--data", str(data), "--quiet", *extra],
                              cwd=REPO, timeout=300, capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_a_dataset_given_as_the_current_folder_is_named_after_it(tmp_path, monkeypatch):
    """`--data .` named the dataset "": log lines read ": 1375 items" and the model version fell back to model-<time>."""
    data = write(tmp_path / "shop-data", ITEMS, "user_id,item_id,timestamp\nu1,1,1\nu1,2,2\n")
    monkeypatch.chdir(data)
    assert load_dataset(".").name == "shop-data"


def test_a_dataset_of_another_format_version_is_read_with_a_warning(tmp_path, caplog):
    data = write(tmp_path / "data", ITEMS, "user_id,item_id,timestamp\nu1,1,1\nu1,2,2\n")
    (data / "dataset.json").write_text('{"format_version": 99}')
    with caplog.at_level("WARNING"):
        load_dataset(data)
    assert "dataset.json: format_version 99: this WhisperLite reads format 1; the files are read as that format" in caplog.text
