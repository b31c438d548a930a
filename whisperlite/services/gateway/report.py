"""precision@k and nDCG@k of personalized vs non-personal lists, from the stored judgements.

A list's metrics are computed on its condensed ranking (Sakai 2007): the judged items in the order
they were shown, unjudged ones left out, so a person who judged only the top three still yields a
measurement rather than zeros for what they did not look at. Relevance is binary; nDCG's ideal ranking
is the list's own judged items, relevant first. Intervals are 95% percentile bootstraps over lists
(scipy.stats.bootstrap); the difference is paired over comparisons where both sides were judged.
"""

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from whisperlite.services.gateway.judgements import SIDES, Judgement

CONFIDENCE = 0.95
RESAMPLES = 2000


def precision_at_k(relevance: Sequence[bool], k: int) -> float:
    top = list(relevance)[:k]
    return sum(top) / len(top) if top else 0.0


def ndcg_at_k(relevance: Sequence[bool], k: int) -> float:
    def dcg(gains: Sequence[bool]) -> float:
        return sum(gain / math.log2(position + 2) for position, gain in enumerate(list(gains)[:k]))

    ideal = dcg(sorted(relevance, reverse=True))
    return dcg(relevance) / ideal if ideal > 0 else 0.0


def condensed_lists(judgements: Sequence[Judgement]) -> dict[tuple[int, str], list[bool]]:
    """(comparison, side) -> relevance of its judged items in shown order."""
    by_list: dict[tuple[int, str], list[tuple[int, bool]]] = defaultdict(list)
    for judgement in judgements:
        by_list[(judgement.comparison_id, judgement.side)].append((judgement.rank, judgement.relevant))
    return {key: [relevant for _, relevant in sorted(ranked)] for key, ranked in by_list.items()}


@dataclass(frozen=True)
class Estimate:
    lists: int
    mean: float
    low: float  # nan when fewer than two lists (no interval)
    high: float


def estimate(values: Sequence[float], seed: int = 0) -> Estimate:
    if not values:
        return Estimate(0, math.nan, math.nan, math.nan)
    mean = float(np.mean(values))
    if len(values) < 2 or len(set(values)) == 1:  # no spread to resample: the interval is the point or undefined
        bound = mean if len(values) >= 2 else math.nan
        return Estimate(len(values), mean, bound, bound)
    result = stats.bootstrap(
        (np.asarray(values, dtype=float),), np.mean, confidence_level=CONFIDENCE, n_resamples=RESAMPLES, method="percentile", rng=seed
    )
    return Estimate(len(values), mean, float(result.confidence_interval.low), float(result.confidence_interval.high))


METRICS = {"precision": precision_at_k, "ndcg": ndcg_at_k}


@dataclass(frozen=True)
class Report:
    k: int
    judgements: int
    comparisons: int
    users: int
    by_side: dict[str, dict[str, Estimate]]  # side -> metric -> estimate
    difference: dict[str, Estimate]  # metric -> personalized minus non-personal, paired


def build_report(judgements: Sequence[Judgement], k: int) -> Report:
    if k < 1:
        raise ValueError(f"k: must be at least 1, got {k}")
    lists = condensed_lists(judgements)
    per_list = {key: {name: metric(relevance, k) for name, metric in METRICS.items()} for key, relevance in lists.items()}
    by_side = {
        side: {name: estimate([values[name] for (_, s), values in per_list.items() if s == side]) for name in METRICS} for side in SIDES
    }
    paired = sorted({comparison for comparison, _ in per_list if all((comparison, side) in per_list for side in SIDES)})
    difference = {
        name: estimate([per_list[(c, "personalized")][name] - per_list[(c, "non_personal")][name] for c in paired]) for name in METRICS
    }
    return Report(
        k=k,
        judgements=len(judgements),
        comparisons=len({j.comparison_id for j in judgements}),
        users=len({j.user_id for j in judgements}),
        by_side=by_side,
        difference=difference,
    )


def _interval(value: Estimate) -> str:
    return "n/a (fewer than 2 lists)" if math.isnan(value.low) else f"[{value.low:.3f}, {value.high:.3f}]"


def format_report(report: Report) -> str:
    lines = [
        f"{report.judgements} judgements of {report.comparisons} comparisons by {report.users} user(s); "
        f"metrics at k={report.k} on condensed lists, {CONFIDENCE:.0%} bootstrap intervals",
        f"{'metric':<14}{'side':<16}{'lists':>6}  {'mean':>6}  interval",
    ]
    for name in METRICS:
        for side in SIDES:
            value = report.by_side[side][name]
            mean = "-" if value.lists == 0 else f"{value.mean:.3f}"
            lines.append(f"{name + '@' + str(report.k):<14}{side:<16}{value.lists:>6}  {mean:>6}  {_interval(value) if value.lists else ''}")
        delta = report.difference[name]
        mean = "-" if delta.lists == 0 else f"{delta.mean:+.3f}"
        lines.append(f"{name + '@' + str(report.k):<14}{'difference':<16}{delta.lists:>6}  {mean:>6}  {_interval(delta) if delta.lists else ''}")
    return "\n".join(lines)


def plot_report(report: Report, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    width = 0.38
    for offset, side in zip((-width / 2, width / 2), SIDES):
        values = [report.by_side[side][name] for name in METRICS]
        means = [0.0 if v.lists == 0 else v.mean for v in values]
        errors = [
            [0.0 if math.isnan(v.low) else v.mean - v.low for v in values],
            [0.0 if math.isnan(v.high) else v.high - v.mean for v in values],
        ]
        positions = [i + offset for i in range(len(METRICS))]
        axis.bar(positions, means, width, yerr=errors, capsize=4, label=f"{side} (lists: {values[0].lists})")
    axis.set_xticks(range(len(METRICS)), [f"{name}@{report.k}" for name in METRICS])
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("mean over judged lists")
    axis.set_title(f"Relevance judgements: {report.judgements} from {report.users} user(s)")
    axis.legend(loc="upper right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
