"""Catalog domain metrics (the per-RPC ones come from whisperlite.services.common.interceptors)."""

from prometheus_client import Gauge, Histogram

ITEMS = Gauge("whisperlite_catalog_items", "Items stored in the catalog collection.")
SEARCH_SECONDS = Histogram(
    "whisperlite_catalog_search_seconds",
    "Time of one vector search in the store; strategy is ann (the ANN index) or exact (brute force under a category/price filter).",
    ["strategy"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
