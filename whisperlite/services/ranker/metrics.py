"""Ranker domain metrics (request counts and latencies come from whisperlite.services.common.interceptors)."""

from prometheus_client import Counter, Gauge, Histogram

STAGE_SECONDS = Histogram(
    "whisperlite_ranker_stage_seconds",
    "Time spent in each stage of a Recommend call.",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
QUERY_CACHE_LOOKUPS = Counter(
    "whisperlite_ranker_query_cache_lookups_total",
    "Request texts looked up in the ranker's query-vector cache, by outcome (a hit makes no Embed call).",
    ["outcome"],
)
RECOMMENDATIONS = Counter(
    "whisperlite_ranker_recommendations_total",
    "Recommend calls served, by the evidence that personalized them.",
    ["path"],
)

# Per model version (a handful at a time: live, candidate), so a canary can be compared with the live model.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
MODEL_REQUESTS = Counter(
    "whisperlite_ranker_model_requests_total",
    "Recommend calls answered, by the model version that produced the answer ('none': text-only, no model).",
    ["version"],
)
MODEL_SECONDS = Histogram(
    "whisperlite_ranker_model_seconds",
    "Recommend latency by the model version that produced the answer (encode, personalize, search, score).",
    ["version"],
    buckets=REQUEST_BUCKETS,
)
SHADOW_OVERLAP = Histogram(
    "whisperlite_ranker_shadow_overlap",
    "overlap@k of a shadow candidate's top k with the live answer's top k (1: same items).",
    ["live", "candidate"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0),
)
SHADOW_SECONDS = Histogram(
    "whisperlite_ranker_shadow_seconds",
    "Time a shadow candidate took to answer a request in the background (personalize, search, score).",
    ["candidate"],
    buckets=REQUEST_BUCKETS,
)
SHADOW_OUTCOMES = Counter(
    "whisperlite_ranker_shadow_total",
    "Shadow scorings by outcome: scored, failed, or skipped because too many were already running.",
    ["candidate", "outcome"],
)
MODEL_ROLE = Gauge(
    "whisperlite_ranker_model_role",
    "Loaded model versions by role; the value is the share of users in percent for a candidate or shadow, 1 for live.",
    ["version", "role"],
)
MODEL_LOADS = Counter(
    "whisperlite_ranker_model_loads_total",
    "Model versions loaded and validated ('loaded') or refused ('refused').",
    ["outcome"],
)
DEPENDENCY_UP = Gauge(
    "whisperlite_ranker_dependency_up",
    "1 while a dependency (query encoder, catalog) passes its health checks, 0 once it failed enough in a row "
    "to turn the ranker's health NOT_SERVING.",
    ["dependency"],
)
