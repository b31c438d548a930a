"""`whisperlite evaluate`: every method on the same test cases, full catalog ranked.

Writes metrics.json (`{"dataset", "n_test", "methods": {method: {metric: value}}, ...}`),
results.md (a markdown table) and metrics.png (a bar chart per metric) into the output directory.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from whisperlite.trainer.experiment import Experiment
from whisperlite.trainer.methods import (
    CollaborativeFiltering,
    LateFusion,
    Popularity,
    TextOnly,
    TextPlusHistoryMean,
    WhisperLite,
    rank_cases,
    validation_metrics,
)
from whisperlite.trainer.metrics import METRICS, summarize
from whisperlite.trainer.sequential import SASRec, SASRecConfig
from whisperlite.trainer.split import NoTestCases, no_test_cases
from whisperlite.trainer.plots import plot_metric_bars, plot_training_curves
from whisperlite.trainer.train import TrainConfig, save_model_dir, train_model
from whisperlite.core.personalization import PersonalizationModel

log = logging.getLogger(__name__)

BASELINES = ("popularity", "history_only", "text_only", "text_plus_history_mean", "request_only", "sasrec", "hybrid")
# Trained variants of the network. request_only never sees a user (the honest non-personal model);
# it and the loss ablations keep whisperlite's other choices made on validation (CHOICES_KEPT). The
# loss ablations measure the network alone: no sequence part.
VARIANTS = {
    "whisperlite": {},
    "request_only": {"taste": "none", "user_table": "off", "sequence": "off"},
    "whisperlite_bce_only": {"contrastive_weight": 0.0, "loss_mix": "given", "sequence": "off"},
    "whisperlite_contrastive_only": {"bce_weight": 0.0, "loss_mix": "given", "sequence": "off"},
}
CHOICES_KEPT = {
    "request_only": ("bce_weight", "contrastive_weight"),
    "whisperlite_bce_only": ("taste", "user_table"),
    "whisperlite_contrastive_only": ("taste", "user_table"),
}
# Order of fitting: request_only after whisperlite (it keeps whisperlite's loss mix), the fusion after its parts.
METHODS = (
    "popularity", "history_only", "text_only", "text_plus_history_mean", "whisperlite", "request_only", "sasrec", "hybrid",
    "whisperlite_bce_only", "whisperlite_contrastive_only",
)
FUSIONS = {"hybrid": ("request_only", "sasrec")}


def score_items(
    model: PersonalizationModel,
    query_vector: np.ndarray,
    user_id: str | None,
    item_vectors: np.ndarray,
    recent_item_vectors: np.ndarray | None = None,
    item_ids: list[str] | None = None,
    recent_item_ids: list[str] = (),
) -> np.ndarray:
    """The score of each item for one (user, request): the ranker's code path, used by evaluate. A model
    with a sequence part needs the items' ids (and reads the recent items by id)."""
    personalized = model.personalize(query_vector, user_id, recent_item_vectors, list(recent_item_ids))
    return model.score(personalized, item_vectors, item_ids)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> dict[str, float | None]:
    """Mean of a - b and the ratio mean(a) / mean(b) over test cases, each with a 95% paired bootstrap
    interval (the same resampled cases for both; a ratio is None where b's mean is 0)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) == 0:
        return {"diff": 0.0, "low": 0.0, "high": 0.0, "ratio": None, "ratio_low": None, "ratio_high": None}
    diffs, ratios = np.empty(n), np.empty(n)
    for k in range(n):
        rows = rng.integers(0, len(a), len(a))
        mean_a, mean_b = a[rows].mean(), b[rows].mean()
        diffs[k] = mean_a - mean_b
        ratios[k] = mean_a / mean_b if mean_b > 0 else np.nan
    ratio = float(a.mean() / b.mean()) if b.mean() > 0 else None
    finite = ratios[np.isfinite(ratios)]
    return {
        "diff": float(a.mean() - b.mean()),
        "low": float(np.quantile(diffs, 0.025)),
        "high": float(np.quantile(diffs, 0.975)),
        "ratio": ratio,
        "ratio_low": float(np.quantile(finite, 0.025)) if ratio is not None and len(finite) else None,
        "ratio_high": float(np.quantile(finite, 0.975)) if ratio is not None and len(finite) else None,
    }


def markdown_table(methods: dict[str, dict[str, float]], highlight_best: bool = True) -> str:
    lines = ["| method | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    best = {m: max(v[m] for v in methods.values()) for m in METRICS} if methods else {}
    for name, values in methods.items():
        cells = []
        for metric in METRICS:
            cell = f"{values[metric]:.4f}"
            cells.append(f"**{cell}**" if highlight_best and values[metric] == best[metric] else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_model_data(model: PersonalizationModel, directory: object, data_hash: str) -> None:
    """ValueError when `model` was trained on other data than `directory`'s (`data_hash`)."""
    if model.manifest.get("data_hash") != data_hash:
        raise ValueError(
            f"model: trained on data {model.manifest.get('data_hash')} but {directory} hashes to {data_hash}; "
            "its user table may hold test interactions"
        )


