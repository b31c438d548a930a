"""`whisperlite evaluate --all`: every dataset of ../shared/datasets, then docs/results.md.

The document is generated (tables, plots, settings, ratios); the hand-written discussion of the
numbers lives in docs/results/analysis.md and is included verbatim, so regenerating the
results never loses it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from whisperlite.core.dataset import data_hash
from whisperlite.trainer.split import DEFAULT_MIN_INTERACTIONS, NoTestCases
from whisperlite.trainer.evaluate import BASELINES, METHODS, _jsonable, evaluate, markdown_table, non_personal
from whisperlite.trainer.train import TrainConfig

log = logging.getLogger(__name__)

# Datasets with users whose histories can be split in time come first; the others are reported
# with the reason they cannot be evaluated.
ORDER = ("amazon_clothing_2014_msl", "yelp_phoenix_10k", "movielens_latest_small", "womens_ecommerce_clothing", "amazon_fashion_5core_2018")
ANALYSIS = "analysis.md"


def evaluate_all(
    data_root: Path,
    out_root: Path,
    docs_path: Path,
    experiment_factory: Callable,
    config: TrainConfig | None = None,
    methods: tuple[str, ...] = METHODS,
    keep_seen: bool = False,
    progress: bool = True,
    reuse: bool = False,
    min_interactions: int = DEFAULT_MIN_INTERACTIONS,
    run_settings: dict | None = None,
    models_out: Path | None = None,
) -> dict:
    """Evaluate every dataset and write `docs_path`. With `reuse`, a dataset whose metrics.json
    was made from the same data files, methods and settings (the training config, the split minimum
    and `run_settings`: encoder, request seed) is not evaluated again. `models_out`: the trained models
    are saved there too (one version directory per dataset and variant)."""
    from whisperlite.data.prepare import prepare_dataset
    from whisperlite.data.sources import CONVERTERS

    config = config or TrainConfig()
    names = [n for n in ORDER if n in CONVERTERS] + sorted(set(CONVERTERS) - set(ORDER))
    reports, skipped = {}, {}
    expected = {"min_interactions": min_interactions, **(run_settings or {})}
    for name in names:
        data_dir = data_root / name
        if not (data_dir / "items.csv").is_file():
            try:
                log.info("preparing %s into %s", name, data_dir)
                prepare_dataset(name, data_dir, progress=progress)
            except (FileNotFoundError, ValueError) as err:
                skipped[name] = f"not prepared: {err}"
                continue
        previous = _reusable(out_root / name / "metrics.json", data_dir, config, methods, keep_seen, expected) if reuse else None
        if previous is not None:
            log.info("%s: reusing %s", name, out_root / name / "metrics.json")
            reports[name] = previous
            continue
        started = time.perf_counter()
        try:
            experiment = experiment_factory(data_dir)  # refuses a dataset without test cases before embedding it
        except NoTestCases as refusal:
            skipped[name] = refusal.reason
            continue
        report = evaluate(experiment, out_root / name, config=config, methods=methods, keep_seen=keep_seen,
                          models_out=models_out, progress=progress)
        report["seconds"] = round(time.perf_counter() - started, 1)
        (out_root / name / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        reports[name] = report
    write_results_doc(reports, skipped, out_root, docs_path, config)
    return {"reports": reports, "skipped": skipped}


def _reusable(path: Path, data_dir: Path, config: TrainConfig, methods, keep_seen: bool, run_settings: dict) -> dict | None:
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    settings = report.get("settings", {})
    same = (
        settings.get("data_hash") == data_hash(data_dir)
        and _same_config(settings.get("train_config", {}), _jsonable(config))
        and settings.get("keep_seen") == keep_seen
        and list(report.get("methods", {})) == list(methods)
        and all(settings.get(key) == value for key, value in run_settings.items())
    )
    return report if same else None


def _same_config(recorded: dict, current: dict) -> bool:
    """Equal, counting a setting the recorded run predates as its default value."""
    defaults = _jsonable(TrainConfig())
    return all(recorded.get(k, defaults.get(k)) == v for k, v in current.items())


def _ratio_cell(entry: dict) -> str:
    """'1.064 [1.056, 1.072]': the ratio and its paired-bootstrap 95% interval."""
    ratio, interval = entry.get("ratio"), entry.get("ratio_95ci") or [None, None]
    if ratio is None:
        return "n/a"
    if interval[0] is None:
        return f"{ratio:.3f}"
    return f"{ratio:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _fmt_ratio(entry: dict) -> str:
    ci = entry["difference_95ci"]
    return (
        f"{_ratio_cell(entry)} ({entry['whisperlite']:.4f} vs {entry['best_baseline']} {entry['baseline']:.4f}; "
        f"difference 95% CI [{ci['low']:+.4f}, {ci['high']:+.4f}])"
    )


def write_results_doc(reports: dict, skipped: dict, out_root: Path, docs_path: Path, config: TrainConfig) -> Path:
    rel = os.path.relpath(out_root, docs_path.parent)
    lines = [
        "# WhisperLite results",
        "",
        "Generated by `whisperlite evaluate --all` "
        f"on {datetime.now(timezone.utc).strftime('%Y-%m-%d')} ({platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}). Per-dataset files (metrics.json with per-method validation scores, "
        f"hyper-parameter selection and training histories; plots) are in `{rel}/<dataset>/`.",
        "",
        "Protocol: per user, interactions in time order; the last is the test case, the one before the "
        "validation case, the rest train (users below the minimum only train). Every method ranks the "
        "**full catalog** for the **same test cases**; items the user interacted with before are excluded. "
        "Hyper-parameters (baseline grids, early stopping) are chosen on validation only. "
        "Model and loss choices: [model.md](model.md).",
        "",
    ]
    closing = [
        "| dataset | n_test | taste's lift R@10 (vs request_only) | R@10 vs best baseline | NDCG@10 vs best baseline |",
        "|---|---:|---|---|---|",
    ]
    for name, report in reports.items():
        settings = report["settings"]
        details = report["details"]
        lines += [f"## {name}", ""]
        lines += [
            f"- {settings['n_items']} items, {settings['n_users']} users with train data; "
            f"{settings['n_train']} train / {settings['n_validation']} validation / {report['n_test']} test interactions "
            f"(users with >= {settings['min_interactions']} interactions are tested).",
            f"- Encoder `{settings['encoder']}`; {100 * settings['simulated_request_share']:.0f}% of requests simulated "
            f"(seed {settings['request_seed']}); data hash `{settings['data_hash']}`.",
        ]
        if "history_only" in details:
            lines.append(f"- history_only chosen on validation: `{json.dumps(details['history_only']['chosen'])}`.")
        if "text_plus_history_mean" in details:
            lines.append(f"- text_plus_history_mean weight chosen on validation: {details['text_plus_history_mean']['weight']}.")
        if "hybrid" in details:
            lines.append(f"- hybrid weight of request_only (vs sasrec) chosen on validation: {details['hybrid']['weight']}.")
        sequence = details.get("whisperlite", {}).get("sequence")
        if sequence:
            chosen = ", ".join(f"{s['text_weight']}: {s['validation']['recall@10']:.4f}" for s in sequence["selection"])
            if test := sequence.get("sign_test"):  # the best fused weight against the network alone
                chosen += f"; the best fused weight against 1.0: +{test['gained']} / -{test['lost']} cases, sign test p {test['p']}"
            lines.append(
                f"- whisperlite's sequence part (SASRec, best epoch {sequence['sasrec']['best_epoch']} of {sequence['sasrec']['epochs']}, "
                f"{sequence['seconds']} s): text weight {sequence['text_weight']} chosen on validation Recall@10 ({chosen}); "
                f"{'shipped' if sequence['shipped'] else 'not shipped (1.0 = the network alone)'}."
            )
        if "sasrec" in details:
            lines.append(f"- sasrec: best epoch {details['sasrec']['best_epoch']} of {details['sasrec']['epochs']}, "
                         f"trained in {details['sasrec']['train_seconds']} s.")
        for variant in ("whisperlite", "request_only", "whisperlite_bce_only", "whisperlite_contrastive_only"):
            d = details.get(variant, {})
            if d.get("trained"):
                loss = d.get("loss", {})
                chosen = f"; taste {d.get('taste')}, user table {d.get('user_table')}, BCE {loss.get('bce_weight')} + InfoNCE {loss.get('contrastive_weight')}"
                selection = d.get("selection")
                if selection:
                    candidates = ", ".join(f"{label} {c['validation_recall@10']:.4f}" for label, c in selection["candidates"].items())
                    chosen += (f" (chosen on validation Recall@10 after {selection['select_epochs']} epochs each: {candidates}; "
                               f"all candidates {d['train_seconds_all_candidates']} s)")
                lines.append(f"- {variant}: best epoch {d['best_epoch']} of {d['epochs']}, trained in {d['train_seconds']} s{chosen}.")
        if non_personal(details.get("whisperlite", {})):
            lines.append(
                "- **whisperlite reads no user signal on this dataset**: validation chose no taste and no sequence part was "
                "shipped, so its row is the request-only network, not a personalized model (its taste's lift is 1 by construction)."
            )
        without_user = details.get("whisperlite", {}).get("test_without_user")
        if without_user:
            lines.append(
                f"- Diagnostic: the trained whisperlite model with the user removed (no taste, no sequence: its text-only serving path) scores "
                f"Recall@10 {without_user['recall@10']:.4f}, NDCG@10 {without_user['ndcg@10']:.4f}."
            )
        diag = report.get("diagnostics", {})
        if diag:
            lines.append(
                f"- Test targets never seen in train: {100 * diag['test_targets_unseen_in_train']:.1f}%; "
                f"median train history of test users: {diag['median_train_history_of_test_users']:.0f} items."
            )
        lines += ["", markdown_table(report["methods"]), "", f"![{name} metrics]({rel}/{name}/metrics.png)", ""]
        comparison = report.get("comparison")
        if comparison:
            lines.append(f"WhisperLite vs the best baseline per metric: Recall@10 {_fmt_ratio(comparison['recall@10'])}; "
                         f"NDCG@10 {_fmt_ratio(comparison['ndcg@10'])}.")
            lift = comparison.get("taste_lift")
            if lift:
                lines.append(f"Taste's lift (whisperlite / request_only): Recall@10 {_fmt_ratio(lift['recall@10'])}; "
                             f"NDCG@10 {_fmt_ratio(lift['ndcg@10'])}.")
            lines.append("")
            closing.append(
                f"| {name}{' (non-personal: no taste chosen)' if non_personal(details.get('whisperlite', {})) else ''} | {report['n_test']} | {_ratio_cell(lift['recall@10']) if lift else 'n/a'} "
                f"| {_ratio_cell(comparison['recall@10'])} (vs {comparison['recall@10']['best_baseline']}) "
                f"| {_ratio_cell(comparison['ndcg@10'])} (vs {comparison['ndcg@10']['best_baseline']}) |"
            )
        if "whisperlite" in details and details["whisperlite"].get("trained"):
            lines += [f"![{name} training curves]({rel}/{name}/curves_whisperlite.png)", ""]
    if skipped:
        lines += ["## Datasets not evaluated", ""]
        lines += [f"- **{name}**: {reason}" for name, reason in skipped.items()]
        lines.append("")
    lines += [
        "## Closing note: WhisperLite vs the best baseline",
        "",
        "Ratio = whisperlite / best of (" + ", ".join(BASELINES) + ") on the test metric; the best baseline is "
        "picked per metric after the fact, the strictest comparison. Taste's lift = whisperlite / request_only (the same "
        "network and training without any user signal). Brackets: paired-bootstrap 95% intervals of the ratio "
        "(2,000 resamples of the same test cases).",
        "",
        *closing,
        "",
    ]
    analysis = out_root / ANALYSIS
    if analysis.is_file():
        lines += [analysis.read_text().strip(), ""]
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    docs_path.write_text("\n".join(lines))
    print(f"wrote {docs_path}")
    return docs_path
