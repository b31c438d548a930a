"""The catalog's in-process exact index as a plain module (no gRPC, no Milvus): every answer is checked
against numpy brute force over a model of what was written."""

import threading

import numpy as np
import pytest

from whisperlite.services.catalog.filters import SearchFilter
from whisperlite.services.catalog.items import ItemRecord
from whisperlite.services.catalog.vector_index import VectorIndex

DIM = 24
CATEGORIES = ["A", "B", "C", ""]


def unit_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    rows = rng.normal(size=(count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def random_record(rng: np.random.Generator, item_id: str) -> ItemRecord:
    price = None if rng.random() < 0.25 else float(rng.integers(0, 100))
    return ItemRecord(
        item_id=item_id, title=f"title of {item_id}", category=str(rng.choice(CATEGORIES)), price=price,
        attributes={"id": item_id}, vector=unit_rows(rng, 1)[0],
    )


def brute_force(model: dict[str, ItemRecord], query: np.ndarray, top_k: int, search_filter: SearchFilter) -> list[tuple[str, float]]:
    """What an exact filtered search must return: the model's records that pass, by cosine, best first."""

    def passes(record: ItemRecord) -> bool:
        if search_filter.categories and record.category not in search_filter.categories:
            return False
        if search_filter.min_price is not None or search_filter.max_price is not None:
            if record.price is None:
                return False
            if search_filter.min_price is not None and record.price < search_filter.min_price:
                return False
            if search_filter.max_price is not None and record.price > search_filter.max_price:
                return False
        return record.item_id not in search_filter.exclude_item_ids

    kept = [record for record in model.values() if passes(record)]
    scores = [float(record.vector @ query) for record in kept]
    order = np.argsort(-np.asarray(scores), kind="stable")[:top_k]
    return [(kept[i].item_id, scores[i]) for i in order]


def random_filter(rng: np.random.Generator, model: dict[str, ItemRecord]) -> SearchFilter:
    categories = tuple(rng.choice(CATEGORIES + ["unknown"], size=int(rng.integers(0, 3)), replace=False)) if rng.random() < 0.6 else ()
    low = float(rng.integers(0, 50)) if rng.random() < 0.4 else None
    high = float(rng.integers(50, 100)) if rng.random() < 0.4 else None
    excluded = tuple(rng.choice(sorted(model), size=min(3, len(model)), replace=False)) if model and rng.random() < 0.4 else ()
    return SearchFilter(categories=categories, min_price=low, max_price=high, exclude_item_ids=excluded)


def assert_matches_brute_force(index: VectorIndex, model: dict[str, ItemRecord], rng: np.random.Generator, queries: int = 4) -> None:
    query_rows = unit_rows(rng, queries)
    for _ in range(3):
        search_filter, top_k = random_filter(rng, model), int(rng.integers(1, 15))
        found = index.search_many(query_rows, top_k, search_filter)
        for query, hits in zip(query_rows, found, strict=True):
            expected = brute_force(model, query, top_k, search_filter)
            assert [h.record.item_id for h in hits] == [item_id for item_id, _ in expected], search_filter
            np.testing.assert_allclose([h.score for h in hits], [score for _, score in expected], rtol=1e-5, atol=1e-6)


def test_random_writes_with_compactions_always_search_exactly_like_brute_force():
    rng = np.random.default_rng(3)
    # A tiny compaction floor: the 300 writes below go through many compactions and growths.
    index = VectorIndex(DIM, compact_min_rows=8)
    model: dict[str, ItemRecord] = {}
    for step in range(300):
        action = rng.random()
        if action < 0.6 or not model:
            batch = [random_record(rng, f"id-{int(i)}") for i in rng.choice(400, size=int(rng.integers(1, 20)), replace=False)]
            index.upsert(batch)
            model.update((record.item_id, record) for record in batch)
        else:
            gone = list(rng.choice(sorted(model), size=min(len(model), int(rng.integers(1, 10))), replace=False)) + ["never-stored"]
            index.delete(gone)
            for item_id in gone:
                model.pop(item_id, None)
        assert len(index) == len(model)
        if step % 10 == 0:
            assert_matches_brute_force(index, model, rng)
    assert_matches_brute_force(index, model, rng)


def test_replace_all_builds_from_pages_and_drops_what_was_there():
    rng = np.random.default_rng(5)
    index = VectorIndex(DIM)
    index.upsert([random_record(rng, "old")])
    records = [random_record(rng, f"r{i}") for i in range(2500)]  # past the initial capacity
    assert index.replace_all([records[:1000], records[1000:2000], records[2000:]]) == 2500
    model = {record.item_id: record for record in records}
    assert len(index) == 2500
    assert_matches_brute_force(index, model, rng)


def test_hits_carry_records_as_asked():
    rng = np.random.default_rng(9)
    index = VectorIndex(DIM)
    records = [random_record(rng, f"r{i}") for i in range(30)]
    index.upsert(records)
    query = records[0].vector
    (hits,) = index.search_many(query[np.newaxis], 10, SearchFilter(), include_vectors=True, detailed_hits=3)
    assert hits[0].record.item_id == "r0" and hits[0].score == pytest.approx(1.0, abs=1e-6)
    detailed, bare = hits[:3], hits[3:]
    for hit in detailed:
        original = next(r for r in records if r.item_id == hit.record.item_id)
        assert (hit.record.title, hit.record.category, hit.record.price, hit.record.attributes) == (
            original.title, original.category, original.price, original.attributes,
        )
        np.testing.assert_array_equal(hit.record.vector, original.vector)
    assert all(hit.record.title == "" and hit.record.vector is None for hit in bare)
    (without_vectors,) = index.search_many(query[np.newaxis], 10, SearchFilter())
    assert all(hit.record.vector is None and hit.record.title for hit in without_vectors)
    assert [h.record.item_id for h in without_vectors] == [h.record.item_id for h in hits]


def test_a_batch_answers_each_query_as_alone():
    rng = np.random.default_rng(11)
    index = VectorIndex(DIM)
    index.upsert([random_record(rng, f"r{i}") for i in range(200)])
    queries = unit_rows(rng, 7)
    search_filter = SearchFilter(categories=("A", "B"), max_price=70.0)
    batch = index.search_many(queries, 12, search_filter)
    for query, hits in zip(queries, batch, strict=True):
        (alone,) = index.search_many(query[np.newaxis], 12, search_filter)
        # One matrix product for the batch, a vector product alone: still the very same hits and scores.
        assert [(h.record.item_id, h.score) for h in hits] == [(h.record.item_id, h.score) for h in alone]


def test_fewer_candidates_than_top_k_and_an_empty_index():
    rng = np.random.default_rng(13)
    index = VectorIndex(DIM)
    query = unit_rows(rng, 1)
    assert index.search_many(query, 5, SearchFilter()) == [[]]
    index.upsert([ItemRecord(item_id="only", category="A", price=3.0, vector=query[0])])
    assert [h.record.item_id for h in index.search_many(query, 5, SearchFilter())[0]] == ["only"]
    assert index.search_many(query, 5, SearchFilter(categories=("B",))) == [[]]
    assert index.search_many(query, 5, SearchFilter(exclude_item_ids=("only",))) == [[]]
    index.delete(["only"])
    assert index.search_many(query, 5, SearchFilter()) == [[]] and len(index) == 0


def test_a_search_never_sees_half_of_a_write():
    """Each write replaces both items of a pair with a new version; a reader must see one version whole."""
    rng = np.random.default_rng(17)
    index = VectorIndex(DIM, compact_min_rows=16)  # compactions and growths happen while readers read
    index.upsert([random_record(rng, f"filler-{i}") for i in range(500)])
    query = unit_rows(rng, 1)
    stop, torn = threading.Event(), []

    def write_pair(version: int) -> None:
        near = query[0] + 0.01 * rng.normal(size=DIM).astype(np.float32)
        index.upsert([ItemRecord(item_id=name, title=str(version), category="pair", vector=near / np.linalg.norm(near)) for name in ("x", "y")])

    def write() -> None:
        for version in range(1, 1500):
            write_pair(version)
        stop.set()

    write_pair(0)

    def read() -> None:
        while not stop.is_set():
            for search_filter in (SearchFilter(categories=("pair",)), SearchFilter()):
                (hits,) = index.search_many(query, 2, search_filter)
                if sorted(h.record.item_id for h in hits) != ["x", "y"] or hits[0].record.title != hits[1].record.title:
                    torn.append([(h.record.item_id, h.record.title) for h in hits])

    readers = [threading.Thread(target=read) for _ in range(2)]
    writer = threading.Thread(target=write)
    for thread in [*readers, writer]:
        thread.start()
    for thread in [writer, *readers]:
        thread.join(120)
    assert not torn, torn[:5]
    assert len(index) == 502
