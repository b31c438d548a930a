"""Ranker domain metrics (request counts and latencies come from whisperlite.services.common.interceptors)."""

from prometheus_client import Counter, Histogram

STAGE_SECONDS = Histogram(
    "whisperlite_ranker_stage_seconds",
    "Time spent in each stage of a Recommend call.",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
RECOMMENDATIONS = Counter(
    "whisperlite_ranker_recommendations_total",
    "Recommend calls served, by the evidence that personalized them.",
    ["path"],
)