def _check_model_fits(model: PersonalizationModel, experiment: Experiment) -> None:
    """A given model must come from this data, split and encoder: otherwise its stored tastes may hold
    the very interactions it is tested on, or live in another vector space."""
    check_model_data(model, experiment.dataset.directory, experiment.dataset.data_hash)
    split = {"min_interactions": experiment.split.min_interactions, "request_seed": experiment.request_seed}
    trained = model.manifest.get("config", {}).get("split")
    if trained != split:
        raise ValueError(f"model: trained with split settings {trained} but this evaluation uses {split}")
    # The encoder is checked where the model meets this experiment's vectors: methods.WhisperLite.


def evaluate(
    experiment: Experiment,
    out_dir: str | Path,
    model: PersonalizationModel | None = None,
    config: TrainConfig | None = None,
    methods: tuple[str, ...] = METHODS,
    keep_seen: bool = False,
    models_out: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Run `methods` on the experiment's test cases; write and return the metrics."""
    config = config or TrainConfig()
    reason = no_test_cases(experiment.dataset, experiment.split)
    if reason:  # every method would score 0 on nothing: say so instead of training them all
        raise NoTestCases(experiment.dataset.name, reason)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    limit = config.validation_cases
    scorers, details = {}, {}
    for name in methods:
        started = time.perf_counter()
        if name == "popularity":
            scorers[name] = Popularity(experiment)
        elif name == "text_only":
            scorers[name] = TextOnly(experiment)
        elif name == "text_plus_history_mean":
            scorers[name] = method = TextPlusHistoryMean(experiment, validation_limit=limit)
            details[name] = {"weight": method.weight, "selection": method.selection}
        elif name == "history_only":
            scorers[name] = method = CollaborativeFiltering(experiment, validation_limit=limit, seed=config.seed)
            details[name] = {"chosen": method.params, "selection": method.selection}
        elif name == "sasrec":
            scorers[name] = method = SASRec(experiment, SASRecConfig(seed=config.seed, validation_cases=limit), progress=progress)
            details[name] = method.details()
        elif name in FUSIONS:
            parts = FUSIONS[name]
            missing = [part for part in parts if part not in scorers]
            if missing:
                raise ValueError(f"methods: {name} fuses {' and '.join(parts)}; add {', '.join(missing)} before it")
            scorers[name] = method = LateFusion(scorers[parts[0]], scorers[parts[1]], experiment, validation_limit=limit)
            details[name] = {"weight": method.weight, "selection": method.selection}
        elif name == "whisperlite" and model is not None:
            _check_model_fits(model, experiment)
            scorers[name] = WhisperLite(model, experiment, name)
            details[name] = {"model": model.version, "trained": False, "manifest_metrics": model.manifest.get("metrics")}
        else:
            kept = {}
            if name in CHOICES_KEPT and "whisperlite" in scorers:
                chosen = scorers["whisperlite"].model.manifest["config"]["train"]
                kept = {key: chosen.get(key, getattr(TrainConfig(), key)) for key in CHOICES_KEPT[name]}
                kept = {key: ("mean" if key == "taste" and value == "auto" else value) for key, value in kept.items()}
                kept["loss_mix"] = "given"
            variant_config = config.replace(**{**kept, **VARIANTS[name]})
            scorers[name], details[name] = _train_variant(experiment, variant_config, name, out_dir, models_out, progress)
        details.setdefault(name, {})["fit_seconds"] = round(time.perf_counter() - started, 1)

    per_case, test_metrics, val_metrics = {}, {}, {}
    for name, scorer in scorers.items():
        per_case[name] = rank_cases(scorer, experiment, "test", keep_seen=keep_seen, progress=progress)
        test_metrics[name] = summarize(per_case[name])
        val_metrics[name] = validation_metrics(scorer, experiment, limit=limit)

    if "whisperlite" in scorers:
        # How much of WhisperLite's gain is the learned request transform alone: same model, no taste.
        without_user = scorers["whisperlite"].without_user()
        details["whisperlite"]["test_without_user"] = summarize(rank_cases(without_user, experiment, "test", keep_seen=keep_seen))
    report = {
        "dataset": experiment.dataset.name,
        "n_test": len(experiment.split.test),
        "methods": test_metrics,
        "validation": val_metrics,
        "settings": {**experiment.settings(), "keep_seen": keep_seen, "train_config": _jsonable(config)},
        "details": details,
        "diagnostics": diagnostics(experiment, per_case),
    }
    report["comparison"] = compare(per_case, test_metrics)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown_table(test_metrics)
    (out_dir / "results.md").write_text(
        f"# {experiment.dataset.name}: test metrics ({report['n_test']} cases, full catalog of "
        f"{experiment.dataset.n_items} items{', seen items kept' if keep_seen else ', seen items excluded'})\n\n{table}\n"
    )
    plot_metric_bars(test_metrics, out_dir / "metrics.png", title=f"{experiment.dataset.name} (n_test={report['n_test']})")
    print(f"\n{experiment.dataset.name}: {report['n_test']} test cases\n{table}\n")
    if non_personal(details.get("whisperlite", {})):
        print("note: whisperlite reads no user signal on this dataset (validation chose no taste, no sequence part shipped): "
              "its row is the request-only network\n")
    return report


def non_personal(whisperlite: dict) -> bool:
    """Whether the trained whisperlite model reads no user signal: no taste chosen, no sequence part shipped."""
    sequence = whisperlite.get("sequence") or {}
    return bool(whisperlite.get("trained")) and whisperlite.get("taste") == "none" and not sequence.get("shipped")


def _train_variant(experiment: Experiment, config: TrainConfig, name: str, out_dir: Path, models_out, progress: bool):
    result = train_model(experiment, config, name=f"{experiment.dataset.name}-{name}", progress=progress)
    plot_training_curves(result.history, out_dir / f"curves_{name}.png", title=f"{experiment.dataset.name}: {name}")
    metrics = result.model.manifest["metrics"]
    chosen = result.model.manifest["config"]["train"]
    detail = {
        "trained": True,
        "best_epoch": result.best_epoch,
        "epochs": len(result.history),
        "train_seconds": round(result.seconds, 1),
        "taste": chosen["taste"],
        "user_table": chosen["user_table"],
        "loss": {"bce_weight": chosen["bce_weight"], "contrastive_weight": chosen["contrastive_weight"]},
        "selection": metrics.get("selection"),
        "train_seconds_all_candidates": metrics.get("train_seconds_all_candidates", round(result.seconds, 1)),
        "sequence": metrics.get("sequence"),
        "history": result.history,
    }
    if models_out is not None:
        detail["model_dir"] = str(save_model_dir(result, models_out))
    return WhisperLite(result.model, experiment, name), detail


def compare(per_case: dict[str, dict[str, np.ndarray]], metrics: dict[str, dict[str, float]]) -> dict:
    """WhisperLite vs the best baseline (chosen per metric on test, the strictest comparison), and vs
    request_only under "taste_lift" (what the user signal adds), each with paired-bootstrap intervals."""
    baselines = [m for m in BASELINES if m in metrics]
    if "whisperlite" not in metrics or not baselines:
        return {}
    out: dict = {
        metric: _versus(per_case, metrics, max(baselines, key=lambda m: metrics[m][metric]), metric)
        for metric in ("recall@10", "ndcg@10", "recall@50", "mrr")
    }
    if "request_only" in metrics:
        out["taste_lift"] = {metric: _versus(per_case, metrics, "request_only", metric) for metric in ("recall@10", "ndcg@10")}
    return out


def _versus(per_case, metrics, baseline: str, metric: str) -> dict:
    mine, theirs = metrics["whisperlite"][metric], metrics[baseline][metric]
    interval = paired_bootstrap(per_case["whisperlite"][metric], per_case[baseline][metric])
    return {
        "best_baseline": baseline,
        "whisperlite": mine,
        "baseline": theirs,
        "ratio": mine / theirs if theirs > 0 else None,
        "ratio_95ci": [interval["ratio_low"], interval["ratio_high"]],
        "difference_95ci": {k: interval[k] for k in ("diff", "low", "high")},
    }


def diagnostics(experiment: Experiment, per_case: dict[str, dict[str, np.ndarray]]) -> dict:
    """Evidence for explaining results: cold targets, history lengths, request ambiguity."""
    split = experiment.split
    targets = split.test["item"].to_numpy()
    users = split.test["user"].to_numpy()
    cold = split.item_counts[targets] == 0
    history_length = np.array([len(split.history[u]) for u in users])
    text_rank_cos = np.einsum("nd,nd->n", experiment.test_queries, experiment.item_vectors[targets])
    out = {
        "test_targets_unseen_in_train": float(cold.mean()) if len(cold) else 0.0,
        "median_train_history_of_test_users": float(np.median(history_length)) if len(history_length) else 0.0,
        "mean_request_target_cosine": float(text_rank_cos.mean()) if len(text_rank_cos) else 0.0,
        "recall@10_by_target": {},
    }
    for name, cases in per_case.items():
        values = cases["recall@10"]
        out["recall@10_by_target"][name] = {
            "warm": float(values[~cold].mean()) if (~cold).any() else None,
            "cold": float(values[cold].mean()) if cold.any() else None,
        }
    return out


def _jsonable(config: TrainConfig) -> dict:
    from dataclasses import asdict

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
