"""The HNSW graph of the catalog's in-process index (faiss, a real graph): unfiltered searches walk it once the
index is large enough, find what exact search finds, never return a dead, replaced or excluded item, see
writes made after the graph was built, and leave filtered searches exact. Also end to end on a catalog over
a real milvus-lite store."""

import re

import numpy as np
import pytest

from tests.test_catalog_vector_index import assert_matches_brute_force, brute_force, random_record, unit_rows
from whisperlite.services.catalog import server as catalog_server
from whisperlite.services.catalog.catalog import Catalog, CatalogLimits, SearchQuery
from whisperlite.services.catalog.filters import SearchFilter
from whisperlite.services.catalog.graph_index import GraphSettings
from whisperlite.services.catalog.items import ItemRecord
from whisperlite.services.catalog.store import CollectionSpec, MilvusStore
from whisperlite.services.catalog.vector_index import VectorIndex
from whisperlite.v1 import common_pb2

DIM = 24  # as the exact index's tests (their helpers build records of this size)
ROWS = 3000


def wait_for_graph(index: VectorIndex) -> None:
    assert index.wait_for_graph(timeout=60), "the graph was not built in time"


def recall_at(found: list[str], expected: list[str]) -> float:
    return len(set(found) & set(expected)) / len(expected)


@pytest.fixture
def indexed():
    rng = np.random.default_rng(5)
    records = [random_record(rng, f"r{i}") for i in range(ROWS)]
    # A compaction floor above every write below: the graph's layout stays the one built here.
    index = VectorIndex(DIM, graph=GraphSettings(min_rows=1000), compact_min_rows=10_000)
    index.replace_all([records[:1500], records[1500:]])
    wait_for_graph(index)
    return index, {record.item_id: record for record in records}, rng


def test_below_the_row_floor_every_search_is_exact():
    rng = np.random.default_rng(2)
    index = VectorIndex(DIM, graph=GraphSettings(min_rows=ROWS + 1))
    records = [random_record(rng, f"r{i}") for i in range(ROWS)]
    index.replace_all([records])
    assert not index.wait_for_graph(timeout=5) and index.strategy(SearchFilter()) == "memory"
    assert_matches_brute_force(index, {record.item_id: record for record in records}, rng)


def test_unfiltered_searches_walk_the_graph_and_find_what_exact_search_finds(indexed):
    index, model, rng = indexed
    assert index.strategy(SearchFilter()) == "graph"
    assert index.strategy(SearchFilter(exclude_item_ids=("r1",))) == "graph"
    queries = unit_rows(rng, 100)
    recalls = []
    for query, hits in zip(queries, index.search_many(queries, 10, SearchFilter()), strict=True):
        expected = brute_force(model, query, 10, SearchFilter())
        recalls.append(recall_at([h.record.item_id for h in hits], [item_id for item_id, _ in expected]))
        # Whatever the walk found is rescored exactly and ordered best first.
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, [float(model[h.record.item_id].vector @ query) for h in hits], rtol=1e-5, atol=1e-6)
    assert np.mean(recalls) >= 0.98, np.mean(recalls)


def test_filtered_searches_stay_exact_beside_the_graph(indexed):
    index, model, rng = indexed
    filters = (
        SearchFilter(categories=("A",)), SearchFilter(min_price=10.0), SearchFilter(categories=("B", "C"), max_price=60.0, exclude_item_ids=("r7",)),
    )
    queries = unit_rows(rng, 10)
    for search_filter in filters:
        assert index.strategy(search_filter) == "memory"
        for query, hits in zip(queries, index.search_many(queries, 10, search_filter), strict=True):
            assert [h.record.item_id for h in hits] == [item_id for item_id, _ in brute_force(model, query, 10, search_filter)]


def test_dead_replaced_and_excluded_rows_never_come_back_and_new_rows_are_found(indexed):
    index, _, rng = indexed
    queries = unit_rows(rng, 20)
    first = index.search_many(queries, 5, SearchFilter())
    deleted = {hits[0].record.item_id for hits in first}
    index.delete(deleted)
    replaced = {hits[1].record.item_id for hits in first} - deleted
    # The replacements point away from every query: the rows they leave behind are dead inside the graph.
    index.upsert([ItemRecord(item_id=item_id, category="A", vector=-queries[0]) for item_id in replaced])
    # New rows (the tail, which the graph does not hold) that equal the queries must come first.
    index.upsert([ItemRecord(item_id=f"new{i}", category="B", vector=query) for i, query in enumerate(queries)])
    assert index.graph_ready  # no compaction happened: the same layout still walks its graph
    excluded = tuple(sorted(replaced))[:3]
    for i, (query, hits) in enumerate(zip(queries, index.search_many(queries, 10, SearchFilter(exclude_item_ids=excluded)), strict=True)):
        found = [h.record.item_id for h in hits]
        assert found[0] == f"new{i}" and len(found) == 10
        assert not (set(found) & deleted) and not (set(found) & set(excluded))
        # A replaced item may only come back as its new row (its old, dead row scored higher for these queries).
        for hit in hits:
            if hit.record.item_id in replaced:
                assert hit.score == pytest.approx(float(-queries[0] @ query), abs=1e-5)


