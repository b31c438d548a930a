"""The judgement store (SQLite) and the report maths, without HTTP; the report command end to end."""

import math
import sqlite3
import subprocess
import sys

import pytest

from whisperlite.services.gateway.judgements import FILENAME, JudgementStore, NotShown, ShownItem, ShownList, UnknownComparison
from whisperlite.services.gateway.report import build_report, condensed_lists, estimate, ndcg_at_k, precision_at_k


def _list(side: str, position: str, ids: list[str]) -> ShownList:
    items = [ShownItem(item_id, f"title {item_id}", 1.0 - i / 10, 0.5, 0.2 if side == "personalized" else 0.0) for i, item_id in enumerate(ids)]
    return ShownList(side, position, "PERSONALIZATION_PATH_RECENT_ITEMS" if side == "personalized" else "PERSONALIZATION_PATH_TEXT_ONLY", "v7", "req", items)


def _comparison(store: JudgementStore, user: str = "u1", request: str = "boots") -> int:
    return store.add_comparison(user, request, False, [_list("personalized", "left", ["a", "b", "c"]), _list("non_personal", "right", ["c", "d", "e"])])


def test_judgements_survive_reopening_and_carry_what_the_study_needs(tmp_path):
    store = JudgementStore.in_folder(tmp_path)
    comparison = _comparison(store)
    store.judge(comparison, "left", 2, True)
    store.judge(comparison, "right", 1, False)
    store.judge(comparison, "left", 2, False)  # a person changes their mind: one judgement, the latest
    store.close()

    reopened = JudgementStore(tmp_path / FILENAME)
    judgements = reopened.all_judgements()
    assert [(j.side, j.position, j.rank, j.item_id, j.relevant) for j in judgements] == [
        ("non_personal", "right", 1, "c", False),
        ("personalized", "left", 2, "b", False),
    ]
    assert {(j.user_id, j.request, j.model_version) for j in judgements} == {("u1", "boots", "v7")}
    row, lists, judged = reopened.comparison(comparison)
    assert (row["user_id"], row["request"]) == ("u1", "boots")
    assert [shown.items[0].item_id for shown in lists] == ["a", "c"]
    assert len(judged) == 2
    assert reopened.judged_users() == ["u1"]


def test_judging_what_was_not_shown_is_refused_and_stores_nothing(tmp_path):
    store = JudgementStore.in_folder(tmp_path)
    comparison = _comparison(store)
    with pytest.raises(NotShown, match="rank"):
        store.judge(comparison, "left", 4, True)
    with pytest.raises(UnknownComparison):
        store.judge(comparison + 1, "left", 1, True)
    assert store.all_judgements() == []


def test_the_schema_refuses_rows_the_study_cannot_mean(tmp_path):
    store = JudgementStore.in_folder(tmp_path)
    comparison = _comparison(store)
    with sqlite3.connect(tmp_path / FILENAME) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("INSERT INTO shown_lists VALUES (?, 'sideways', 'left', '', '', '')", (comparison,))


def test_precision_and_ndcg_on_known_lists():
    assert precision_at_k([True, False, True, False], 2) == 0.5
    assert precision_at_k([True, False, True], 5) == pytest.approx(2 / 3)  # condensed: only the judged items count
    assert ndcg_at_k([True, True, False], 3) == 1.0
    assert ndcg_at_k([False, False], 2) == 0.0
    # relevant at ranks 2 and 3 of 3; ideal puts them at 1 and 2
    expected = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k([False, True, True], 3) == pytest.approx(expected)


