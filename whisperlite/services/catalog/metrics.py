"""Catalog domain metrics (the per-RPC ones come from whisperlite.services.common.interceptors)."""

from prometheus_client import Counter, Gauge, Histogram

ITEMS = Gauge("whisperlite_catalog_items", "Items stored in the catalog collection.")
SEARCH_SECONDS = Histogram(
    "whisperlite_catalog_search_seconds",
    "Time of one vector search; strategy is memory (the in-process exact index), graph (its HNSW graph, unfiltered searches at scale), or in Milvus ann (the ANN index) or exact (brute force under a category/price filter).",
    ["strategy"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
STORE_UP = Gauge("whisperlite_catalog_store_up", "1 while the store answers its probe, 0 while it is down and being reopened.")
STORE_REOPENS = Counter("whisperlite_catalog_store_reopens_total", "Times the store was found dead or wedged and reopened.")