def test_a_batch_answers_each_query_as_alone_on_the_graph(indexed):
    index, _, rng = indexed
    index.upsert([random_record(rng, f"tail{i}") for i in range(50)])
    queries = unit_rows(rng, 9)
    batch = index.search_many(queries, 12, SearchFilter(exclude_item_ids=("r3",)), detailed_hits=4)
    for query, hits in zip(queries, batch, strict=True):
        (alone,) = index.search_many(query[np.newaxis], 12, SearchFilter(exclude_item_ids=("r3",)), detailed_hits=4)
        assert [(h.record.item_id, h.score, h.record.title) for h in hits] == [(h.record.item_id, h.score, h.record.title) for h in alone]


def test_a_compaction_gets_a_graph_of_its_own_layout():
    rng = np.random.default_rng(8)
    index = VectorIndex(DIM, graph=GraphSettings(min_rows=1000), compact_min_rows=200, compact_fraction=0.05)
    records = [random_record(rng, f"r{i}") for i in range(1500)]
    index.replace_all([records])
    wait_for_graph(index)
    model = {record.item_id: record for record in records}
    # Enough replacements to compact: the old graph's rows are not the new layout's, so it must not serve it.
    rewritten = [random_record(rng, f"r{i}") for i in range(400)]
    index.upsert(rewritten)
    model.update((record.item_id, record) for record in rewritten)
    wait_for_graph(index)
    assert index.strategy(SearchFilter()) == "graph"
    queries = unit_rows(rng, 50)
    recalls = [
        recall_at([h.record.item_id for h in hits], [item_id for item_id, _ in brute_force(model, query, 10, SearchFilter())])
        for query, hits in zip(queries, index.search_many(queries, 10, SearchFilter()), strict=True)
    ]
    assert np.mean(recalls) >= 0.98, np.mean(recalls)


def graph_catalog(path) -> Catalog:
    return Catalog(
        MilvusStore(str(path / "catalog.db"), "items"), None, CatalogLimits(max_top_k=100, max_batch=ROWS),
        CollectionSpec(dimension=DIM, encoder_model="m"), search_index="memory", graph=GraphSettings(min_rows=1000),
    )


async def test_a_catalog_over_milvus_lite_walks_the_graph_once_it_is_built(tmp_path):
    rng = np.random.default_rng(4)
    vectors = unit_rows(rng, ROWS)
    catalog = graph_catalog(tmp_path)
    await catalog.open()
    await catalog.upsert([common_pb2.Item(item_id=f"i{j}", category=f"c{j % 4}", vector=list(vectors[j])) for j in range(ROWS)])
    # 3,000 new rows are a tail below the compaction floor: exact search until a compaction groups them.
    assert catalog._index.strategy(SearchFilter()) == "memory"
    await catalog.close()
    catalog = graph_catalog(tmp_path)  # a restart scans the store into a grouped index, which gets its graph
    await catalog.open()
    try:
        await catalog.index_built()
        wait_for_graph(catalog._index)
        queries = unit_rows(rng, 40)
        found = await catalog.search_batch([SearchQuery(query, 10, SearchFilter()) for query in queries])
        truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
        recalls = [recall_at([h.record.item_id for h in hits], [f"i{j}" for j in row]) for hits, row in zip(found, truth, strict=True)]
        assert np.mean(recalls) >= 0.98
        # A category filter stays exact: the same ids as brute force over that category.
        hits = await catalog.search(queries[0], 10, SearchFilter(categories=("c1",)))
        in_category = np.flatnonzero(np.arange(ROWS) % 4 == 1)
        expected = in_category[np.argsort(-(vectors[in_category] @ queries[0]))[:10]]
        assert [h.record.item_id for h in hits] == [f"i{j}" for j in expected]
    finally:
        await catalog.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--ann-min-rows", "-1"], "ann-min-rows: must be 0 (always exact) or positive, got -1"), (["--ann-ef", "0"], "ann-ef: must be at least 1, got 0")],
)
def test_the_catalog_refuses_a_bad_graph_flag_by_name(tmp_path, flags, message):
    args = catalog_server.build_parser().parse_args(["--data-dir", str(tmp_path), *flags])
    with pytest.raises(SystemExit, match=re.escape(message)):
        catalog_server.build_catalog(args)


def test_the_graph_flags_reach_the_index(tmp_path, monkeypatch):
    monkeypatch.setenv("CATALOG_ANN_EF", "300")
    args = catalog_server.build_parser().parse_args(["--data-dir", str(tmp_path), "--ann-min-rows", "70000"])
    args.blas_threads = 2
    assert catalog_server.build_catalog(args)._graph == GraphSettings(min_rows=70_000, ef_search=300, threads=2)
    args = catalog_server.build_parser().parse_args(["--data-dir", str(tmp_path), "--ann-min-rows", "0"])
    assert catalog_server.build_catalog(args)._graph is None  # every in-process search exact
