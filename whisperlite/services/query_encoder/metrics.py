"""Encoder domain metrics (the per-RPC ones come from whisperlite.services.common.interceptors)."""

from prometheus_client import Counter, Histogram

BATCH_SIZE = Histogram(
    "whisperlite_encoder_batch_size",
    "Inputs per model call after micro-batching concurrent requests.",
    ["kind"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
INFERENCE_SECONDS = Histogram(
    "whisperlite_encoder_inference_seconds",
    "Time of one model call on a merged batch.",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CACHE_HITS = Counter("whisperlite_encoder_cache_hits_total", "Texts served from the query cache.")
CACHE_MISSES = Counter("whisperlite_encoder_cache_misses_total", "Texts not in the query cache, sent to the model.")
BATCH_COST = Histogram(
    "whisperlite_encoder_batch_tokens",
    "Cost of one model call: inputs x the longest input's tokens (the padded batch), bounded by --max-batch-tokens.",
    ["kind"],
    buckets=(16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
)
