"""Side-by-side run of the catalog store options at 100k x 512, COSINE, with a 10-valued category.

For each store: ingest rate (1,000-row calls), build (end of ingest until the first search answers),
search p50/p99 and recall@10 against exact search, the same with a category filter, start-up (reopen an
existing store until the first search answers) and memory (what the store adds: the benchmark process's
RSS growth after the data exists, plus the milvus-lite or Milvus server process). One query per call; medians and 99th percentiles in ms.

    python benchmarks/catalog_stores.py                 # every variant, then the table with ratios vs numpy
    python benchmarks/catalog_stores.py --variants numpy,lite25-autoindex --n 20000
    python benchmarks/catalog_stores.py --variant lite3-ivf_flat   # one variant, JSON on stdout

Variants that cannot live in the project's .venv (milvus-lite 3.2.2, the `milvus` 2.3.5 server) run
under throwaway virtual environments made by benchmarks/catalog_venvs.sh; the driver runs each variant
in a subprocess of the right interpreter and reads its JSON. This file therefore imports only numpy,
psutil and pymilvus at the top, and the project's code only in the "catalog" variant.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
VENV_ROOT = Path(os.environ.get("WL_CATALOG_BENCH_VENVS", "/tmp/wl-catalog-bench"))
SEED = 20261125
CLUSTERS = 1000
CATEGORIES = 10
CHUNK = 1000
K = 10

# name -> (interpreter: "project" | a venv under VENV_ROOT, description)
VARIANTS = {
    "numpy": ("project", "numpy exact (in-process matrix)"),
    "lite25-autoindex": ("project", "milvus-lite 2.5.1 AUTOINDEX"),
    "lite25-flat": ("project", "milvus-lite 2.5.1 FLAT"),
    "lite25-ivf_flat": ("project", "milvus-lite 2.5.1 IVF_FLAT nlist 1024 nprobe 64"),
    "catalog": ("project", "catalog, Milvus search: milvus-lite 2.5.1 AUTOINDEX + FLAT copy for filters"),
    "catalog-memory": ("project", "catalog default: milvus-lite 2.5.1 store + in-process index (HNSW graph unfiltered at 50k+, exact filtered)"),
    "lite3-ivf_flat": ("lite3", "milvus-lite 3.2.2 (pure Python) IVF_FLAT"),
    "milvus23-hnsw": ("milvus23", "`milvus` 2.3.5 embedded server HNSW M16 ef64"),
}


# ---- data --------------------------------------------------------------------------------------------


def make_data(n: int, dim: int, queries: int, vector_files: list[Path] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian clusters on the unit sphere; queries drawn like the items. Same arrays in every venv.

    With `vector_files` (.npy matrices, e.g. the trainer's embedding cache), real vectors instead: their rows
    shuffled, `queries` of them held out as the queries and up to `n` of the others as the items.
    """
    rng = np.random.default_rng(SEED)
    if vector_files:
        pool = np.concatenate([np.load(path).astype(np.float32) for path in vector_files])
        pool = pool[rng.permutation(len(pool))]
        pool /= np.linalg.norm(pool, axis=1, keepdims=True)
        query_vectors, vectors = pool[:queries], np.ascontiguousarray(pool[queries : queries + n])
        return vectors, rng.integers(0, CATEGORIES, len(vectors)), query_vectors
    centres = rng.normal(size=(CLUSTERS, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, CLUSTERS, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    categories = rng.integers(0, CATEGORIES, n)
    query_vectors = centres[rng.integers(0, CLUSTERS, queries)] + 0.6 * rng.normal(size=(queries, dim)).astype(np.float32)
    query_vectors /= np.linalg.norm(query_vectors, axis=1, keepdims=True)
    return vectors, categories, query_vectors


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    scores = queries @ vectors.T
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    return np.argsort(-scores, axis=1)[:, :K]


def _rss_mb(process: psutil.Process) -> float:
    try:
        return process.memory_info().rss / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def store_rss_mb(baseline_mb: float) -> float:
    """Memory the store adds: this process's growth since `baseline_mb` (in-process stores: numpy,
    milvus-lite 3.2.2) plus every descendant process (the milvus-lite 2.5.1 binary, the Milvus server)."""
    this = psutil.Process()
    return max(_rss_mb(this) - baseline_mb, 0.0) + sum(_rss_mb(child) for child in this.children(recursive=True))


def cpu_seconds() -> float:
    """User + system CPU of this process and its descendants (a store's server process works for us too)."""
    this = psutil.Process()
    total = 0.0
    for process in [this, *this.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def percentiles(latencies: list[float]) -> tuple[float, float]:
    ms = np.asarray(latencies) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def measure_searches(search, query_vectors: np.ndarray, truth: np.ndarray, truth_filtered: np.ndarray) -> dict:
    """search(query, category or None) -> list of row indices. Warm-up calls are not counted."""
    for q in query_vectors[:5]:
        search(q, None)
        search(q, 0)
    results = {}
    for label, filtered, reference in (("search", False, truth), ("filtered", True, truth_filtered)):
        latencies, found = [], []
        cpu_before = cpu_seconds()
        for i, q in enumerate(query_vectors):
            started = time.perf_counter()
            hits = search(q, i % CATEGORIES if filtered else None)
            latencies.append(time.perf_counter() - started)
            found.append(hits)
        cpu_ms = (cpu_seconds() - cpu_before) * 1e3 / len(query_vectors)
        p50, p99 = percentiles(latencies)
        results[label] = {"p50_ms": p50, "p99_ms": p99, "recall": recall(found, reference), "cpu_ms": cpu_ms}
    return results


# ---- variants ----------------------------------------------------------------------------------------


def run_numpy(vectors, categories, query_vectors, truth, truth_filtered, work: Path, baseline_mb: float) -> dict:
    started = time.perf_counter()
    np.save(work / "vectors.npy", vectors)
    np.save(work / "categories.npy", categories)
    ingest_seconds = time.perf_counter() - started
    started = time.perf_counter()
    matrix = np.load(work / "vectors.npy")
    cats = np.load(work / "categories.npy")
    # Per category a contiguous copy of its rows (what an in-process filtered index would keep).
    rows_of = {c: np.flatnonzero(cats == c) for c in range(CATEGORIES)}
    matrix_of = {c: np.ascontiguousarray(matrix[rows]) for c, rows in rows_of.items()}

    def search(q, category):
        rows, block = (None, matrix) if category is None else (rows_of[category], matrix_of[category])
        scores = block @ q
        top = np.argpartition(-scores, K)[:K]
        top = top[np.argsort(-scores[top])]
        return (top if rows is None else rows[top]).tolist()

    search(query_vectors[0], None)
    startup = time.perf_counter() - started
    return {
        "ingest_rows_s": len(vectors) / ingest_seconds,  # np.save of the matrix: an upper bound, not an upsert path
        "build_s": 0.0,
        "startup_s": startup,
        **measure_searches(search, query_vectors, truth, truth_filtered),
        "rss_mb": store_rss_mb(baseline_mb),
    }


def _orm_search(collection, param: dict):
    def search(q, category):
        expr = f'category == "c{category}"' if category is not None else None
        result = collection.search(
            data=[q.tolist()], anns_field="vector", param=param, limit=K, expr=expr, output_fields=[], consistency_level="Bounded"
        )
        return [int(hit.id[1:]) for hit in result[0]]

    return search


def run_orm(variant: str, vectors, categories, query_vectors, truth, truth_filtered, work: Path, baseline_mb: float) -> dict:
    """milvus-lite 2.5.1 / 3.2.2 and the `milvus` 2.3.5 server through the pymilvus ORM (in every version)."""
    from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, connections, utility

    index = {
        "lite25-autoindex": ({"index_type": "AUTOINDEX", "metric_type": "COSINE", "params": {}}, {}),
        "lite25-flat": ({"index_type": "FLAT", "metric_type": "COSINE", "params": {}}, {}),
        "lite25-ivf_flat": ({"index_type": "IVF_FLAT", "metric_type": "COSINE", "params": {"nlist": 1024}}, {"nprobe": 64}),
        "lite3-ivf_flat": ({"index_type": "IVF_FLAT", "metric_type": "COSINE", "params": {"nlist": 1024}}, {"nprobe": 64}),
        "milvus23-hnsw": ({"index_type": "HNSW", "metric_type": "COSINE", "params": {"M": 16, "efConstruction": 200}}, {"ef": 64}),
    }[variant]
    index_params, search_params = index
    param = {"metric_type": "COSINE", "params": search_params}
    server = None

    def start() -> str:
        nonlocal server
        if variant.startswith("milvus23"):
            from milvus import default_server

            server = default_server
            server.set_base_dir(str(work / "milvus-server"))
            server.start()
            return f"http://127.0.0.1:{server.listen_port}"
        return str(work / "bench.db")

    def stop() -> None:
        connections.disconnect("bench")
        if server is not None:
            server.stop()
        elif variant.startswith("lite"):
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(str(work / "bench.db"))

    connections.connect("bench", uri=start())
    schema = CollectionSchema(
        [
            FieldSchema("id", DataType.VARCHAR, is_primary=True, max_length=16),
            FieldSchema("category", DataType.VARCHAR, max_length=8),
            FieldSchema("vector", DataType.FLOAT_VECTOR, dim=vectors.shape[1]),
        ]
    )
    collection = Collection("bench", schema, using="bench", consistency_level="Strong")
    started = time.perf_counter()
    for start_row in range(0, len(vectors), CHUNK):
        rows = range(start_row, min(len(vectors), start_row + CHUNK))
        collection.insert([[f"i{j}" for j in rows], [f"c{categories[j]}" for j in rows], vectors[start_row : start_row + CHUNK]])
    ingest_seconds = time.perf_counter() - started
    started = time.perf_counter()
    collection.flush()
    collection.create_index("vector", index_params)
    utility.wait_for_index_building_complete("bench", using="bench")
    collection.load()
    search = _orm_search(collection, param)
    search(query_vectors[0], None)
    build = time.perf_counter() - started
    results = measure_searches(search, query_vectors, truth, truth_filtered)
    rss = store_rss_mb(baseline_mb)
    stop()
    started = time.perf_counter()
    connections.connect("bench", uri=start())
    collection = Collection("bench", using="bench")
    collection.load()
    _orm_search(collection, param)(query_vectors[0], None)
    startup = time.perf_counter() - started
    stop()
    return {"ingest_rows_s": len(vectors) / ingest_seconds, "build_s": build, "startup_s": startup, **results, "rss_mb": rss}


def run_catalog(vectors, categories, query_vectors, truth, truth_filtered, work: Path, baseline_mb: float) -> dict:
    """The catalog's own store code and collection layout, as `whisperlite serve catalog` creates it."""
    sys.path.insert(0, str(REPO))
    from whisperlite.services.catalog.filters import SearchFilter
    from whisperlite.services.catalog.items import ItemRecord
    from whisperlite.services.catalog.store import CollectionSpec, MilvusStore

    uri = str(work / "catalog.db")
    store = MilvusStore(uri, "items", timeout_seconds=120)
    store.open(CollectionSpec(dimension=vectors.shape[1], encoder_model="bench"))
    started = time.perf_counter()
    records = [ItemRecord(item_id=f"i{j}", title=f"item {j}", category=f"c{categories[j]}", vector=vectors[j]) for j in range(len(vectors))]
    store.upsert(records)
    ingest_seconds = time.perf_counter() - started

    def make_search(s: MilvusStore):
        def search(q, category):
            search_filter = SearchFilter(categories=(f"c{category}",)) if category is not None else SearchFilter()
            return [int(hit.record.item_id[1:]) for hit in s.search(q, K, search_filter)]

        return search

    started = time.perf_counter()
    make_search(store)(query_vectors[0], None)
    build = time.perf_counter() - started
    results = measure_searches(make_search(store), query_vectors, truth, truth_filtered)
    rss = store_rss_mb(baseline_mb)
    store.close()
    started = time.perf_counter()
    store = MilvusStore(uri, "items", timeout_seconds=120)
    store.open()  # loads and warms up both vector fields, as the service does before SERVING
    startup = time.perf_counter() - started
    store.close()
    return {"ingest_rows_s": len(vectors) / ingest_seconds, "build_s": build, "startup_s": startup, **results, "rss_mb": rss}


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def run_catalog_memory(vectors, categories, query_vectors, truth, truth_filtered, work: Path, baseline_mb: float) -> dict:
    """The catalog's default search path: its in-process VectorIndex (with the catalog's default graph
    settings), written after the milvus-lite store. Searches are measured once the graph serves (build_s:
    from the end of ingest until then).

    Besides the common columns, numpy exact search runs in this process interleaved with the index,
    query by query, so the ratios below share one process and one moment of the machine's load:
    unfiltered, one category, one category and a price range, and batches of 64 queries in one call.
    """
    sys.path.insert(0, str(REPO))
    from whisperlite.services.catalog.filters import SearchFilter
    from whisperlite.services.catalog.graph_index import GraphSettings
    from whisperlite.services.catalog.items import ItemRecord
    from whisperlite.services.catalog.store import CollectionSpec, MilvusStore
    from whisperlite.services.catalog.vector_index import VectorIndex


    rng = np.random.default_rng(SEED + 1)
    prices = rng.uniform(0, 100, len(vectors)).round(2)
    uri = str(work / "catalog.db")
    store = MilvusStore(uri, "items", timeout_seconds=120)
    store.open(CollectionSpec(dimension=vectors.shape[1], encoder_model="bench"))
    index = VectorIndex(vectors.shape[1], graph=GraphSettings())
    records = [
        ItemRecord(item_id=f"i{j}", title=f"item {j}", category=f"c{categories[j]}", price=float(prices[j]), vector=vectors[j])
        for j in range(len(vectors))
    ]
    started = time.perf_counter()
    for start_row in range(0, len(records), CHUNK):  # as the catalog writes: the store first, then the index
        chunk = records[start_row : start_row + CHUNK]
        store.upsert(chunk)
        index.upsert(chunk)
    ingest_seconds = time.perf_counter() - started
    del records
    graph_seconds = wait_for_graph(index)

    def search(q, category):
        search_filter = SearchFilter(categories=(f"c{category}",)) if category is not None else SearchFilter()
        return [int(hit.record.item_id[1:]) for hit in index.search_many(q[np.newaxis], K, search_filter)[0]]

    results = measure_searches(search, query_vectors, truth, truth_filtered)
    results["side_by_side"] = side_by_side(index, vectors, categories, prices, query_vectors)
    rss = store_rss_mb(baseline_mb)
    store.close()
    del index
    # Start-up: reopen the store (load and warm-up: the catalog is SERVING after this, searching Milvus),
    # then the index is built from a scan of the store, which the catalog does in the background.
    before_mb = _rss_mb(psutil.Process())
    store = MilvusStore(uri, "items", timeout_seconds=120)
    startup = timed(store.open)
    index = VectorIndex(vectors.shape[1], graph=GraphSettings())
    scan_seconds = timed(lambda: index.replace_all(store.scan()))
    graph_after_scan_seconds = wait_for_graph(index)
    index_mb = _rss_mb(psutil.Process()) - before_mb
    assert len(index) == len(vectors)
    store.close()
    return {
        "ingest_rows_s": len(vectors) / ingest_seconds, "build_s": graph_seconds, "startup_s": startup, **results, "rss_mb": rss,
        "index_load_s": scan_seconds, "graph_after_scan_s": graph_after_scan_seconds, "graph": index.graph_ready,
        "index_rss_mb": index_mb, "index_array_mb": index.nbytes / 2**20,
    }


def wait_for_graph(index) -> float:
    """Seconds until unfiltered searches walk the index's graph; 0.0 below the graph's row floor (exact search)."""
    started = time.perf_counter()
    if not index.wait_for_graph(timeout=600):
        return 0.0
    return time.perf_counter() - started


def side_by_side(index, vectors, categories, prices, query_vectors) -> dict:
    """p50/p99 of the index and of numpy exact search, interleaved query by query in this process."""
    from whisperlite.services.catalog.filters import SearchFilter  # the project is on sys.path (run_catalog_memory)

    matrix = np.ascontiguousarray(vectors)
    rows_of = {c: np.flatnonzero(categories == c) for c in range(CATEGORIES)}
    matrix_of = {c: np.ascontiguousarray(matrix[rows]) for c, rows in rows_of.items()}
    price_of = {c: prices[rows] for c, rows in rows_of.items()}
    low, high = 20.0, 60.0

    def numpy_top(block: np.ndarray, q: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        scores = block @ q
        if mask is not None:
            scores = np.where(mask, scores, -np.inf)
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top])]

    cases = {
        "unfiltered": (SearchFilter(), lambda q, c: numpy_top(matrix, q)),
        "category": (None, lambda q, c: numpy_top(matrix_of[c], q)),
        "category_price": (None, lambda q, c: numpy_top(matrix_of[c], q, (price_of[c] >= low) & (price_of[c] <= high))),
    }
    out = {}
    for name, (fixed_filter, numpy_search) in cases.items():
        mine, theirs = [], []
        for i, q in enumerate(query_vectors):
            c = i % CATEGORIES
            search_filter = fixed_filter or SearchFilter(
                categories=(f"c{c}",), **({"min_price": low, "max_price": high} if name == "category_price" else {})
            )
            mine.append(timed(lambda: index.search_many(q[np.newaxis], K, search_filter)))
            theirs.append(timed(lambda: numpy_search(q, c)))
        out[name] = {"index": percentiles(mine), "numpy": percentiles(theirs)}
    batch = query_vectors[:64]
    mine = [timed(lambda: index.search_many(batch, 50, SearchFilter())) / len(batch) for _ in range(20)]
    theirs = [
        timed(lambda: np.argpartition(-(batch @ matrix.T), 50, axis=1)[:, :50]) / len(batch) for _ in range(20)
    ]
    out["batch64_top50_per_query"] = {"index": percentiles(mine), "numpy": percentiles(theirs)}
    return out


def run_variant(variant: str, n: int, dim: int, queries: int, vector_files: list[Path] | None = None) -> dict:
    vectors, categories, query_vectors = make_data(n, dim, queries, vector_files)
    n, dim = vectors.shape
    truth = exact_top_k(vectors, query_vectors)
    masks = np.stack([categories == (i % CATEGORIES) for i in range(queries)])
    truth_filtered = exact_top_k(vectors, query_vectors, masks)
    del masks
    work = Path(tempfile.mkdtemp(prefix=f"wl-bench-{variant}-"))
    baseline_mb = _rss_mb(psutil.Process())
    data = (vectors, categories, query_vectors, truth, truth_filtered, work, baseline_mb)
    try:
        if variant == "numpy":
            result = run_numpy(*data)
        elif variant == "catalog":
            result = run_catalog(*data)
        elif variant == "catalog-memory":
            result = run_catalog_memory(*data)
        else:
            result = run_orm(variant, *data)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"variant": variant, "n": n, "dim": dim, "queries": queries, **result}


