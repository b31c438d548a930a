"""An exact in-process vector index of the catalog, kept beside its Milvus store of record.

Why: milvus-lite spends 7.5-15 ms of CPU per search (docs/performance.md), which caps Recommend
throughput at ~130 searches/s on two cores; one float32 matrix product over the same vectors is
exact (recall 1.0, filters included) and costs a fraction of that. Milvus stays the store of record:
the catalog writes there first and applies the write here after, and builds this index from the
store when it opens one.

Layout. Vectors are one contiguous float32 matrix with spare capacity (grown by doubling), beside
numpy arrays of each row's category code, price and has_price and a list of its record (without the
vector, which lives only in the matrix). The first rows are grouped by category, so a category
filter searches contiguous slices: a search over one category of ten at 100k x 384 costs what numpy
costs over a contiguous copy of that category, where gathering its rows from an unordered matrix
costs 5-6x more. New and replaced rows are appended to an unordered tail (a category filter masks
the tail's rows); replaced and deleted rows become dead rows, scored -inf. When the tail and the dead
rows pass a fraction of the index, a compaction rebuilds the grouped matrix, so writes cost O(rows
written) amortized.

Searches without a category or price filter use an HNSW graph over the grouped rows once there are
enough of them (graph_index.py; the tail is scanned exactly beside it): the one approximate path.

Concurrency. Readers take no lock: a search reads one immutable `_Snapshot`, published by a single
attribute assignment after a write is complete, so a search (and every query of a batch) sees a
write either whole or not at all. Writes (serialized by a lock) never change a row a published
snapshot can see: they append past its size, copy the small dead-row array, and grow or compact
into new arrays that only later snapshots use. A graph is built in a background thread for each new
layout (a compaction) and read, like the snapshot, from one attribute.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from whisperlite.services.catalog.filters import SearchFilter
from whisperlite.services.catalog.graph_index import GraphSettings, RowGraph
from whisperlite.services.catalog.items import ItemRecord, SearchHit

# A compaction runs when the tail plus the dead rows exceed this share of the rows (and the floor
# below): each row is then copied a bounded number of times per write, and a category filter masks
# a tail of at most this share.
COMPACT_FRACTION = 1 / 16
COMPACT_MIN_ROWS = 4096
MIN_CAPACITY = 1024
# Candidates beyond top_k that are rescored: BLAS rounds a cosine differently in a batch than alone
# (another kernel), by a few float32 ulps, which can swap rows at the top_k boundary.
RESCORED_MARGIN = 8

log = logging.getLogger("whisperlite.catalog")


@dataclass(frozen=True)
class _Snapshot:
    matrix: np.ndarray  # (capacity, dimension) float32; rows [0, size) hold items, some of them dead
    category: np.ndarray  # (capacity,) int32 category code of each row
    price: np.ndarray  # (capacity,) float64; meaningful where has_price
    has_price: np.ndarray  # (capacity,) bool
    records: list[ItemRecord]  # row -> record without its vector; shared with later snapshots, which only append
    size: int
    grouped_rows: int  # rows [0, grouped_rows) are grouped by category; [grouped_rows, size) is the tail
    spans: dict[int, tuple[int, int]]  # category code -> its [start, end) rows within the grouped rows
    dead: np.ndarray  # sorted rows replaced or deleted since the last compaction
    layout: int  # which compaction grouped the rows: a graph serves the snapshots of its own layout only

    @property
    def live(self) -> int:
        return self.size - len(self.dead)


def _empty(dimension: int, capacity: int) -> _Snapshot:
    return _Snapshot(
        matrix=np.empty((capacity, dimension), dtype=np.float32),
        category=np.empty(capacity, dtype=np.int32),
        price=np.empty(capacity, dtype=np.float64),
        has_price=np.empty(capacity, dtype=bool),
        records=[],
        size=0,
        grouped_rows=0,
        spans={},
        dead=np.empty(0, dtype=np.int64),
        layout=0,
    )


class VectorIndex:
    """Cosine top-k over L2-normalized vectors with the catalog's filters; thread-safe.

    Exact, except searches without a category or price filter once `graph` is given and the index has
    `graph.min_rows` grouped rows.
    """

    def __init__(
        self, dimension: int, *, compact_fraction: float = COMPACT_FRACTION, compact_min_rows: int = COMPACT_MIN_ROWS,
        graph: GraphSettings | None = None,
    ):
        if dimension < 1:
            raise ValueError(f"dimension: must be >= 1, got {dimension}")
        self.dimension = dimension
        self._compact_fraction = compact_fraction
        self._compact_min_rows = compact_min_rows
        self._write_lock = threading.Lock()
        self._snapshot = _empty(dimension, MIN_CAPACITY)
        self._layouts = 0
        self._graph_settings = graph
        self._graph: RowGraph | None = None
        # The newest layout waiting for its graph, and whether a builder thread runs (both under _graph_lock).
        self._graph_lock = threading.Lock()
        self._graph_wanted: _Snapshot | None = None
        self._graph_builder: threading.Thread | None = None
        # Touched by writers only, under the lock: searches read ids and codes from their snapshot.
        self._row_of: dict[str, int] = {}
        # Codes are never removed or renumbered, so a search may read this dict without the lock.
        self._category_codes: dict[str, int] = {}

    def __len__(self) -> int:
        return self._snapshot.live

    @property
    def graph_ready(self) -> bool:
        """Whether unfiltered searches walk a graph (false below the row floor, while one builds, and without one)."""
        graph = self._graph
        return graph is not None and graph.layout == self._snapshot.layout

    def wait_for_graph(self, timeout: float) -> bool:
        """Waits while a graph is being built (at most `timeout` s); returns `graph_ready`. For tests and benchmarks."""
        deadline = time.monotonic() + timeout
        while not self.graph_ready and self._graph_builder is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.graph_ready

    def strategy(self, search_filter: SearchFilter) -> str:
        """How a search with this filter runs now, for the search metrics' label."""
        return "graph" if self.graph_ready and _unfiltered(search_filter) else "memory"

    @property
    def nbytes(self) -> int:
        """Bytes of the numpy arrays (allocated capacity included); records and ids come on top."""
        snapshot = self._snapshot
        return sum(a.nbytes for a in (snapshot.matrix, snapshot.category, snapshot.price, snapshot.has_price, snapshot.dead))

    # ---- writes ----------------------------------------------------------------------------------

    def replace_all(self, pages: Iterable[Sequence[ItemRecord]]) -> int:
        """Rebuilds the index from pages of records with vectors (a scan of the store); returns the count."""
        with self._write_lock:
            self._row_of = {}
            snapshot = _empty(self.dimension, MIN_CAPACITY)
            for page in pages:
                snapshot = self._append(snapshot, page)
            self._snapshot = self._compact(snapshot)
            self._want_graph(self._snapshot)
            return self._snapshot.live

    def upsert(self, records: Sequence[ItemRecord]) -> None:
        """Adds or replaces records (each with an L2-normalized vector, ids unique within the call)."""
        if not records:
            return
        with self._write_lock:
            replaced = [self._row_of[r.item_id] for r in records if r.item_id in self._row_of]
            snapshot = self._append(self._snapshot, records)
            self._publish(dataclasses.replace(snapshot, dead=_with_rows(snapshot.dead, replaced)))

    def delete(self, item_ids: Iterable[str]) -> None:
        with self._write_lock:
            removed = [self._row_of.pop(item_id) for item_id in set(item_ids) if item_id in self._row_of]
            if removed:
                self._publish(dataclasses.replace(self._snapshot, dead=_with_rows(self._snapshot.dead, removed)))

    def _publish(self, snapshot: _Snapshot) -> None:
        pending = snapshot.size - snapshot.grouped_rows + len(snapshot.dead)
        compact = pending > max(self._compact_min_rows, self._compact_fraction * snapshot.live)
        if compact:
            snapshot = self._compact(snapshot)
        self._snapshot = snapshot
        if compact:  # after the publish: a builder finishing at once must find its layout current
            self._want_graph(snapshot)

    def _want_graph(self, snapshot: _Snapshot) -> None:
        """Asks for a graph of this (just published) layout; one builder thread works through the newest wanted layout."""
        self._graph = None  # an older layout's: never walked again, and it holds a copy of every vector
        settings = self._graph_settings
        if settings is None or snapshot.grouped_rows < settings.min_rows:
            return
        with self._graph_lock:
            self._graph_wanted = snapshot
            if self._graph_builder is None:
                self._graph_builder = threading.Thread(target=self._build_graphs, name="catalog-graph-build", daemon=True)
                self._graph_builder.start()

    def _build_graphs(self) -> None:
        while True:
            with self._graph_lock:
                snapshot, self._graph_wanted = self._graph_wanted, None
                if snapshot is None:
                    self._graph_builder = None
                    return
            started = time.perf_counter()
            try:
                # The grouped rows of a layout never change: later writes append a tail and mark rows dead.
                graph = RowGraph(snapshot.layout, snapshot.matrix[: snapshot.grouped_rows], self._graph_settings)
            except Exception:  # searches stay exact; the next compaction tries again
                log.exception("building the search graph failed; unfiltered searches stay exact")
                continue
            if graph.layout == self._snapshot.layout:  # else a newer layout is already wanted (or another build)
                self._graph = graph
                log.info("search graph ready", extra={"rows": graph.rows, "seconds": round(time.perf_counter() - started, 1)})

    def _append(self, snapshot: _Snapshot, records: Sequence[ItemRecord]) -> _Snapshot:
        """Writes the records past `snapshot.size` (rows no published snapshot reads) and returns the larger snapshot."""
        size, count = snapshot.size, len(records)
        if size + count > len(snapshot.matrix):
            snapshot = _grown(snapshot, max(2 * len(snapshot.matrix), size + count))
        end = size + count
        snapshot.matrix[size:end] = np.stack([r.vector for r in records])
        snapshot.category[size:end] = [self._category_codes.setdefault(r.category, len(self._category_codes)) for r in records]
        snapshot.has_price[size:end] = [r.price is not None for r in records]
        snapshot.price[size:end] = [r.price if r.price is not None else 0.0 for r in records]
        # Stored without the vector: the matrix row is its only copy.
        snapshot.records.extend(dataclasses.replace(r, vector=None) for r in records)
        for offset, record in enumerate(records):
            self._row_of[record.item_id] = size + offset
        return dataclasses.replace(snapshot, size=end)

    def _compact(self, snapshot: _Snapshot) -> _Snapshot:
        """A new snapshot of the live rows grouped by category, in new arrays (readers keep the old ones)."""
        live_rows = np.setdiff1d(np.arange(snapshot.size), snapshot.dead, assume_unique=True)
        order = live_rows[np.argsort(snapshot.category[live_rows], kind="stable")]
        count = len(order)
        compacted = _empty(self.dimension, max(MIN_CAPACITY, count + count // 4))
        np.take(snapshot.matrix, order, axis=0, out=compacted.matrix[:count])
        compacted.category[:count] = snapshot.category[order]
        compacted.price[:count] = snapshot.price[order]
        compacted.has_price[:count] = snapshot.has_price[order]
        compacted.records.extend(snapshot.records[row] for row in order)
        self._row_of = {record.item_id: row for row, record in enumerate(compacted.records)}
        codes = compacted.category[:count]
        bounds = [0, *(np.flatnonzero(codes[1:] != codes[:-1]) + 1).tolist(), count] if count else [0]
        spans = {int(codes[start]): (start, end) for start, end in zip(bounds[:-1], bounds[1:], strict=True)}
        self._layouts += 1
        return dataclasses.replace(compacted, size=count, grouped_rows=count, spans=spans, layout=self._layouts)

    # ---- reads -----------------------------------------------------------------------------------

    def get(self, item_ids: Sequence[str], include_vectors: bool) -> dict[str, ItemRecord]:
        """Records of the ids the index holds, keyed by id, as `MilvusStore.get` gives them."""
        # The id -> row map belongs to writers: read it with the snapshot it matches, under their lock
        # (held for in-memory updates only, never during a store write).
        with self._write_lock:
            snapshot = self._snapshot
            rows = {item_id: self._row_of[item_id] for item_id in item_ids if item_id in self._row_of}
        if not include_vectors:
            return {item_id: snapshot.records[row] for item_id, row in rows.items()}
        return {item_id: dataclasses.replace(snapshot.records[row], vector=snapshot.matrix[row].copy()) for item_id, row in rows.items()}

    # ---- search ----------------------------------------------------------------------------------

    def search_many(
        self, queries: np.ndarray, top_k: int, search_filter: SearchFilter, include_vectors: bool = False, detailed_hits: int = 0
    ) -> list[list[SearchHit]]:
        """The hits of each (n, d) row of L2-normalized queries, best first, as `MilvusStore.search_many` gives them.

        The first `detailed_hits` hits (0: all) carry their record, the vector too when `include_vectors`;
        the others only their id. Scores are cosine similarities.
        """
        snapshot, graph = self._snapshot, self._graph
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dimension)
        excluded = set(search_filter.exclude_item_ids)
        # Excluded items are at most len(excluded) of the best: that many more candidates leave top_k.
        count = top_k + len(excluded) + RESCORED_MARGIN
        if graph is not None and graph.layout == snapshot.layout and _unfiltered(search_filter):
            dead_grouped = snapshot.dead[: np.searchsorted(snapshot.dead, snapshot.grouped_rows)]
            walked = graph.search(queries, count, dead_grouped)
            scanned = self._best_rows(snapshot, queries, search_filter, count, first_row=snapshot.grouped_rows)
            candidate_rows = [np.concatenate(pair) for pair in zip(walked, scanned, strict=True)]
        else:
            candidate_rows = self._best_rows(snapshot, queries, search_filter, count)
        detailed = top_k if detailed_hits <= 0 else min(detailed_hits, top_k)
        results = []
        for query, candidates in zip(queries, candidate_rows, strict=True):
            # The same cosine for a row whether its query came alone or in a batch: float64, per row,
            # independent of the other rows; ties go to the lower row, so the order is reproducible too.
            cosines = (snapshot.matrix[candidates].astype(np.float64) * query.astype(np.float64)).sum(axis=1)
            hits: list[SearchHit] = []
            for position in np.lexsort((candidates, -cosines)):
                row = int(candidates[position])
                record = snapshot.records[row]
                if record.item_id in excluded:
                    continue
                if len(hits) >= detailed:
                    record = ItemRecord(item_id=record.item_id)
                elif include_vectors:
                    record = dataclasses.replace(record, vector=snapshot.matrix[row].copy())
                hits.append(SearchHit(record=record, score=float(np.float32(cosines[position]))))
                if len(hits) == top_k:
                    break
            results.append(hits)
        return results

    def _best_rows(
        self, snapshot: _Snapshot, queries: np.ndarray, search_filter: SearchFilter, count: int, first_row: int = 0
    ) -> list[np.ndarray]:
        """Per query, the (up to) `count` best live rows that pass the filter, from `first_row` on, exactly; in no order."""
        scores, rows = self._scores(snapshot, queries, search_filter, first_row)
        best = _best_columns(scores, min(count, scores.shape[1]))
        # -inf: a dead row or one the filter refused
        return [rows[columns[query_scores[columns] > -np.inf]] for query_scores, columns in zip(scores, best, strict=True)]

    def _scores(
        self, snapshot: _Snapshot, queries: np.ndarray, search_filter: SearchFilter, first_row: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, m) scores over the m candidate rows the filter leaves (-inf where a row is dead or refused), and those rows.

        Without a category filter, the rows from `first_row` on (a category filter always reads them all).
        """
        pieces: list[slice | np.ndarray] = []
        if search_filter.categories:
            codes = [self._category_codes[c] for c in search_filter.categories if c in self._category_codes]
            pieces.extend(slice(*snapshot.spans[code]) for code in codes if code in snapshot.spans)
            tail = np.arange(snapshot.grouped_rows, snapshot.size)
            pieces.append(tail[np.isin(snapshot.category[tail], codes)])
        else:
            pieces.append(slice(first_row, snapshot.size))
        blocks, rows = [], []
        for piece in pieces:
            piece_rows = np.arange(piece.start, piece.stop) if isinstance(piece, slice) else piece
            if not len(piece_rows):
                continue
            block = queries @ snapshot.matrix[piece].T
            _refuse(block, snapshot, piece, piece_rows, search_filter)
            blocks.append(block)
            rows.append(piece_rows)
        if not blocks:
            return np.empty((len(queries), 0), dtype=np.float32), np.empty(0, dtype=np.int64)
        if len(blocks) == 1:
            return blocks[0], rows[0]
        return np.concatenate(blocks, axis=1), np.concatenate(rows)


def _refuse(block: np.ndarray, snapshot: _Snapshot, piece: slice | np.ndarray, piece_rows: np.ndarray, search_filter: SearchFilter) -> None:
    """Scores -inf the piece's rows that are dead or outside the price bounds."""
    first, last = piece_rows[0], piece_rows[-1]
    dead = snapshot.dead[np.searchsorted(snapshot.dead, first) : np.searchsorted(snapshot.dead, last, side="right")]
    if len(dead):
        # A slice's rows are consecutive: a dead row's position is its offset, with no search over the piece.
        block[:, dead - first if isinstance(piece, slice) else np.isin(piece_rows, dead)] = -np.inf
    if search_filter.min_price is not None or search_filter.max_price is not None:
        # As in the store: an item without a price never passes a price bound.
        outside = ~snapshot.has_price[piece]
        if search_filter.min_price is not None:
            outside |= snapshot.price[piece] < search_filter.min_price
        if search_filter.max_price is not None:
            outside |= snapshot.price[piece] > search_filter.max_price
        block[:, outside] = -np.inf


def _unfiltered(search_filter: SearchFilter) -> bool:
    """Whether a search may walk the graph: excluded ids are skipped afterwards, categories and prices would not be."""
    return not search_filter.categories and search_filter.min_price is None and search_filter.max_price is None


def _best_columns(scores: np.ndarray, count: int) -> np.ndarray:
    """Per row of `scores`, the columns of its `count` highest values, in no order."""
    columns = scores.shape[1]
    if count >= columns:
        return np.broadcast_to(np.arange(columns), scores.shape)
    # argpartition of the scores themselves (not their negation, which would copy them): the best are last.
    return np.argpartition(scores, columns - count, axis=1)[:, columns - count :]


def _with_rows(dead: np.ndarray, rows: list[int]) -> np.ndarray:
    """A new sorted array of the dead rows plus `rows` (the old one stays as published snapshots see it)."""
    return np.union1d(dead, np.asarray(rows, dtype=np.int64)) if rows else dead


def _grown(snapshot: _Snapshot, capacity: int) -> _Snapshot:
    """The same rows in larger arrays; the records list is shared (rows past a snapshot's size are invisible to it)."""
    grown = _empty(snapshot.matrix.shape[1], capacity)
    size = snapshot.size
    for name in ("matrix", "category", "price", "has_price"):
        getattr(grown, name)[:size] = getattr(snapshot, name)[:size]
    return dataclasses.replace(snapshot, matrix=grown.matrix, category=grown.category, price=grown.price, has_price=grown.has_price)