def test_report_compares_sides_with_counts_intervals_and_a_paired_difference(tmp_path):
    store = JudgementStore.in_folder(tmp_path)
    for n in range(6):
        comparison = _comparison(store, user=f"u{n % 2}")
        store.judge(comparison, "left", 1, True)  # personalized: relevant at rank 1 every time
        store.judge(comparison, "left", 2, n % 2 == 0)
        store.judge(comparison, "right", 1, False)  # non-personal: relevant only at rank 2, half the time
        store.judge(comparison, "right", 2, n % 2 == 0)
    judgements = store.all_judgements()
    assert condensed_lists(judgements)[(1, "personalized")] == [True, True]

    report = build_report(judgements, k=2)
    assert (report.judgements, report.comparisons, report.users) == (24, 6, 2)
    personal, non_personal = report.by_side["personalized"], report.by_side["non_personal"]
    assert personal["precision"].lists == non_personal["precision"].lists == 6
    assert personal["precision"].mean == pytest.approx(0.75) and non_personal["precision"].mean == pytest.approx(0.25)
    assert personal["ndcg"].mean > non_personal["ndcg"].mean
    assert personal["precision"].low <= 0.75 <= personal["precision"].high
    assert report.difference["precision"].lists == 6 and report.difference["precision"].mean == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k: must be at least 1"):
        build_report(judgements, k=0)


def test_a_single_list_has_no_interval():
    single = estimate([0.5])
    assert single.lists == 1 and single.mean == 0.5 and math.isnan(single.low)


def test_report_command_prints_and_plots(tmp_path):
    store = JudgementStore.in_folder(tmp_path)
    for _ in range(3):
        comparison = _comparison(store)
        store.judge(comparison, "left", 1, True)
        store.judge(comparison, "right", 1, False)
    store.close()
    plot = tmp_path / "report.png"
    result = subprocess.run(
        [sys.executable, "-m", "whisperlite", "judgements", "report", "--state-dir", str(tmp_path), "-k", "3", "--plot", str(plot)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "6 judgements of 3 comparisons by 1 user(s)" in result.stdout
    assert any(line.split()[:4] == ["precision@3", "personalized", "3", "1.000"] for line in result.stdout.splitlines()), result.stdout
    assert any(line.split()[:4] == ["ndcg@3", "non_personal", "3", "0.000"] for line in result.stdout.splitlines()), result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    bad_k = subprocess.run(
        [sys.executable, "-m", "whisperlite", "judgements", "report", "--state-dir", str(tmp_path), "-k", "0"], capture_output=True, text=True, timeout=120
    )
    assert bad_k.returncode == 1 and "k: must be at least 1, got 0" in bad_k.stderr


def test_report_command_without_a_store_says_where_it_looked(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "whisperlite", "judgements", "report", "--state-dir", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert f"no judgement store at {tmp_path / 'nowhere' / FILENAME}" in result.stderr
    assert not (tmp_path / "nowhere").exists()


def _report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "whisperlite", "judgements", "report", *args], capture_output=True, text=True, timeout=120)


def test_report_command_names_a_damaged_store_an_unwritable_plot_and_the_plot_it_wrote(tmp_path):
    """A damaged store and an unwritable --plot ended in tracebacks; --plot DIR wrote DIR.png and printed DIR."""
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / FILENAME).write_bytes(b"this is not a database" * 100)
    result = _report("--state-dir", str(damaged))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{damaged / FILENAME}: cannot be read as the gateway's judgement store: file is not a database" in result.stderr

    store = JudgementStore.in_folder(tmp_path)
    store.judge(_comparison(store), "left", 1, True)
    store.close()
    result = _report("--state-dir", str(tmp_path), "--plot", "/proc/nowhere/report.png")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "plot: cannot write /proc/nowhere/report.png: " in result.stderr

    folder = tmp_path / "plots"
    folder.mkdir()
    result = _report("--state-dir", str(tmp_path), "--plot", str(folder))
    assert result.returncode == 0 and f"plot: {folder / 'judgements-report.png'}\n" in result.stdout
    assert (folder / "judgements-report.png").read_bytes()[:4] == b"\x89PNG"
    result = _report("--state-dir", str(tmp_path), "--plot", str(tmp_path / "named"))
    assert f"plot: {tmp_path / 'named.png'}\n" in result.stdout and (tmp_path / "named.png").is_file()