# ---- driver ------------------------------------------------------------------------------------------


def interpreter(variant: str) -> str:
    env = VARIANTS[variant][0]
    if env == "project":
        return sys.executable
    python = VENV_ROOT / env / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} is missing: run benchmarks/catalog_venvs.sh {VENV_ROOT} first")
    return str(python)


def cpu(measured: dict) -> str:
    return f"{measured['cpu_ms']:.1f}"


def table(results: list[dict]) -> str:
    base = next((r for r in results if r["variant"] == "numpy"), None)

    def ratio(r: dict, key: str) -> str:
        if base is None or r is base or "error" in r:
            return ""
        return f" ({base[key]['p50_ms'] / r[key]['p50_ms']:.2f}x)"

    lines = [
        "| store | ingest rows/s | build s | search p50 / p99 ms (x numpy) | CPU ms | recall@10 "
        "| filtered p50 / p99 ms (x numpy) | CPU ms | filtered recall@10 | start-up s | store RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        name = VARIANTS[r["variant"]][1]
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | | | | | |")
            continue
        s, f = r["search"], r["filtered"]
        ingest = "-" if r["variant"] == "numpy" else f"{r['ingest_rows_s']:,.0f}"
        lines.append(
            f"| {name} | {ingest} | {r['build_s']:.1f} | {s['p50_ms']:.1f} / {s['p99_ms']:.1f}{ratio(r, 'search')} | {cpu(s)} | {s['recall']:.3f} "
            f"| {f['p50_ms']:.1f} / {f['p99_ms']:.1f}{ratio(r, 'filtered')} | {cpu(f)} | {f['recall']:.3f} | {r['startup_s']:.1f} | {r['rss_mb']:,.0f} |"
        )
    lines.append(
        "(x numpy: numpy p50 / this p50, so > 1 is faster than numpy; one query per call; "
        "CPU ms: per search, this process and the store's server process together)"
    )
    for r in results:
        if "side_by_side" not in r:
            continue
        lines += [
            "",
            f"{VARIANTS[r['variant']][1]}: after the store opens ({r['startup_s']:.1f} s, then SERVING on Milvus search), the index is "
            f"scanned from the store and built in {r['index_load_s']:.1f} s"
            + (f", its search graph {r['graph_after_scan_s']:.1f} s later" if r.get("graph") else " (no graph: below its row floor)")
            + f"; index arrays {r['index_array_mb']:,.0f} MB, "
            f"process growth while building it {r['index_rss_mb']:,.0f} MB",
            "| in one process, interleaved | index p50 / p99 ms | numpy exact p50 / p99 ms | index p50 / numpy p50 |",
            "|---|---|---|---|",
        ]
        for name, case in r["side_by_side"].items():
            (mine50, mine99), (theirs50, theirs99) = case["index"], case["numpy"]
            lines.append(f"| {name} | {mine50:.2f} / {mine99:.2f} | {theirs50:.2f} / {theirs99:.2f} | {mine50 / theirs50:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant in this interpreter and print its JSON")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants for the driver")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--vectors", type=Path, action="append", default=[],
        help="a .npy matrix of real vectors (repeatable; e.g. the trainer's embedding cache): items and queries come from them, not clusters",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds one variant may take")
    parser.add_argument(
        "--blas-threads", type=int, default=1,
        help="OPENBLAS_NUM_THREADS of every variant: the catalog's --blas-threads default, and what a shared 2-core machine affords",
    )
    parser.add_argument("--out", type=Path, help="also write the combined JSON here")
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.n, args.dim, args.queries, args.vectors)))
        return
    results = []
    for variant in args.variants.split(","):
        command = [interpreter(variant), __file__, "--variant", variant, "--n", str(args.n), "--dim", str(args.dim), "--queries", str(args.queries)]
        command += [arg for path in args.vectors for arg in ("--vectors", str(path))]
        print(f"running {variant} ...", file=sys.stderr, flush=True)
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=args.timeout, cwd=REPO,
                env={**os.environ, "OPENBLAS_NUM_THREADS": str(args.blas_threads)},
            )
            if done.returncode != 0:
                raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, RuntimeError, json.JSONDecodeError, IndexError) as error:
            result = {"variant": variant, "error": str(error)[:200]}
        print(json.dumps(result), file=sys.stderr, flush=True)
        results.append(result)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    shape = f"{results[0].get('n', args.n):,} x {results[0].get('dim', args.dim)}"
    source = "real vectors from " + ", ".join(path.name for path in args.vectors) if args.vectors else f"{CLUSTERS} Gaussian clusters"
    print(
        f"{shape} COSINE ({source}), {CATEGORIES}-valued category filter, {args.queries} queries each, one per call, "
        f"{args.blas_threads} BLAS thread(s)"
    )
    print(table(results))


if __name__ == "__main__":
    main()
