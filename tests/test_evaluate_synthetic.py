"""`evaluate` end to end on the synthetic planted-taste dataset: every method, same cases, outputs."""

import json

import numpy as np
import pytest

from tests.fixtures_model import synthetic_experiment
from whisperlite.trainer.evaluate import BASELINES, METHODS, evaluate, score_items
from whisperlite.trainer.methods import WhisperLite
from whisperlite.trainer.metrics import METRICS
from whisperlite.trainer.report import write_results_doc
from whisperlite.trainer.train import TrainConfig, train_model

# taste "auto": mean and attention each train select_epochs, the better goes on
FAST = TrainConfig(batch_size=64, lr=5e-3, max_epochs=8, patience=2, user_table="off", loss_mix="given", select_epochs=2)


@pytest.fixture(scope="module")
def experiment():
    return synthetic_experiment(seed=3)


@pytest.fixture(scope="module")
def report(experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    return evaluate(experiment, out, config=FAST, progress=False), out


def test_metrics_json_has_every_method_on_the_same_cases(report, experiment):
    result, out = report
    written = json.loads((out / "metrics.json").read_text())
    assert written["dataset"] == "synthetic"
    assert written["n_test"] == len(experiment.split.test) == 240
    assert list(written["methods"]) == list(METHODS)
    for metrics in written["methods"].values():
        assert set(metrics) == set(METRICS)
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
        assert metrics["recall@10"] <= metrics["recall@50"]


def test_table_and_plot_are_written(report):
    _, out = report
    table = (out / "results.md").read_text()
    assert all(f"| {m} |" in table for m in METHODS)
    assert (out / "metrics.png").stat().st_size > 10_000
    assert (out / "curves_whisperlite.png").is_file()


def test_whisperlite_wins_on_planted_taste(report):
    methods = report[0]["methods"]
    assert methods["whisperlite"]["recall@10"] > methods["text_only"]["recall@10"] + 0.2
    assert methods["whisperlite"]["recall@10"] > methods["popularity"]["recall@10"]
    comparison = report[0]["comparison"]["recall@10"]
    assert comparison["best_baseline"] in BASELINES
    assert comparison["ratio"] == pytest.approx(methods["whisperlite"]["recall@10"] / comparison["baseline"])
    interval = comparison["difference_95ci"]
    assert interval["diff"] == pytest.approx(methods["whisperlite"]["recall@10"] - comparison["baseline"])
    assert 0 < interval["low"] <= interval["diff"] <= interval["high"]  # a planted gain this large is clear of noise
    low, high = comparison["ratio_95ci"]
    assert 1 < low <= comparison["ratio"] <= high


def test_taste_lift_is_whisperlite_over_the_same_network_without_users(report):
    methods, lift = report[0]["methods"], report[0]["comparison"]["taste_lift"]["recall@10"]
    assert lift["best_baseline"] == "request_only"
    assert lift["ratio"] == pytest.approx(methods["whisperlite"]["recall@10"] / methods["request_only"]["recall@10"])
    low, high = lift["ratio_95ci"]
    assert 1 < low <= lift["ratio"] <= high  # the taste is planted: without the user the request is ambiguous
    details = report[0]["details"]
    assert details["request_only"]["taste"] == "none"
    assert details["whisperlite"]["taste"] in ("mean", "attention")
    selection = details["whisperlite"]["selection"]
    assert set(selection["candidates"]) == {f"taste={taste} loss=given user_table=off" for taste in ("mean", "attention", "none")}
    assert selection["chosen"] in selection["candidates"]


def test_baseline_choices_are_made_on_validation(report):
    details = report[0]["details"]
    assert details["text_plus_history_mean"]["weight"] in (0.25, 0.5, 1.0, 2.0)
    assert len(details["history_only"]["selection"]) >= 2
    assert details["whisperlite"]["trained"] and details["whisperlite"]["best_epoch"] >= 1
    # whisperlite's sequence part: the text weight kept is validation's best (1.0 = the network alone, not shipped).
    sequence = details["whisperlite"]["sequence"]
    by_weight = {row["text_weight"]: row["validation"]["recall@10"] for row in sequence["selection"]}
    assert set(by_weight) == {0.5, 0.6, 0.7, 0.8, 0.9, 1.0}
    assert by_weight[sequence["text_weight"]] == max(by_weight.values())
    assert sequence["shipped"] == (sequence["text_weight"] < 1.0)
    assert details["request_only"]["sequence"] is None  # no user signal at all, no sequence either


def test_a_fusion_without_its_parts_is_refused(experiment, tmp_path):
    with pytest.raises(ValueError, match="hybrid fuses request_only and sasrec; add request_only, sasrec"):
        evaluate(experiment, tmp_path, config=FAST, methods=("hybrid",), progress=False)


@pytest.mark.parametrize("taste, sequence", [("mean", "off"), ("attention", "off"), ("attention", "on")])
def test_evaluation_scores_equal_the_serving_code_path(experiment, taste, sequence):
    """The batch path evaluate ranks with equals personalize + score per request, as the ranker calls it."""
    model = train_model(experiment, FAST.replace(max_epochs=2, taste=taste, sequence=sequence, sequence_epochs=2), progress=False).model
    assert model.taste_mode == taste and (model.sequence is not None) == (sequence == "on")
    method = WhisperLite(model, experiment)
    test = experiment.split.test.iloc[:5]
    item_ids = experiment.dataset.items["item_id"].tolist()
    batch = method.scores(test["user"].to_numpy(), experiment.test_queries[:5])
    for row, (user_id, query) in enumerate(zip(test["user_id"], experiment.test_queries[:5])):
        np.testing.assert_allclose(batch[row], score_items(model, query, user_id, experiment.item_vectors, item_ids=item_ids), atol=1e-4)


def test_a_model_trained_on_other_data_is_refused(experiment, tmp_path):
    other = synthetic_experiment(seed=4)
    model = train_model(other, FAST.replace(max_epochs=1, taste="mean"), progress=False).model
    with pytest.raises(ValueError, match="user table may hold test interactions"):
        evaluate(experiment, tmp_path, model=model, config=FAST, methods=("whisperlite",), progress=False)


def test_results_doc_reports_both_ratios_with_intervals(report, tmp_path):
    result, out = report
    doc = write_results_doc({"synthetic": result}, {}, out.parent, tmp_path / "results.md", FAST).read_text()
    lift = result["comparison"]["taste_lift"]["recall@10"]
    row = next(line for line in doc.splitlines() if line.startswith("| synthetic |"))
    assert f"{lift['ratio']:.3f} [{lift['ratio_95ci'][0]:.3f}, {lift['ratio_95ci'][1]:.3f}]" in row
    assert "Taste's lift (whisperlite / request_only)" in doc
    assert "reads no user signal" not in doc  # this one personalizes


def test_a_whisperlite_that_chose_no_taste_is_called_non_personal(experiment, tmp_path, capsys):
    """A held-back dataset's validation chose no taste: results.md still called the request-only network "whisperlite"
    at 1.13x the best baseline, with nothing outside the manifest saying it does not personalize."""
    config = FAST.replace(max_epochs=2, taste="none", sequence="off")
    result = evaluate(experiment, tmp_path / "out", config=config, methods=("text_only", "whisperlite"), progress=False)
    assert "whisperlite reads no user signal on this dataset" in capsys.readouterr().out
    doc = write_results_doc({"synthetic": result}, {}, tmp_path, tmp_path / "results.md", config).read_text()
    assert "**whisperlite reads no user signal on this dataset**" in doc
